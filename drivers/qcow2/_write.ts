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

import { BlockError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import type { CacheEntry } from "./_cache.ts";
import { checkDataFileOffset, checkV2ZeroFlag, decodeCompressed, newMapping } from "./_l2.ts";
import { blockStatus, readGuest } from "./_read.ts";
import { allocAt, allocClusters, updateRefcount } from "./_refcount.ts";
import { growL1 } from "./_l1_grow.ts";
import { entryOffset, HI_COMPRESSED, HI_COPIED, LO_ZERO, setEntry } from "./_entries.ts";
import type { Qcow2State } from "./_state.ts";
import { markDirty } from "./_writeback.ts";
import { writeRefblocks } from "./_metadata_write.ts";
import { checkTableAllocation, OL_ACTIVE_L2, preWriteOverlapCheck } from "./_overlap.ts";

const ALL = 0xffffffff;

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
  if (off !== 0) st.pendingFree.push(off);
  return e;
}

/**
 * Queues the host clusters an L2 entry references for freeing (shared,
 * compressed or preallocated). `fresh` is a run of host clusters just
 * allocated to replace it: an old entry pointing into it had a reference
 * its refcount never counted (a damaged image), and freeing it would take
 * the new data's count (and discard its cluster), so it is not queued.
 */
export function releaseEntry(st: Qcow2State, view: DataView, at: number, fresh?: { first: number; end: number }): void {
  if (st.externalData) return;
  const queue = (c: number) => {
    if (!fresh || c < fresh.first || c >= fresh.end) st.pendingFree.push(c * st.cs);
  };
  const hi = view.getUint32(at);
  if (hi & HI_COMPRESSED) {
    const m = newMapping();
    decodeCompressed(st, view, at, m);
    const first = Math.floor(m.host / st.cs);
    const last = Math.floor((m.host + m.compressedBytes - 1) / st.cs);
    for (let c = first; c <= last; c++) queue(c);
    return;
  }
  const host = entryOffset(view, at);
  if (host !== 0) queue(Math.floor(host / st.cs));
}

/** What a write must do with one cluster. */
const INPLACE = 0;
const WIDEN = 1;
const NEWALLOC = 2;
const NEWSUB = 3;

function touchedMask(st: Qcow2State, from: number, to: number): number {
  // Subclusters of one cluster touched by [from, to) (offsets within the cluster).
  const a = Math.floor(from / st.subSize);
  const b = Math.ceil(to / st.subSize);
  return b - a >= 32 ? ALL : ((((1 << (b - a)) >>> 0) - 1) << a) >>> 0;
}

function classify(st: Qcow2State, view: DataView, idx: number, from: number, to: number): number {
  const at = idx * st.entryBytes;
  const hi = view.getUint32(at);
  if (hi & HI_COMPRESSED) return NEWALLOC;
  const host = entryOffset(view, at);
  // Extended L2: a partial write to an unallocated cluster allocates it but
  // only writes (and marks allocated) the subclusters it touches.
  if (st.extL2 && host === 0 && !(hi & HI_COPIED) && (from > 0 || to < st.cs)) return NEWSUB;
  if (!(hi & HI_COPIED) || (host === 0 && !st.externalData)) return NEWALLOC;
  if (st.extL2) {
    const mask = touchedMask(st, from, to);
    const zero = view.getUint32(at + 8);
    const alloc = view.getUint32(at + 12);
    return (alloc & mask) >>> 0 === mask && (zero & mask) === 0 ? INPLACE : WIDEN;
  }
  if (st.header.version >= 3 && view.getUint32(at + 4) & LO_ZERO) return WIDEN;
  return INPLACE;
}

/**
 * True when the clusters `first .. first+k-1` of an L2 table read as zeros
 * before the write: no backing file, no external data file or subclusters,
 * and no host cluster behind them.
 */
function zeroAround(st: Qcow2State, view: DataView, first: number, k: number): boolean {
  // Encrypted images: host zeros would decrypt to noise, so the COW regions are always written.
  if (st.backing || st.extL2 || st.externalData || st.crypto) return false;
  for (let i = first; i < first + k; i++) {
    const at = i * st.entryBytes;
    if (view.getUint32(at) & HI_COMPRESSED || entryOffset(view, at) !== 0) return false;
  }
  return true;
}

/**
 * One write request under the lock as it walks its L2 tables, shared by the
 * write helpers; {@linkcode writeLocked} builds one per request (in place of
 * the `{ host }` object it built before) and updates it as it goes.
 */
class WriteCtx {
  /** The image. */
  readonly st: Qcow2State;
  /** The whole request's guest data. */
  readonly data: Uint8Array;
  /** Guest offset of `data[0]`. */
  readonly offset: number;
  /** The request (for events and child requests). */
  readonly req: RequestInfo | undefined;
  /** The L2 table of the current chunk (pinned while the chunk is written). */
  e!: CacheEntry;
  /** First guest offset the current L2 table maps. */
  base = 0;
  /** End of the request within the current L2 table. */
  chunkEnd = 0;
  /** Guest offset written up to. */
  cur: number;
  /**
   * Where the host mapping of the request would continue (QEMU's host_offset
   * in qcow2_alloc_host_offset): new clusters are placed right after the
   * previous ones of the same request while those clusters are free, even
   * when the search cursor is elsewhere; -1 when a new placement starts.
   */
  contHost = -1;

  constructor(st: Qcow2State, offset: number, data: Uint8Array, req: RequestInfo | undefined) {
    this.st = st;
    this.offset = offset;
    this.data = data;
    this.req = req;
    this.cur = offset;
  }
}

/** New clusters for a run of `k`: contiguous with the previous ones when free there, else first fit. */
async function placeRun(w: WriteCtx, k: number): Promise<{ host: number; k: number }> {
  const { st, req } = w;
  if (w.contHost >= 0) {
    const got = await allocAt(st, w.contHost / st.cs, k, req);
    if (got > 0) return { host: w.contHost, k: got };
  }
  return { host: await allocClusters(st, k, req), k };
}

/** Whether the COW regions `[gStart, cur)` and `[segEnd, gEnd)` of a new run read as zeros now (QEMU's is_zero_cow). */
async function cowReadsZero(w: WriteCtx, r: NewRun): Promise<boolean> {
  const { st, req } = w;
  const { gStart, cur, segEnd, gEnd } = r;
  if (!st.backing) return false; // without a backing file, zeroAround() already answered
  for (const [s, e] of [[gStart, Math.min(cur, st.header.size)], [segEnd, Math.min(gEnd, st.header.size)]]) {
    for (let o = s; o < e;) {
      const bs = await blockStatus(st, o, e - o, req);
      if (!bs.zero) return false;
      o += Math.max(1, bs.length);
    }
  }
  return true;
}

/** Writes `data` at guest `offset` (metadata lock held). */
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
        }
        const kind = classify(st, e.view, idx, cur - cStart, segEnd - cStart);
        if (kind === INPLACE || kind === WIDEN) checkDataFileOffset(st, entryOffset(e.view, idx * st.entryBytes), cStart, idx);
        if (kind === INPLACE) {
          const next = await writeInPlace(w);
          w.contHost = entryOffset(e.view, Math.floor((next - 1 - base) / st.cs) * st.entryBytes) + st.cs;
          w.cur = next;
        } else if (kind === WIDEN || kind === NEWSUB) {
          if (kind === NEWSUB) {
            const host = st.externalData ? cStart : (await placeRun(w, 1)).host;
            setEntry(e.view, idx * st.entryBytes, host, HI_COPIED, 0);
            e.view.setUint32(idx * st.entryBytes + 12, 0);
          }
          await writeWiden(w, idx, segEnd);
          w.contHost = entryOffset(e.view, idx * st.entryBytes) + st.cs;
          w.cur = segEnd;
        } else {
          w.cur = await writeNew(w);
        }
      }
    } finally {
      st.l2Cache.release(e);
    }
  }
}

/** Overwrites in place from `w.cur`, over the following clusters that are in place and contiguous on the host; returns where it ended. */
async function writeInPlace(w: WriteCtx): Promise<number> {
  const { st, e, base, cur, chunkEnd, req } = w;
  // Extend over following clusters that are in place and contiguous on the host.
  let idx = Math.floor((cur - base) / st.cs);
  const host = entryOffset(e.view, idx * st.entryBytes) + (cur - base - idx * st.cs);
  let end = Math.min(chunkEnd, base + (idx + 1) * st.cs);
  let nextHost = entryOffset(e.view, idx * st.entryBytes) + st.cs;
  while (end < chunkEnd) {
    idx++;
    const segEnd = Math.min(chunkEnd, end + st.cs);
    if (classify(st, e.view, idx, 0, segEnd - end) !== INPLACE || entryOffset(e.view, idx * st.entryBytes) !== nextHost) break;
    checkDataFileOffset(st, nextHost, base + idx * st.cs, idx);
    nextHost += st.cs;
    end = segEnd;
  }
  const p = st.event("write_aio", req);
  if (p) await p;
  await preWriteOverlapCheck(st, 0, host, end - cur, true);
  st.noteDataWrite(host, end - cur);
  const part = w.data.subarray(cur - w.offset, end - w.offset);
  await st.data.pwrite(host, st.crypto ? await st.crypto.encrypted(part, host, cur) : part, { req });
  return end;
}

/** Writes `[w.cur, to)` into cluster `idx` of the current L2 table, a COPIED cluster whose touched (sub)clusters are not allocated. */
async function writeWiden(w: WriteCtx, idx: number, to: number): Promise<void> {
  const { st, e, req } = w;
  const from = w.cur;
  const cStart = w.base + idx * st.cs;
  const part = w.data.subarray(from - w.offset, to - w.offset);
  // A COPIED cluster whose touched (sub)clusters are not allocated: fill them
  // from their current content, write in place, then mark them allocated.
  const ss = st.subSize;
  const wStart = cStart + Math.floor((from - cStart) / ss) * ss;
  const wEnd = cStart + Math.ceil((to - cStart) / ss) * ss;
  const buf = new Uint8Array(wEnd - wStart);
  if (from > wStart || to < wEnd) {
    const p = st.event("cow_read", req);
    if (p) await p;
    if (from > wStart) await readGuest(st, wStart, buf.subarray(0, from - wStart), req);
    if (to < wEnd) await readGuest(st, to, buf.subarray(to - wStart), req);
  }
  buf.set(part, from - wStart);
  const at = idx * st.entryBytes;
  const host = entryOffset(e.view, at);
  const p = st.event("write_aio", req);
  if (p) await p;
  await preWriteOverlapCheck(st, 0, host + (wStart - cStart), buf.length, true);
  st.noteDataWrite(host + (wStart - cStart), buf.length);
  if (st.crypto) await st.crypto.encrypt(buf, host + (wStart - cStart), wStart);
  await st.data.pwrite(host + (wStart - cStart), buf, { req });
  if (st.extL2) {
    const mask = touchedMask(st, wStart - cStart, wEnd - cStart);
    e.view.setUint32(at + 8, (e.view.getUint32(at + 8) & ~mask) >>> 0);
    e.view.setUint32(at + 12, (e.view.getUint32(at + 12) | mask) >>> 0);
  } else {
    setEntry(e.view, at, host, HI_COPIED, 0);
  }
  st.l2Cache.markDirty(e);
}

/** Allocates new clusters from `w.cur` for the run of clusters that need them, writes the data with its COW; returns where it ended. */
async function writeNew(w: WriteCtx): Promise<number> {
  const { st, e, base, cur, chunkEnd, req } = w;
  const first = Math.floor((cur - base) / st.cs);
  let last = first;
  while (base + (last + 1) * st.cs < chunkEnd) {
    const s = base + (last + 1) * st.cs;
    if (classify(st, e.view, last + 1, 0, Math.min(chunkEnd, s + st.cs) - s) !== NEWALLOC) break;
    last++;
  }
  // Clusters that were unallocated in an image without a backing file read
  // as zeros around the guest data; when they land past the end of the host
  // file, that space reads as zeros already, so only the guest data is
  // written (QEMU writes zeroes with BDRV_REQ_NO_FALLBACK there instead).
  const endBefore = st.data.length;
  const gStart = base + first * st.cs;
  let k = last - first + 1;
  let host = gStart;
  if (!st.externalData) ({ host, k } = await placeRun(w, k));
  const gEnd = gStart + k * st.cs;
  const segEnd = Math.min(chunkEnd, gEnd);
  try {
    // QEMU checks the data write (and its COW) against the metadata first.
    await preWriteOverlapCheck(st, 0, host, k * st.cs, true);
    st.noteDataWrite(host, k * st.cs);
    await writeNewData(w, { host, gStart, gEnd, cur, segEnd, first, k, endBefore }, w.data.subarray(cur - w.offset, segEnd - w.offset));
  } catch (err) {
    // The clusters are referenced by nothing yet: give them back, so a
    // failed write (ENOSPC, EIO) neither leaks them nor pushes the next
    // allocation further out (QEMU's qcow2_alloc_cluster_abort). Not after
    // an overlap: the image is marked corrupt and its refcounts are suspect.
    if (!st.externalData && !st.corrupt) {
      for (let c = host / st.cs; c < host / st.cs + k; c++) await updateRefcount(st, c, -1, req);
    }
    throw err;
  }
  for (let i = 0; i < k; i++) {
    const at = (first + i) * st.entryBytes;
    releaseEntry(st, e.view, at, { first: host / st.cs, end: host / st.cs + k });
    setEntry(e.view, at, host + i * st.cs, HI_COPIED, 0);
    if (st.extL2) {
      e.view.setUint32(at + 8, 0);
      e.view.setUint32(at + 12, ALL);
    }
  }
  st.l2Cache.markDirty(e);
  w.contHost = host + k * st.cs;
  return segEnd;
}

/** Where {@linkcode writeNew} puts a run of new clusters. */
interface NewRun {
  host: number;
  gStart: number;
  gEnd: number;
  cur: number;
  segEnd: number;
  first: number;
  k: number;
  endBefore: number;
}

/** Writes the guest data of a run of new clusters with its copy-on-write around it. */
async function writeNewData(w: WriteCtx, r: NewRun, part: Uint8Array): Promise<void> {
  const { st, e, req } = w;
  const { host, gStart, gEnd, cur, segEnd, first, k, endBefore } = r;
  let out = part;
  const cow = cur > gStart || segEnd < gEnd;
  let written = false;
  // QEMU's is_zero_cow: COW regions that read as zeros (no backing data there) are not read and copied.
  const zeroCow = cow && (zeroAround(st, e.view, first, k) || await cowReadsZero(w, r));
  if (zeroCow && host < endBefore) {
    // A reused cluster inside the file: zero it first (QEMU's handle_alloc_space), or copy zeros the normal way.
    try {
      await st.data.pwriteZeroes(host, gEnd - gStart, { noFallback: true, req });
      const p = st.event("write_aio", req);
      if (p) await p;
      await st.data.pwrite(host + (cur - gStart), part, { req });
      written = true;
    } catch (err) {
      if (!(err instanceof BlockError && err.code === "ENOTSUP")) throw err;
    }
  }
  if (written) {
    // done above
  } else if (zeroCow && host >= endBefore) {
    const p = st.event("write_aio", req);
    if (p) await p;
    await st.data.pwrite(host + (cur - gStart), part, { req });
    // Cover the whole run, as a file of full clusters, where that is cheap.
    if (segEnd < gEnd) {
      try {
        await st.data.pwriteZeroes(host + (segEnd - gStart), gEnd - segEnd, { noFallback: true, req });
      } catch (err) {
        // Without a fast path the tail stays a hole past the end: it reads as zeros.
        if (!(err instanceof BlockError && err.code === "ENOTSUP")) throw err;
      }
    }
    written = true;
  } else if (cow) {
    out = new Uint8Array(gEnd - gStart);
    const p = st.event("cow_read", req);
    if (p) await p;
    if (cur > gStart) await readGuest(st, gStart, out.subarray(0, cur - gStart), req);
    if (segEnd < gEnd) await readGuest(st, segEnd, out.subarray(segEnd - gStart), req);
    out.set(part, cur - gStart);
  }
  // Guest data and COW regions go out in one write (QEMU's merged COW: write_aio, then cow_write).
  if (!written) {
    let p = st.event("write_aio", req);
    if (p) await p;
    if (cow) {
      p = st.event("cow_write", req);
      if (p) await p;
    }
    const at = cow ? host : host + (cur - gStart);
    if (st.crypto) {
      // The COW buffer is ours (encrypt in place); the guest's own data is copied first.
      if (cow) await st.crypto.encrypt(out, at, gStart);
      else out = await st.crypto.encrypted(out, at, cur);
    }
    await st.data.pwrite(at, out, { req });
  }
}
