/**
 * Refcounts: reading and writing entries of any width (1 to 64 bits),
 * cluster allocation, refcount block allocation (a new block describes
 * itself when it falls inside the range it covers) and refcount table growth.
 *
 * Refcount blocks live in {@linkcode Qcow2State.rbCache}; updates only mark
 * them dirty, and the write-back in `writeback.ts` writes them before any
 * L2 entry that depends on them. New refcount blocks and a grown refcount
 * table are written (and flushed) before they are hooked in.
 *
 * @module
 */

import { BlockError, CorruptImageError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import type { CacheEntry } from "./_cache.ts";
import { MAX_REFTABLE_BYTES } from "./header.ts";
import { maxRefcount, readRefcount, writeRefcount } from "./_entries.ts";
import type { Qcow2State } from "./_state.ts";
import { writeHeaderFields } from "./_header_write.ts";
import { checkTableAllocation, OL_REFCOUNT_BLOCK, preWriteOverlapCheck } from "./_overlap.ts";

/** Loads the refcount block at `offset`, pinned: release it. */
function loadBlock(st: Qcow2State, offset: number, req: RequestInfo | undefined): Promise<CacheEntry> {
  return st.loadTable(st.rbCache, offset, `refcount block offset 0x${offset.toString(16)}`, "refblock_load", req);
}

/** Refcount of cluster `c` when its block is cached (or absent); -1 when a load is needed. */
export function peekRefcount(st: Qcow2State, c: number): number {
  const rt = Math.floor(c / st.perBlock);
  if (rt >= st.reftable.length) return 0;
  const off = st.reftable[rt];
  if (off === 0) return 0;
  const e = st.rbCache.get(off);
  if (!e) return -1;
  return readRefcount(e.view, st.refBits, c - rt * st.perBlock);
}

/** Refcount of cluster index `c`. */
export async function getRefcount(st: Qcow2State, c: number, req: RequestInfo | undefined): Promise<number> {
  const v = peekRefcount(st, c);
  if (v >= 0) return v;
  const rt = Math.floor(c / st.perBlock);
  const e = await loadBlock(st, st.reftable[rt], req);
  try {
    return readRefcount(e.view, st.refBits, c - rt * st.perBlock);
  } finally {
    st.rbCache.release(e);
  }
}

/** Adds `delta` to the refcount of cluster index `c` (allocating its refcount block if needed). */
export async function updateRefcount(st: Qcow2State, c: number, delta: number, req: RequestInfo | undefined): Promise<number> {
  const rt = Math.floor(c / st.perBlock);
  if (rt >= st.reftable.length || st.reftable[rt] === 0) {
    if (delta < 0) {
      throw new CorruptImageError(`Corrupt qcow2 image: cannot decrease the refcount of cluster ${c}: it has no refcount block`, {
        node: st.node.name,
      });
    }
    await ensureRefblock(st, rt, req);
  }
  const e = await loadBlock(st, st.reftable[rt], req);
  try {
    const i = c - rt * st.perBlock;
    const old = readRefcount(e.view, st.refBits, i);
    const v = old + delta;
    if (v < 0) {
      throw new CorruptImageError(`Corrupt qcow2 image: refcount of cluster ${c} would drop below zero`, { node: st.node.name });
    }
    if (v > maxRefcount(st.refBits)) {
      throw new BlockError("ERANGE", `Refcount of cluster ${c} would exceed ${maxRefcount(st.refBits)} (refcount_bits ${st.refBits})`, {
        node: st.node.name,
      });
    }
    writeRefcount(e.view, st.refBits, i, v);
    st.rbCache.markDirty(e);
    if (v === 0 && c < st.freeHint) st.freeHint = c;
    return v;
  } finally {
    st.rbCache.release(e);
  }
}

/** Finds `n` contiguous free clusters (refcount 0, not reserved) and returns the first index. */
export async function findFree(st: Qcow2State, n: number, req: RequestInfo | undefined): Promise<number> {
  let start = st.freeHint;
  let c = start;
  // The first cluster that is free or only reserved: nothing below it is
  // free, so later searches start there (without this, every allocation
  // rescanned the clusters the previous ones had taken).
  let candidate = -1;
  while (c - start < n) {
    const reserved = st.reserved.has(c);
    let rc = reserved ? 1 : peekRefcount(st, c);
    if (rc < 0) rc = await getRefcount(st, c, req);
    if (candidate < 0 && (reserved || rc === 0)) candidate = c;
    c++;
    if (rc !== 0) start = c;
  }
  st.freeHint = candidate < 0 ? start : candidate;
  return start;
}

/**
 * Allocates `n` contiguous clusters in the image file with refcount 1 and
 * returns the host offset of the first (QEMU's qcow2_alloc_clusters).
 */
export async function allocClusters(st: Qcow2State, n: number, req: RequestInfo | undefined): Promise<number> {
  const p = st.event("cluster_alloc", req);
  if (p) await p;
  const start = await findFree(st, n, req);
  for (let c = start; c < start + n; c++) st.reserved.add(c);
  try {
    for (let c = start; c < start + n; c++) await updateRefcount(st, c, 1, req);
  } finally {
    for (let c = start; c < start + n; c++) st.reserved.delete(c);
  }
  if (st.freeHint === start) st.freeHint = start + n;
  for (let c = start; c < start + n; c++) dropQueuedFree(st, c * st.cs);
  return start * st.cs;
}

/** Index of the queued frees (pendingFree only grows between write-backs): offset -> count, built incrementally. */
const queued = new WeakMap<Qcow2State, { list: number[]; upTo: number; count: Map<number, number> }>();

/**
 * A cluster just allocated (its refcount was 0) that is also queued to be
 * freed had a reference its refcount never counted (a damaged image): the
 * queued free would take the new owner's count and let the cluster be
 * discarded under it. The new allocation is its only counted user, so the
 * queued free goes (`releaseEntry` does the same for the other order).
 */
function dropQueuedFree(st: Qcow2State, offset: number): void {
  const list = st.pendingFree;
  if (!list.length) return;
  let q = queued.get(st);
  if (!q || q.list !== list) queued.set(st, q = { list, upTo: 0, count: new Map() });
  for (; q.upTo < list.length; q.upTo++) q.count.set(list[q.upTo], (q.count.get(list[q.upTo]) ?? 0) + 1);
  const n = q.count.get(offset);
  if (!n) return;
  q.count.set(offset, n - 1);
  list.splice(list.indexOf(offset), 1);
  q.upTo--;
}

/** Allocates a refcount block for refcount-table index `rt` and hooks it in. */
async function ensureRefblock(st: Qcow2State, rt: number, req: RequestInfo | undefined): Promise<void> {
  if (rt >= st.reftable.length) await growReftable(st, rt + 1, req);
  if (st.reftable[rt] !== 0) return;
  let p = st.event("refblock_alloc", req);
  if (p) await p;
  const b = await findFree(st, 1, req);
  await checkTableAllocation(st, "refcount block", b * st.cs);
  st.reserved.add(b);
  const buf = new Uint8Array(st.cs);
  try {
    if (Math.floor(b / st.perBlock) === rt) {
      // The block covers its own cluster: it describes itself.
      writeRefcount(new DataView(buf.buffer), st.refBits, b - rt * st.perBlock, 1);
    } else {
      await updateRefcount(st, b, 1, req);
    }
  } finally {
    st.reserved.delete(b);
  }
  const off = b * st.cs;
  p = st.event("refblock_alloc_write", req);
  if (p) await p;
  if (st.growingReftable) {
    // Written with the new table, before the switch.
    st.rbCache.insert(off, buf, { dirty: true, isNew: true });
  } else {
    // A new table is durable before it is hooked in.
    await preWriteOverlapCheck(st, OL_REFCOUNT_BLOCK, off, st.cs, false);
    await st.file.pwrite(off, buf, { req });
    await st.file.flush({ req });
    st.rbCache.insert(off, buf);
  }
  p = st.event("refblock_alloc_hookup", req);
  if (p) await p;
  st.reftable[rt] = off;
  st.reftableDirty.add(rt);
  st.metadataMoved();
  if (!st.growingReftable && st.mode === "metadata-sync") {
    await st.writeRefblocks(req);
    await st.file.flush({ req });
  }
}

/**
 * Replaces the refcount table with a larger one (at least `entries`
 * entries): the new table and any refcount blocks it needs are written and
 * flushed, the header is switched to it, then the old table is freed.
 */
async function growReftable(st: Qcow2State, entries: number, req: RequestInfo | undefined): Promise<void> {
  if (st.growingReftable) {
    throw new BlockError("EFBIG", `Cannot grow the refcount table to ${entries} entries: growth already in progress`, {
      node: st.node.name,
    });
  }
  let p = st.event("reftable_grow", req);
  if (p) await p;
  const oldOffset = st.header.refcountTableOffset;
  const oldClusters = st.header.refcountTableClusters;
  const old = st.reftable;
  const perTable = st.cs / 8;
  // Room for the blocks covering the new table itself.
  let clusters = Math.ceil(Math.max(entries + 2, Math.ceil(old.length * 1.5)) / perTable);
  if (clusters * st.cs > MAX_REFTABLE_BYTES) {
    throw new BlockError("EFBIG", `Cannot grow the refcount table to ${clusters} clusters: the limit is ${MAX_REFTABLE_BYTES} bytes`, {
      node: st.node.name,
    });
  }
  const start = await findFree(st, clusters, req);
  const needed = Math.floor((start + clusters) / st.perBlock) + 2;
  if (needed > clusters * perTable) clusters = Math.ceil(needed / perTable);
  const table = new Float64Array(clusters * perTable);
  table.set(old);
  // Flush what the old table describes first, so the new table's content is current.
  await st.writeRefblocks(req);
  st.growingReftable = true;
  st.reftable = table;
  st.metadataMoved();
  try {
    for (let c = start; c < start + clusters; c++) st.reserved.add(c);
    for (let c = start; c < start + clusters; c++) await updateRefcount(st, c, 1, req);
    p = st.event("refblock_alloc_write_blocks", req);
    if (p) await p;
    await st.writeRefblocks(req);
  } catch (e) {
    st.reftable = old;
    st.growingReftable = false;
    st.metadataMoved();
    throw e;
  } finally {
    for (let c = start; c < start + clusters; c++) st.reserved.delete(c);
  }
  p = st.event("refblock_alloc_write_table", req);
  if (p) await p;
  const bytes = new Uint8Array(clusters * st.cs);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < table.length; i++) if (table[i]) view.setBigUint64(i * 8, BigInt(table[i]));
  const newOffset = start * st.cs;
  await preWriteOverlapCheck(st, 0, newOffset, bytes.length, false);
  await st.file.pwrite(newOffset, bytes, { req });
  await st.file.flush({ req });
  p = st.event("refblock_alloc_switch_table", req);
  if (p) await p;
  // refcount_table_offset and refcount_table_clusters change in one write.
  const next = { ...st.header, refcountTableOffset: newOffset, refcountTableClusters: clusters };
  await writeHeaderFields(st.file, next, ["refcountTableOffset", "refcountTableClusters"], req);
  st.header.refcountTableOffset = newOffset;
  st.header.refcountTableClusters = clusters;
  st.metadataMoved();
  st.reftableDirty.clear();
  st.growingReftable = false;
  // The old table is unreferenced on disk now.
  for (let c = oldOffset / st.cs; c < oldOffset / st.cs + oldClusters; c++) await updateRefcount(st, c, -1, req);
}

/** Drops one reference to the host cluster at `offset` (QEMU's qcow2_free_clusters). */
export async function freeCluster(st: Qcow2State, offset: number, req: RequestInfo | undefined): Promise<number> {
  const p = st.event("cluster_free", req);
  if (p) await p;
  const c = Math.floor(offset / st.cs);
  const v = await updateRefcount(st, c, -1, req);
  if (v === 0) {
    st.l2Cache.drop(c * st.cs);
    if (Math.floor(st.freeByteOffset / st.cs) === c) st.freeByteOffset = 0;
  }
  return v;
}
