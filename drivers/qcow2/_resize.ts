/**
 * Resizing a qcow2 image: growing the L1 table (a larger table is written
 * and flushed, the header switched to it, the old table freed), growing the
 * virtual size with optional preallocation (`_prealloc.ts`), shrinking
 * (`_shrink.ts`); the new virtual size is written to the header last.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { RequestInfo, TruncateOptions } from "../../core/types.ts";
import { AUTOCLEAR_DATA_FILE_RAW, l1EntriesFor, MAX_L1_BYTES } from "./header.ts";
import { preallocateFull, preallocateMetadata } from "./_prealloc.ts";
import { shrink } from "./_shrink.ts";
import { writeLocked, zeroOrDiscard } from "./_write.ts";
import { allocClusters } from "./_refcount.ts";
import type { Qcow2State } from "./_state.ts";
import { writeback } from "./_writeback.ts";
import { writeHeaderFields } from "./_header_write.ts";

/**
 * Grows the active L1 table to at least `minEntries` entries (metadata lock
 * held): exactly that many for a resize, else by half again as often as
 * needed (QEMU's qcow2_grow_l1_table). The new table is written and flushed,
 * the header switched to it in one write, then the old table is freed.
 */
export async function growL1(st: Qcow2State, minEntries: number, exact: boolean, req: RequestInfo | undefined): Promise<void> {
  if (minEntries <= st.l1Size) return;
  let entries = minEntries;
  if (!exact) {
    entries = Math.max(1, st.l1Size);
    while (entries < minEntries) entries = Math.ceil((entries * 3) / 2);
  }
  if (entries > MAX_L1_BYTES / 8) {
    throw new BlockError("EFBIG", `Cannot grow the L1 table to ${entries} entries: the limit is ${MAX_L1_BYTES / 8}`, {
      node: st.node.name,
    });
  }
  // Everything the old table points at is on disk before the copy is made.
  await writeback(st, req);
  let p = st.event("l1_grow_alloc_table", req);
  if (p) await p;
  const clusters = Math.ceil((entries * 8) / st.cs);
  const newOffset = await allocClusters(st, clusters, req);
  await st.writeRefblocks(req);
  const table = new Uint8Array(clusters * st.cs);
  table.set(st.l1);
  p = st.event("l1_grow_write_table", req);
  if (p) await p;
  await st.file.pwrite(newOffset, table.subarray(0, entries * 8), { req });
  await st.file.flush({ req });
  p = st.event("l1_grow_activate_table", req);
  if (p) await p;
  // l1_size and l1_table_offset change in one write.
  await writeHeaderFields(st.file, { ...st.header, l1Size: entries, l1TableOffset: newOffset }, ["l1Size", "l1TableOffset"], req);
  const oldOffset = st.header.l1TableOffset;
  const oldClusters = Math.ceil((st.l1Size * 8) / st.cs);
  st.l1 = table.subarray(0, entries * 8);
  st.l1View = new DataView(table.buffer, 0, entries * 8);
  st.header.l1Size = entries;
  st.header.l1TableOffset = newOffset;
  if (oldOffset !== 0) { for (let i = 0; i < oldClusters; i++) st.pendingFree.push(oldOffset + i * st.cs); }
  await writeback(st, req);
}

/** A preallocation mode for a resize. */
export type Prealloc = NonNullable<TruncateOptions["prealloc"]>;

/**
 * Changes the virtual size (QEMU's qcow2_co_truncate; metadata lock held):
 * grows the L1 table to exactly what the size needs, preallocates the new
 * area when asked, makes it read as zeros when a backing file would show
 * through it, or shrinks (`_shrink.ts`); the new size is written last.
 */
export async function resize(st: Qcow2State, size: number, opts: { req?: RequestInfo; prealloc?: Prealloc } = {}): Promise<void> {
  const req = opts.req;
  let prealloc = opts.prealloc ?? "off";
  const old = st.header.size;
  if (size % 512 !== 0) {
    throw new BlockError("EINVAL", `The new size must be a multiple of 512 (size ${size})`, { node: st.node.name });
  }
  if (st.header.nbSnapshots && st.header.version < 3) {
    throw new BlockError("ENOTSUP", "Can't resize a v2 image which has snapshots", { node: st.node.name });
  }
  if (size < old) {
    if (prealloc !== "off") {
      throw new BlockError("EINVAL", `Preallocation can't be used for shrinking an image (preallocation ${prealloc})`, {
        node: st.node.name,
      });
    }
    await shrink(st, size, req);
    return;
  }
  if (size === old) return;
  await growL1(st, l1EntriesFor(st.header, size), true, req);
  // A raw data file must map every cluster (qemu-img keeps it preallocated).
  if (prealloc === "off" && st.externalData && st.header.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) prealloc = "metadata";
  if (prealloc === "off") {
    if (st.externalData) await st.data.truncate(size, { req });
  } else if (prealloc === "metadata") {
    await preallocateMetadata(st, old, size, req);
    if (st.externalData) await st.data.truncate(size, { req });
  } else {
    await preallocateFull(st, old, size, prealloc, req);
    if (st.externalData) await st.data.truncate(size, { prealloc, req });
  }
  // A backing file longer than the old size would show through the new area: it reads as zeros instead.
  if (st.backing && st.backing.length > old) await zeroNewArea(st, old, size, req);
  await writeback(st, req);
  await st.flushFiles(req);
  await writeHeaderFields(st.file, { ...st.header, size }, ["size"], req);
  st.header.size = size;
}

/**
 * QEMU's BDRV_REQ_ZERO_WRITE on truncate: zero clusters from the first
 * cluster boundary, zero bytes before it (QEMU uses the zero bits of the
 * subclusters there with extended L2 entries; the data is the same).
 */
async function zeroNewArea(st: Qcow2State, old: number, size: number, req: RequestInfo | undefined): Promise<void> {
  if (st.header.version < 3) {
    throw new BlockError(
      "ENOTSUP",
      "Failed to zero out new clusters: a compat=0.10 image cannot make the grown area read as zeros over its larger backing file",
      { node: st.node.name },
    );
  }
  const start = Math.ceil(old / st.cs) * st.cs;
  const end = Math.ceil(size / st.cs) * st.cs;
  if (size > start) await zeroOrDiscard(st, start, end - start, { discard: false, unmap: true }, req);
  if (start > old) await writeLocked(st, old, new Uint8Array(Math.min(start, size) - old), req);
}
