/**
 * Shrinking a qcow2 image (QEMU's qcow2_co_truncate to a smaller size):
 * the clusters past the new end are discarded (the L2 table holding the new
 * end is copied or allocated first, as QEMU's get_cluster_table does), the
 * L1 entries past the end are zeroed on disk before the tables they pointed
 * at (and what those point at) lose their references, refcount blocks left
 * empty are unhooked and freed, the file is cut after its last used cluster
 * and finally the header gets the new size. `l1_size` in the header stays
 * as it was, as in QEMU. Snapshots keep their own tables.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import { readRefcount, setEntry } from "./_entries.ts";
import { l1EntriesFor } from "./header.ts";
import { writeHeaderFields } from "./_header_write.ts";
import { getRefcount, updateRefcount } from "./_refcount.ts";
import { discardReleased, type Released, updateSnapshotRefcount } from "./_snapshot_refcount.ts";
import type { Qcow2State } from "./_state.ts";
import { getL2ForWrite, releaseEntry } from "./_write.ts";
import { writeback } from "./_writeback.ts";
import { OL_ACTIVE_L1, OL_REFCOUNT_TABLE, preWriteOverlapCheck } from "./_overlap.ts";

async function settle(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  await writeback(st, req);
  await st.flushFiles(req);
}

/** Full discard (QEMU's full_discard) of the clusters `[from, to)` of the L2 table at L1 index `l1i`. */
async function cropTable(st: Qcow2State, l1i: number, from: number, to: number, req: RequestInfo | undefined): Promise<void> {
  const e = await getL2ForWrite(st, l1i, req);
  try {
    const base = l1i * st.l2Span;
    for (let g = from; g < to; g += st.cs) {
      const at = ((g - base) / st.cs) * st.entryBytes;
      const v = e.view;
      const unchanged = v.getUint32(at) === 0 && v.getUint32(at + 4) === 0 &&
        (!st.extL2 || (v.getUint32(at + 8) === 0 && v.getUint32(at + 12) === 0));
      if (unchanged) continue;
      releaseEntry(st, v, at);
      setEntry(v, at, 0, 0, 0);
      if (st.extL2) {
        v.setUint32(at + 8, 0);
        v.setUint32(at + 12, 0);
      }
      st.l2Cache.markDirty(e);
    }
  } finally {
    st.l2Cache.release(e);
  }
}

/** QEMU's qcow2_shrink_l1_table: entries from `keep` on are zeroed on disk, then their tables lose the reference. */
async function shrinkL1(st: Qcow2State, keep: number, released: Released, req: RequestInfo | undefined): Promise<void> {
  if (keep >= st.l1Size) return;
  let p = st.event("l1_shrink_write_table", req);
  if (p) await p;
  await preWriteOverlapCheck(st, OL_ACTIVE_L1, st.header.l1TableOffset + keep * 8, (st.l1Size - keep) * 8, false);
  await st.file.pwrite(st.header.l1TableOffset + keep * 8, new Uint8Array((st.l1Size - keep) * 8), { req });
  await st.file.flush({ req });
  p = st.event("l1_shrink_free_l2_clusters", req);
  if (p) await p;
  const dropped = st.l1.slice(keep * 8);
  st.l1.fill(0, keep * 8);
  for (let i = keep; i < st.l1Size; i++) st.l1Dirty.delete(i);
  st.metadataMoved();
  // Every table dropped, and every cluster reached through it, loses the active layer's reference.
  await updateSnapshotRefcount(st, dropped, -1, released, req, false);
}

/** QEMU's qcow2_shrink_reftable: refcount blocks that count nothing but themselves are unhooked and freed. */
async function shrinkReftable(st: Qcow2State, released: Released, req: RequestInfo | undefined): Promise<void> {
  const cs = st.cs;
  const table = st.reftable.slice();
  const unused: number[] = [];
  for (let i = 0; i < table.length; i++) {
    const off = table[i];
    if (!off) continue;
    const e = await st.loadTable(st.rbCache, off, { kind: "Refblock", where: `reftable index: 0x${i.toString(16)}` }, "refblock_load", req);
    try {
      const self = Math.floor(off / cs / st.perBlock) === i ? off / cs - i * st.perBlock : -1;
      let empty = true;
      for (let k = 0; k < st.perBlock && empty; k++) if (k !== self && readRefcount(e.view, st.refBits, k) !== 0) empty = false;
      if (empty) unused.push(i);
    } finally {
      st.rbCache.release(e);
    }
  }
  if (!unused.length) return;
  for (const i of unused) table[i] = 0;
  const bytes = new Uint8Array(st.header.refcountTableClusters * cs);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < table.length; i++) if (table[i]) view.setBigUint64(i * 8, BigInt(table[i]));
  await preWriteOverlapCheck(st, OL_REFCOUNT_TABLE, st.header.refcountTableOffset, bytes.length, false);
  await st.file.pwrite(st.header.refcountTableOffset, bytes, { req });
  await st.file.flush({ req });
  for (const i of unused) {
    const off = st.reftable[i];
    const selfDescribing = Math.floor(off / cs / st.perBlock) === i;
    st.reftable[i] = 0;
    st.reftableDirty.delete(i);
    st.rbCache.drop(off);
    st.metadataMoved();
    // A block elsewhere counts this one; a self-describing block takes its count with it.
    if (!selfDescribing) await updateRefcount(st, off / cs, -1, req);
    released.push(off);
  }
}

/** Shrinks the virtual size to `size` (metadata lock held). */
export async function shrink(st: Qcow2State, size: number, req: RequestInfo | undefined): Promise<void> {
  const cs = st.cs;
  const old = st.header.size;
  const start = Math.ceil(size / cs) * cs;
  const keep = l1EntriesFor(st.header, size);
  await settle(st, req);
  // The L2 table holding the new end keeps only what lies before it.
  const b = Math.floor(start / st.l2Span);
  if (start < old && b < keep && b < st.l1Size) {
    await cropTable(st, b, start, Math.min(old, (b + 1) * st.l2Span, st.l1Size * st.l2Span), req);
  }
  await settle(st, req);
  const released: Released = [];
  await shrinkL1(st, keep, released, req);
  await settle(st, req);
  await shrinkReftable(st, released, req);
  await settle(st, req);
  await discardReleased(st, released, req);
  // Cut the file after the last cluster in use.
  let last = Math.ceil(st.file.length / cs) - 1;
  while (last >= 0 && (await getRefcount(st, last, req)) === 0) last--;
  if (last < 0) throw new BlockError("EIO", "Corrupt qcow2 image: there are no references in the refcount table", { node: st.node.name });
  if ((last + 1) * cs < st.file.length) {
    try {
      await st.file.truncate((last + 1) * cs, { req });
    } catch {
      // QEMU only warns: the image is fine with a longer file.
    }
  }
  if (st.externalData) await st.data.truncate(size, { req });
  await writeHeaderFields(st.file, { ...st.header, size }, ["size"], req);
  st.header.size = size;
}
