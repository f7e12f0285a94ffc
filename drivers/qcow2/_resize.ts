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
import { AUTOCLEAR_DATA_FILE_RAW, l1EntriesFor } from "./header.ts";
import { preallocateFull, preallocateMetadata } from "./_prealloc.ts";
import { shrink } from "./_shrink.ts";
import { growL1 } from "./_l1_grow.ts";
import type { Qcow2State } from "./_state.ts";
import { writeback } from "./_writeback.ts";
import { writeHeaderFields } from "./_header_write.ts";

/** A preallocation mode for a resize. */
export type Prealloc = NonNullable<TruncateOptions["prealloc"]>;

/**
 * Changes the virtual size (QEMU's qcow2_co_truncate; metadata lock held):
 * grows the L1 table to exactly what the size needs and preallocates the
 * new area when asked (the core zeroes it afterwards where a longer backing
 * file would show through, except that falloc/full does it with `zeroFill`:
 * the new clusters are data, all their subclusters allocated), or shrinks
 * (`_shrink.ts`); the new size is written last.
 */
export async function resize(
  st: Qcow2State,
  size: number,
  opts: { req?: RequestInfo; prealloc?: Prealloc; zeroFill?: boolean } = {},
): Promise<void> {
  const req = opts.req;
  let prealloc = opts.prealloc ?? "off";
  // QEMU's qcow2_co_truncate: the virtual size is whole sectors.
  if (size % 512 !== 0) {
    throw new BlockError("EINVAL", `The new size must be a multiple of 512 (requested ${size} bytes for '${st.node.name}')`, {
      node: st.node.name,
    });
  }
  const old = st.header.size;
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
    await preallocateFull(st, old, size, prealloc, req, opts.zeroFill ?? false);
    if (st.externalData) await st.data.truncate(size, { prealloc, req });
  }
  await writeback(st, req);
  await st.flushFiles(req);
  await writeHeaderFields(st.file, { ...st.header, size }, ["size"], req);
  st.header.size = size;
}
