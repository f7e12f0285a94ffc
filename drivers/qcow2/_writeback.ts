/**
 * Write-back of dirty qcow2 metadata in dependency order, and the dirty bit
 * of lazy refcounts.
 *
 * - `ordered`: refcount blocks are written; one flush makes them and the
 *   guest/COW data durable; L2 tables are written; when an L1 entry points at
 *   a new L2 table a flush precedes the L1 write. Freed clusters are counted
 *   down only after a flush made the removal of their last reference durable.
 * - `metadata-sync`: the same order, with a flush after every step; run at
 *   the end of every metadata operation.
 * - `lazy` (lazy refcounts): L2 and L1 do not wait for refcount blocks; the
 *   dirty bit set on the first write covers stale refcounts after a crash.
 * - `x-wrong-order=l2-before-refblock` (tests only): L2 tables and L1 are
 *   written before the refcount blocks are durable.
 *
 * @module
 */

import { type CacheFlushFailure, CorruptImageError, toBlockError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import { INCOMPAT_DIRTY, type Qcow2Header } from "./header.ts";
import { discardClusters, freeCluster, getRefcount } from "./_refcount.ts";
import type { Qcow2State } from "./_state.ts";
import { writeL1, writeL2Tables, writeRefblocks } from "./_metadata_write.ts";
import { serialiseHeader, writeHeaderFields } from "./_header_write.ts";
import { isFixedMetadata, overlapsMetadata } from "./_overlap.ts";

/** Writes all dirty metadata back to the image file in a crash-safe order. */
export async function writeback(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  if (!st.hasDirtyMetadata) return;
  const sync = st.mode === "metadata-sync";
  const hasL2 = st.l2Cache.dirtyCount > 0 || st.l1Dirty.size > 0;
  if (st.wrongOrder === "l2-before-refblock") {
    await writeL2Tables(st, req);
    await writeL1(st, req);
    await writeRefblocks(st, req);
  } else if (st.mode === "lazy") {
    if (hasL2) await writeL2Lazy(st, req);
    await writeRefblocks(st, req);
  } else {
    const wroteRefs = await writeRefblocks(st, req);
    if (hasL2) {
      // Refcounts and guest data are durable before any L2 entry that uses them.
      await st.flushFiles(req);
      const anyNew = await writeL2Tables(st, req);
      if (st.l1Dirty.size) {
        if (anyNew || sync) await st.file.flush({ req });
        await writeL1(st, req);
      }
      if (sync) await st.file.flush({ req });
    } else if (wroteRefs && sync) {
      await st.file.flush({ req });
    }
  }
  await applyPendingFrees(st, req);
}

/**
 * The write-back at close (QEMU's qcow2_inactivate): dirty L2 tables are
 * written back with everything they depend on (refcount blocks first, in
 * the order of {@linkcode writeback}) and the file flushed; then, whatever
 * happened, the refcount block cache is written back and the file flushed.
 * Each failure is kept, not thrown: the refcount blocks may still reach the
 * disk after the L2 tables failed (the clusters leak, nothing worse), and
 * the caller reports every failed cache, as QEMU does.
 */
export async function writebackAtClose(st: Qcow2State): Promise<CacheFlushFailure[]> {
  const failures: CacheFlushFailure[] = [];
  const step = async (cache: string, fn: () => Promise<unknown>) => {
    try {
      await fn();
      await st.flushFiles(undefined);
    } catch (e) {
      if (e instanceof CorruptImageError) throw e;
      failures.push({ cache, error: toBlockError(e, `Cannot write back the ${cache} cache of node '${st.node.name}'`) });
    }
  };
  const l2Dirty = () => st.l2Cache.dirtyCount > 0 || st.l1Dirty.size > 0;
  // Only dirty L2 tables (or L1 entries) depend on the refcount blocks: without them the L2 step writes nothing.
  await step("L2 table", async () => void (l2Dirty() && await writeback(st, undefined)));
  // The refcount blocks alone when L2 tables are still dirty (their write failed), else the rest of the write-back.
  await step("refcount block", async () => void (l2Dirty() ? await writeRefblocks(st, undefined) : await writeback(st, undefined)));
  return failures;
}

/**
 * The write-back of a guest flush (QEMU's qcow2_write_caches): all of it,
 * except that a lazy-refcounts image keeps its dirty refcount blocks (and
 * the frees that wait on them) in the cache, as QEMU does: the dirty bit
 * covers them until the image is closed, a cache overflows or an operation
 * needs the whole write-back (`writeback`).
 */
export async function flushWriteback(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  if (st.mode !== "lazy" || st.wrongOrder === "l2-before-refblock") return await writeback(st, req);
  if (st.l2Cache.dirtyCount > 0 || st.l1Dirty.size > 0) await writeL2Lazy(st, req);
}

/** Lazy refcounts: guest data, then the L2 tables exposing it, then L1 (a new table durable before L1 points at it). */
async function writeL2Lazy(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  await st.flushFiles(req);
  const anyNew = await writeL2Tables(st, req);
  if (anyNew && st.l1Dirty.size) await st.file.flush({ req });
  await writeL1(st, req);
}

/** Counts down clusters whose last reference is gone, once that removal is durable. */
async function applyPendingFrees(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  if (!st.pendingFree.length || st.ioInFlight > 0) return;
  const frees = st.pendingFree;
  st.pendingFree = [];
  await st.file.flush({ req });
  const released: number[] = [];
  for (const off of frees) {
    // A wrong entry's last reference to live metadata (QEMU frees it, and
    // then hands the cluster out again): the metadata keeps its refcount.
    if ((await getRefcount(st, Math.floor(off / st.cs), req)) === 1 && await isFixedMetadata(st, off)) continue;
    if ((await freeCluster(st, off, req)) === 0) released.push(off);
  }
  await writeRefblocks(st, req);
  if (st.mode === "metadata-sync") await st.file.flush({ req });
  // Give the space back to the host (QEMU passes discards of freed clusters down, but not of `noDiscard` ones).
  // A freed cluster that is still metadata (its refcount was wrong) keeps
  // its bytes: the discard is advisory, punching a hole there is not.
  // So does a cluster guest data was written to since the last time: an
  // entry written since may still point at it (see Qcow2State.recentData).
  const recent = st.recentData;
  st.recentData = new Set();
  const keep = st.noDiscard;
  st.noDiscard = new Set();
  const discard: number[] = [];
  for (const off of released) {
    if (!recent || recent.has(Math.floor(off / st.cs)) || keep.has(off)) continue;
    if (off + st.cs > st.file.length || await overlapsMetadata(st, off, st.cs)) continue;
    discard.push(off);
  }
  await discardClusters(st, discard, req);
}

/**
 * Makes the clusters a discard or an unmapping write-zeroes dropped free
 * right away, as QEMU's qcow2_free_clusters does, so the next allocation
 * reuses them where qemu-img would: the write-back makes the removal of
 * their last reference durable first (one flush), then counts them down.
 * Nothing happens while lock-free requests are in flight (they may still
 * use the clusters); the next write-back frees them then.
 */
export async function releaseFreed(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  if (st.pendingFree.length && st.ioInFlight === 0) await writeback(st, req);
}

/** Runs write-back when a cache has grown past its capacity, then trims it. */
export async function relieveCaches(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  if (st.mode === "metadata-sync" || st.l2Cache.overfull || st.rbCache.overfull) {
    await writeback(st, req);
  }
  st.l2Cache.trim();
  st.rbCache.trim();
}

/** Sets the dirty bit before the first change of a lazy-refcounts image. */
export async function markDirty(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  if (st.mode !== "lazy" || st.markedDirty) return;
  st.header.incompatibleFeatures |= INCOMPAT_DIRTY;
  await writeHeaderFields(st.file, st.header, ["incompatibleFeatures"], req);
  st.markedDirty = true;
}

/** Clears the dirty bit after everything is written back and flushed. */
export async function markClean(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  if (!(st.header.incompatibleFeatures & INCOMPAT_DIRTY)) return;
  await writeback(st, req);
  await st.flushFiles(req);
  st.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
  await writeHeaderFields(st.file, st.header, ["incompatibleFeatures"], req);
  st.markedDirty = false;
}

/**
 * Writes the whole header cluster after `change` edited a copy of the
 * in-memory header (QEMU's qcow2_update_header), with everything written
 * back and durable before and the header flushed after (lock held).
 */
export async function rewriteHeader(st: Qcow2State, change: (h: Qcow2Header) => void): Promise<void> {
  await writeback(st, undefined);
  await st.flushFiles(undefined);
  const next = { ...st.header };
  change(next);
  const bytes = serialiseHeader(next, st.cs); // validates before anything is written
  await st.file.pwrite(0, bytes);
  await st.file.flush();
  st.header = next;
  st.metadataMoved();
}
