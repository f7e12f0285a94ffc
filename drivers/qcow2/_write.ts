/**
 * The qcow2 write path (run under the metadata lock): L2 table allocation
 * and copy-on-write of shared tables, cluster allocation with copy-on-write
 * of partial clusters from the old content (backing file, zeros, shared or
 * compressed clusters), in-place overwrite of COPIED clusters (write-zeroes
 * and discard through the zero flag are in `_zero.ts`).
 *
 * Data is written before the L2 entries that expose it are changed (in the
 * cache); the write-back in `writeback.ts` orders what reaches the disk.
 *
 * @module
 */

import type { RequestInfo } from "../../core/types.ts";
import type { CacheEntry } from "./_cache.ts";
import { checkDataFileOffset, checkV2ZeroFlag, invalidEntryError, invalidExtended } from "./_l2.ts";
import { readGuest } from "./_read.ts";
import { allocClusters } from "./_refcount.ts";
import { growL1 } from "./_l1_grow.ts";
import { entryOffset, HI_COMPRESSED, HI_COPIED, LO_ZERO, setEntry } from "./_entries.ts";
import type { Qcow2State } from "./_state.ts";
import { markDirty } from "./_writeback.ts";
import { writeRefblocks } from "./_metadata_write.ts";
import { checkTableAllocation, OL_ACTIVE_L2, preWriteOverlapCheck } from "./_overlap.ts";
import { abortPieces, classify, flushPieces, INPLACE, NEWSUB, placeRun, queuePiece, touchedMask, WIDEN, WriteCtx } from "./_write_run.ts";
import { writeNew } from "./_write_new.ts";

export { releaseEntry } from "./_write_run.ts";

/** Returns a COPIED L2 table for L1 index `l1i`, allocating or copying it; the entry comes back pinned. */
export async function getL2ForWrite(st: Qcow2State, l1i: number, req: RequestInfo | undefined): Promise<CacheEntry> {
  // Past the active L1 table (the VM state area): grow it as QEMU's get_cluster_table does.
  if (l1i >= st.l1Size) await growL1(st, l1i + 1, false, req);
  const off = st.l1Offset(l1i);
  if (off !== 0 && st.l1Copied(l1i)) return await st.loadL2(off, l1i, req);
  const newOff = await allocClusters(st, 1, req);
  // QEMU's l2_allocate: a table at offset 0 means broken refcounts; the new
  // table is checked as its cache flush would check it.
  await checkTableAllocation(st, "L2 table", newOff);
  await preWriteOverlapCheck(st, OL_ACTIVE_L2, newOff, st.cs, false);
  // Lazy refcounts keep refcount blocks cached past a flush, but QEMU's
  // l2_allocate writes (and flushes) them once a new table is counted: do so too.
  if (st.mode === "lazy" && await writeRefblocks(st, req)) await st.file.flush({ req });
  let buf: Uint8Array;
  if (off !== 0) {
    const p = st.event("l2_alloc_cow_read", req);
    if (p) await p;
    const old = await st.loadL2(off, l1i, req);
    buf = old.buf.slice();
    st.l2Cache.release(old);
  } else {
    buf = new Uint8Array(st.cs);
  }
  let p = st.event("l2_alloc_write", req);
  if (p) await p;
  const e = st.l2Cache.insert(newOff, buf, { dirty: true, isNew: true, pin: true });
  p = st.event("l1_update", req);
  if (p) await p;
  setEntry(st.l1View, l1i * 8, newOff, HI_COPIED, 0);
  st.l1Dirty.add(l1i);
  st.metadataMoved();
  if (off !== 0) {
    // QCOW2_DISCARD_OTHER: the old table's space stays in the file.
    st.pendingFree.push(off);
    st.noDiscard.add(off);
  }
  return e;
}

/**
 * Writes `data` at guest `offset` (metadata lock held). The data of clusters
 * contiguous on the host goes out in one host write per L2 table (QEMU
 * allocates at most one L2 slice's range per step of qcow2_co_pwritev_part).
 */
export async function writeLocked(st: Qcow2State, offset: number, data: Uint8Array, req: RequestInfo | undefined): Promise<void> {
  await markDirty(st, req);
  const end = offset + data.length;
  const w = new WriteCtx(st, offset, data, req);
  while (w.cur < end) {
    const l1i = Math.floor(w.cur / st.l2Span);
    const base = w.base = l1i * st.l2Span;
    const chunkEnd = w.chunkEnd = Math.min(end, base + st.l2Span);
    const e = w.e = await getL2ForWrite(st, l1i, req);
    try {
      while (w.cur < chunkEnd) {
        const cur = w.cur;
        const idx = Math.floor((cur - base) / st.cs);
        const cStart = base + idx * st.cs;
        const segEnd = Math.min(chunkEnd, cStart + st.cs);
        if (!(e.view.getUint32(idx * st.entryBytes) & HI_COMPRESSED)) {
          checkV2ZeroFlag(st, e.view.getUint32(idx * st.entryBytes + 4), idx, e.offset);
          // QEMU's cluster allocation refuses an invalid subcluster bitmap before it writes (one space in its message).
          if (st.extL2 && invalidExtended(st, e.view, idx * st.entryBytes)) throw invalidEntryError(st, e.offset, idx, " ");
        }
        const kind = classify(st, e.view, idx, cur - cStart, segEnd - cStart);
        if (kind === INPLACE || kind === WIDEN) checkDataFileOffset(st, entryOffset(e.view, idx * st.entryBytes), cStart, idx);
        if (kind === NEWSUB) {
          const host = st.externalData ? cStart : (await placeRun(w, 1)).host;
          setEntry(e.view, idx * st.entryBytes, host, HI_COPIED, 0);
          e.view.setUint32(idx * st.entryBytes + 12, 0);
        }
        w.cur = kind === INPLACE || kind === WIDEN || kind === NEWSUB ? await writeCopied(w) : await writeNew(w);
      }
      await flushPieces(w);
    } catch (err) {
      const pieces = w.pending;
      w.pending = [];
      await abortPieces(pieces);
      throw err;
    } finally {
      st.l2Cache.release(e);
    }
  }
}

/**
 * Whether the (sub)cluster of cluster `idx` holding byte `at` (an offset in
 * the cluster) must be filled from its current content when a write covers
 * only part of it: it is not allocated data (QEMU's calculate_l2_meta keeps
 * the head and tail of a NORMAL subcluster and copies the rest).
 */
function needsFill(st: Qcow2State, view: DataView, idx: number, at: number): boolean {
  const e = idx * st.entryBytes;
  if (!st.extL2) return st.header.version >= 3 && (view.getUint32(e + 4) & LO_ZERO) !== 0;
  const bit = 1 << Math.floor(at / st.subSize);
  return (view.getUint32(e + 12) & bit) === 0 || (view.getUint32(e + 8) & bit) !== 0;
}

/**
 * Writes from `w.cur` over COPIED clusters in place: the first one and the
 * following ones that are COPIED and contiguous on the host, in one host
 * write (QEMU's handle_copied run). Clusters (or subclusters) that are not
 * allocated data (preallocated zero, unallocated subclusters) are written
 * whole, a partial head or tail filled from their current content, and
 * marked allocated after the data is written. Returns where it ended.
 */
async function writeCopied(w: WriteCtx): Promise<number> {
  const { st, e, base, cur, chunkEnd, req } = w;
  const first = Math.floor((cur - base) / st.cs);
  const host0 = entryOffset(e.view, first * st.entryBytes);
  let last = first;
  let end = Math.min(chunkEnd, base + (first + 1) * st.cs);
  const widen = [classify(st, e.view, first, cur - base - first * st.cs, end - base - first * st.cs) === WIDEN];
  while (end < chunkEnd) {
    const segEnd = Math.min(chunkEnd, end + st.cs);
    const kind = classify(st, e.view, last + 1, 0, segEnd - end);
    if (st.extL2 && invalidExtended(st, e.view, (last + 1) * st.entryBytes)) break; // refused on its own (writeLocked)
    if ((kind !== INPLACE && kind !== WIDEN) || entryOffset(e.view, (last + 1) * st.entryBytes) !== host0 + (last + 1 - first) * st.cs) {
      break;
    }
    last++;
    checkDataFileOffset(st, host0 + (last - first) * st.cs, base + last * st.cs, last);
    widen.push(kind === WIDEN);
    end = segEnd;
  }
  // Guest range [wStart, wEnd) written at host0 + (wStart - gFirst).
  const gFirst = base + first * st.cs;
  const ss = st.subSize;
  const headFill = (cur - gFirst) % ss !== 0 && needsFill(st, e.view, first, cur - gFirst);
  const tailFill = (end - gFirst) % ss !== 0 && needsFill(st, e.view, last, end - 1 - base - last * st.cs);
  const wStart = headFill ? gFirst + Math.floor((cur - gFirst) / ss) * ss : cur;
  const wEnd = tailFill ? gFirst + Math.ceil((end - gFirst) / ss) * ss : end;
  let buf = w.data.subarray(cur - w.offset, end - w.offset);
  if (headFill || tailFill) {
    const p = st.event("cow_read", req);
    if (p) await p;
    const out = new Uint8Array(wEnd - wStart);
    if (cur > wStart) await readGuest(st, wStart, out.subarray(0, cur - wStart), req);
    if (wEnd > end) await readGuest(st, end, out.subarray(end - wStart), req);
    out.set(buf, cur - wStart);
    buf = out;
  }
  const host = host0 + (wStart - gFirst);
  await preWriteOverlapCheck(st, 0, host, buf.length, true);
  st.noteDataWrite(host, buf.length);
  if (st.crypto) {
    // A fill buffer is ours (encrypt in place); the guest's own data is copied first.
    if (buf.buffer === w.data.buffer) buf = await st.crypto.encrypted(buf, host, wStart);
    else await st.crypto.encrypt(buf, host, wStart);
  }
  // Only once written may the entries expose the (sub)clusters written.
  const commit = () => {
    let dirty = false;
    for (let idx = first; idx <= last; idx++) {
      if (!widen[idx - first]) continue;
      const at = idx * st.entryBytes;
      const cStart = base + idx * st.cs;
      if (st.extL2) {
        const from = Math.max(wStart, cStart) - cStart;
        const to = Math.min(wEnd, cStart + st.cs) - cStart;
        const mask = touchedMask(st, Math.floor(from / ss) * ss, Math.ceil(to / ss) * ss);
        e.view.setUint32(at + 8, (e.view.getUint32(at + 8) & ~mask) >>> 0);
        e.view.setUint32(at + 12, (e.view.getUint32(at + 12) | mask) >>> 0);
      } else {
        setEntry(e.view, at, entryOffset(e.view, at), HI_COPIED, 0);
      }
      dirty = true;
    }
    if (dirty) st.l2Cache.markDirty(e);
  };
  // The (sub)cluster fill was read before the write, as QEMU's merged COW; it raises no cow_write.
  await queuePiece(w, { host, buf, cow: false, commit, abort: () => Promise.resolve() });
  w.contHost = host0 + (last - first + 1) * st.cs;
  return end;
}
