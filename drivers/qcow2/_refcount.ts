/**
 * Refcounts: reading and writing entries of any width (1 to 64 bits),
 * cluster allocation, refcount block allocation (a new block describes
 * itself when it falls inside the range it covers) and refcount table growth
 * (a refcount area after the blocks in use, `_refcount_area.ts`), placed as
 * QEMU places them.
 *
 * Refcount blocks live in {@linkcode Qcow2State.rbCache}; updates only mark
 * them dirty, and the write-back in `writeback.ts` writes them before any
 * L2 entry that depends on them. New refcount blocks and a grown refcount
 * table are written (and flushed) before they are hooked in.
 *
 * @module
 */

import { BlockError, CorruptImageError, reportDriverMessage } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import type { CacheEntry } from "./_cache.ts";
import { maxRefcount, readRefcount, writeRefcount } from "./_entries.ts";
import type { Qcow2State } from "./_state.ts";
import { writeRefblocks } from "./_metadata_write.ts";
import { refcountArea } from "./_refcount_area.ts";
import { checkTableAllocation, OL_REFCOUNT_BLOCK, preWriteOverlapCheck } from "./_overlap.ts";

/**
 * Loads the refcount block at `offset` (refcount table entry `rt`), pinned: release it. A read of a refcount
 * raises no event (QEMU's qcow2_get_refcount goes to the cache directly); an update raised `refblock_load`
 * already ({@linkcode refblockEvents}).
 */
function loadBlock(st: Qcow2State, offset: number, rt: number, req: RequestInfo | undefined): Promise<CacheEntry> {
  return st.loadTable(st.rbCache, offset, { kind: "Refblock", where: `reftable index: ${hex(rt)}` }, undefined, req);
}

/**
 * The events of QEMU's alloc_refcount_block, which update_refcount enters
 * once for each refcount block an update touches, cached or not:
 * `refblock_alloc`, then `refblock_load` when the block exists (a missing
 * one is allocated by {@linkcode ensureRefblock}). An error rule armed by
 * either fails the next requests of the image file, as in QEMU.
 */
function refblockEvents(st: Qcow2State, rt: number, req: RequestInfo | undefined): Promise<void> | void {
  const loadEvent = () => (rt < st.reftable.length && st.reftable[rt] !== 0 ? st.event("refblock_load", req) : undefined);
  const p = st.event("refblock_alloc", req);
  return p ? p.then(loadEvent) : loadEvent();
}

/** C's `%#x`: 0, or 0x followed by hex digits. */
function hex(n: number): string {
  return n === 0 ? "0" : `0x${n.toString(16)}`;
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
  const e = await loadBlock(st, st.reftable[rt], rt, req);
  try {
    return readRefcount(e.view, st.refBits, c - rt * st.perBlock);
  } finally {
    st.rbCache.release(e);
  }
}

/** Adds `delta` to the refcount of cluster index `c` (allocating its refcount block if needed). */
export async function updateRefcount(st: Qcow2State, c: number, delta: number, req: RequestInfo | undefined): Promise<number> {
  const p = refblockEvents(st, Math.floor(c / st.perBlock), req);
  if (p) await p;
  return await updateRefcountIn(st, c, delta, req);
}

/** {@linkcode updateRefcount} after its events were raised (once per refcount block of a range). */
async function updateRefcountIn(st: Qcow2State, c: number, delta: number, req: RequestInfo | undefined): Promise<number> {
  const rt = Math.floor(c / st.perBlock);
  if (rt >= st.reftable.length || st.reftable[rt] === 0) {
    if (delta < 0) {
      throw new CorruptImageError(`Corrupt qcow2 image: cannot decrease the refcount of cluster ${c}: it has no refcount block`, {
        node: st.node.name,
      });
    }
    await ensureRefblock(st, rt, c, req);
  }
  const e = await loadBlock(st, st.reftable[rt], rt, req);
  try {
    return applyDelta(st, e, c, c - rt * st.perBlock, delta);
  } finally {
    st.rbCache.release(e);
  }
}

/**
 * {@linkcode updateRefcount} without waiting when the refcount block of `c` exists and is cached: the new refcount,
 * or undefined when the block must be loaded or allocated first (then call `updateRefcount`). An allocation of a whole
 * chunk's clusters then takes no promise or microtask turn per cluster.
 */
export function updateCachedRefcount(st: Qcow2State, c: number, delta: number): number | undefined {
  const rt = Math.floor(c / st.perBlock);
  if (rt >= st.reftable.length || st.reftable[rt] === 0) return undefined;
  const e = st.rbCache.get(st.reftable[rt]);
  return e ? applyDelta(st, e, c, c - rt * st.perBlock, delta) : undefined;
}

/** Adds `delta` to entry `i` (cluster `c`) of the refcount block `e`, checked against zero and the entry width. */
function applyDelta(st: Qcow2State, e: CacheEntry, c: number, i: number, delta: number): number {
  if (st.refBits === 64) return applyDelta64(st, e, c, i, delta);
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
}

/**
 * {@linkcode applyDelta} for 64-bit entries, in exact arithmetic: QEMU's
 * refcounts are uint64_t, so a count past 2^53 (a damaged or crafted image)
 * still goes down by exactly one and may reach 2^64 - 1. The count returned
 * is rounded past 2^53; it only matters whether it is 0.
 */
function applyDelta64(st: Qcow2State, e: CacheEntry, c: number, i: number, delta: number): number {
  const v = e.view.getBigUint64(i * 8) + BigInt(delta);
  if (v < 0n) throw new CorruptImageError(`Corrupt qcow2 image: refcount of cluster ${c} would drop below zero`, { node: st.node.name });
  if (v > 0xffffffffffffffffn) {
    throw new BlockError("ERANGE", `Refcount of cluster ${c} would exceed ${0xffffffffffffffffn} (refcount_bits 64)`, {
      node: st.node.name,
    });
  }
  e.view.setBigUint64(i * 8, v);
  st.rbCache.markDirty(e);
  if (v === 0n && c < st.freeHint) st.freeHint = c;
  return Number(v);
}

/**
 * Finds `n` contiguous free clusters (refcount 0, not reserved) and returns
 * the first index. Like QEMU's free_cluster_index, the search cursor only
 * moves forward past every cluster it looked at (a hole too small for `n`
 * clusters is skipped until a cluster below the cursor is freed), so
 * clusters land where qemu-img puts them.
 */
export async function findFree(st: Qcow2State, n: number, req: RequestInfo | undefined): Promise<number> {
  let start = st.freeHint;
  let c = start;
  while (c - start < n) {
    let rc = st.reserved.has(c) ? 1 : peekRefcount(st, c);
    if (rc < 0) rc = await getRefcount(st, c, req);
    c++;
    if (rc !== 0) start = c;
  }
  st.freeHint = c;
  return start;
}

/**
 * Allocates `n` contiguous clusters in the image file with refcount 1 and
 * returns the host offset of the first (QEMU's qcow2_alloc_clusters). When
 * counting them needs a new refcount table (placed after every refcount
 * block in use), the search restarts, as QEMU's does on -EAGAIN: the new
 * table may lie where the clusters were going to be.
 */
export async function allocClusters(st: Qcow2State, n: number, req: RequestInfo | undefined): Promise<number> {
  const p = st.event("cluster_alloc", req);
  if (p) await p;
  for (;;) {
    const start = await findFree(st, n, req);
    const switches = st.reftableSwitches;
    let counted = 0;
    for (let c = start; c < start + n; c++) st.reserved.add(c);
    try {
      for (let c = start; c < start + n && st.reftableSwitches === switches; c++) {
        if (c === start || c % st.perBlock === 0) {
          const ev = refblockEvents(st, Math.floor(c / st.perBlock), req);
          if (ev) await ev;
        }
        if (updateCachedRefcount(st, c, 1) === undefined) await updateRefcountIn(st, c, 1, req);
        counted++;
      }
    } catch (e) {
      // Undo the counts of this attempt (an overflow leaves no half allocation behind).
      for (let c = start; c < start + counted; c++) await updateRefcount(st, c, -1, req);
      throw e;
    } finally {
      for (let c = start; c < start + n; c++) st.reserved.delete(c);
    }
    if (st.reftableSwitches === switches) {
      for (let c = start; c < start + n; c++) dropQueuedFree(st, c * st.cs);
      return start * st.cs;
    }
    // The refcount table moved, maybe onto the clusters chosen: undo and search again.
    for (let c = start; c < start + counted; c++) await updateRefcount(st, c, -1, req);
    if (st.freeHint > start) st.freeHint = start;
  }
}

/**
 * Allocates up to `n` clusters from cluster index `first` on, as many as are
 * free there in a row, without moving the search cursor (QEMU's
 * qcow2_alloc_clusters_at, which keeps an allocation contiguous with the
 * previous one). Returns how many it took (0 when `first` is in use).
 */
export async function allocAt(st: Qcow2State, first: number, n: number, req: RequestInfo | undefined): Promise<number> {
  for (;;) {
    let free = 0;
    while (free < n && !st.reserved.has(first + free) && (await getRefcount(st, first + free, req)) === 0) free++;
    const switches = st.reftableSwitches;
    let counted = 0;
    for (let c = first; c < first + free; c++) st.reserved.add(c);
    try {
      for (let c = first; c < first + free && st.reftableSwitches === switches; c++) {
        if (c === first || c % st.perBlock === 0) {
          const ev = refblockEvents(st, Math.floor(c / st.perBlock), req);
          if (ev) await ev;
        }
        await updateRefcountIn(st, c, 1, req);
        counted++;
      }
    } catch (e) {
      for (let c = first; c < first + counted; c++) await updateRefcount(st, c, -1, req);
      throw e;
    } finally {
      for (let c = first; c < first + free; c++) st.reserved.delete(c);
    }
    if (st.reftableSwitches === switches) {
      for (let c = first; c < first + free; c++) dropQueuedFree(st, c * st.cs);
      return free;
    }
    for (let c = first; c < first + counted; c++) await updateRefcount(st, c, -1, req);
  }
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

/**
 * Allocates a refcount block for refcount-table index `rt` (needed for
 * cluster index `cluster`) and hooks it in (QEMU's alloc_refcount_block):
 * the block goes to the first free cluster and describes itself when it
 * falls in its own range; past the end of the refcount table, a refcount
 * area with a table half as large again is made after all blocks in use.
 */
async function ensureRefblock(st: Qcow2State, rt: number, cluster: number, req: RequestInfo | undefined): Promise<void> {
  if (rt < st.reftable.length && st.reftable[rt] !== 0) return;
  // `refblock_alloc` was raised by the update that needs the block (refblockEvents).
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
  if (rt < st.reftable.length && st.reftable[rt] !== 0) {
    // Counting the block allocated the one it needed (a deeper recursion): give this one back.
    await updateRefcount(st, b, -1, req);
    return;
  }
  const off = b * st.cs;
  let p = st.event("refblock_alloc_write", req);
  if (p) await p;
  // A new block is durable before it is hooked in.
  await preWriteOverlapCheck(st, OL_REFCOUNT_BLOCK, off, st.cs, false);
  await st.file.pwrite(off, buf, { req });
  await st.file.flush({ req });
  st.rbCache.insert(off, buf);
  if (rt < st.reftable.length) {
    p = st.event("refblock_alloc_hookup", req);
    if (p) await p;
    st.reftable[rt] = off;
    st.reftableDirty.add(rt);
    st.metadataMoved();
    if (st.mode === "metadata-sync") {
      await writeRefblocks(st, req);
      await st.file.flush({ req });
    }
    return;
  }
  p = st.event("reftable_grow", req);
  if (p) await p;
  const used = Math.ceil(Math.max(cluster + 1, b + 1) / st.perBlock);
  const { oldTable } = await refcountArea(st, used * st.perBlock, 0, false, { index: rt, offset: off }, req);
  await freeTable(st, oldTable, req);
}

/** Drops the references to a replaced refcount table (its clusters). */
export async function freeTable(st: Qcow2State, t: { cluster: number; clusters: number }, req: RequestInfo | undefined): Promise<void> {
  for (let c = t.cluster; c < t.cluster + t.clusters; c++) await updateRefcount(st, c, -1, req);
}

/**
 * Drops one reference to the host cluster at `offset` and returns its new
 * refcount (QEMU's qcow2_free_clusters). An I/O error leaves the cluster
 * leaked, nothing worse: like QEMU, it is reported ("qcow2_free_clusters
 * failed: Input/output error", {@linkcode reportDriverMessage}) and not
 * thrown, and -1 comes back. A corrupt image still throws.
 */
export async function freeCluster(st: Qcow2State, offset: number, req: RequestInfo | undefined): Promise<number> {
  const p = st.event("cluster_free", req);
  if (p) await p;
  const c = Math.floor(offset / st.cs);
  let v: number;
  try {
    v = await updateRefcount(st, c, -1, req);
  } catch (e) {
    if (!(e instanceof BlockError) || e instanceof CorruptImageError) throw e;
    reportDriverMessage({ node: st.node.name, format: "qcow2", message: `qcow2_free_clusters failed: ${e.strerror}` });
    return -1;
  }
  if (v === 0) {
    st.l2Cache.drop(c * st.cs);
    if (Math.floor(st.freeByteOffset / st.cs) === c) st.freeByteOffset = 0;
  }
  return v;
}

/**
 * Gives freed host clusters back to the host, adjacent clusters as one
 * range, as QEMU's discard queue merges them (qcow2_process_discards): a
 * shrink that frees 2000 clusters is a few punches, not 2000, and each range
 * is punched whole, so the file system never splits an extent that the next
 * punches then trim (ext4 keeps the extent-tree block such a split needed).
 * Advisory: a failed discard is ignored. Clusters past the end of the file
 * are skipped.
 */
export async function discardClusters(st: Qcow2State, offsets: readonly number[], req: RequestInfo | undefined): Promise<void> {
  const cs = st.cs;
  const sorted = [...new Set(offsets)].filter((off) => off + cs <= st.file.length).sort((a, b) => a - b);
  for (let i = 0; i < sorted.length;) {
    let j = i + 1;
    while (j < sorted.length && sorted[j] === sorted[j - 1] + cs) j++;
    await st.file.pdiscard(sorted[i], (j - i) * cs, { req }).catch(() => {});
    i = j;
  }
}
