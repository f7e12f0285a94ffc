/**
 * The qcow2 write path's new clusters: a run of clusters that need new host
 * clusters (unallocated, shared, compressed) gets them, and its guest data
 * with the copy-on-write of the partial first and last cluster becomes a
 * piece of the request's host write (`_write_run.ts`).
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { blockStatus, readGuest } from "./_read.ts";
import { updateRefcount } from "./_refcount.ts";
import { entryOffset, HI_COMPRESSED, HI_COPIED, setEntry } from "./_entries.ts";
import type { Qcow2State } from "./_state.ts";
import { preWriteOverlapCheck } from "./_overlap.ts";
import { invalidExtended } from "./_l2.ts";
import { ALL, classify, NEWALLOC, type Piece, placeRun, queuePiece, releaseEntry, type WriteCtx } from "./_write_run.ts";

/**
 * True when the clusters `first .. first+k-1` of an L2 table read as zeros
 * before the write: no backing file, no external data file or subclusters,
 * and no host cluster behind them.
 */
function zeroAround(st: Qcow2State, view: DataView, first: number, k: number): boolean {
  if (st.backing || st.extL2 || st.externalData) return false;
  for (let i = first; i < first + k; i++) {
    const at = i * st.entryBytes;
    if (view.getUint32(at) & HI_COMPRESSED || entryOffset(view, at) !== 0) return false;
  }
  return true;
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

/** Allocates new clusters from `w.cur` for the run of clusters that need them and queues their data with its COW; returns where it ended. */
export async function writeNew(w: WriteCtx): Promise<number> {
  const { st, e, base, cur, chunkEnd, req } = w;
  const first = Math.floor((cur - base) / st.cs);
  let last = first;
  while (base + (last + 1) * st.cs < chunkEnd) {
    const s = base + (last + 1) * st.cs;
    if (classify(st, e.view, last + 1, 0, Math.min(chunkEnd, s + st.cs) - s) !== NEWALLOC) break;
    if (st.extL2 && invalidExtended(st, e.view, (last + 1) * st.entryBytes)) break; // refused on its own (writeLocked)
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
  const r = { host, gStart, gEnd, cur, segEnd, first, k, endBefore };
  // The clusters are referenced by nothing until the piece commits: a failed
  // write (ENOSPC, EIO) gives them back, so it neither leaks them nor pushes
  // the next allocation further out (QEMU's qcow2_alloc_cluster_abort). Not
  // after an overlap: the image is marked corrupt and its refcounts are suspect.
  const abort = async () => {
    if (st.externalData || st.corrupt) return;
    for (let c = host / st.cs; c < host / st.cs + k; c++) await updateRefcount(st, c, -1, req);
  };
  const commit = () => {
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
  };
  let piece: Piece;
  try {
    // QEMU checks the data write (and its COW) against the metadata first.
    await preWriteOverlapCheck(st, 0, host, k * st.cs, true);
    st.noteDataWrite(host, k * st.cs);
    piece = { ...await newData(w, r, w.data.subarray(cur - w.offset, segEnd - w.offset)), commit, abort };
  } catch (err) {
    await abort();
    throw err;
  }
  await queuePiece(w, piece);
  w.contHost = host + k * st.cs;
  return segEnd;
}

/** The bytes of a run of new clusters: the guest data with its copy-on-write around it, or only the data where the rest reads as zeros. */
async function newData(w: WriteCtx, r: NewRun, part: Uint8Array): Promise<Omit<Piece, "commit" | "abort">> {
  const { st, e, req } = w;
  const { host, gStart, gEnd, cur, segEnd, first, k, endBefore } = r;
  const cow = cur > gStart || segEnd < gEnd;
  const data = { host: host + (cur - gStart), buf: part, cow: false };
  // QEMU's is_zero_cow: COW regions that read as zeros (no backing data
  // there) are not read and copied. Encrypted images: host zeros would
  // decrypt to noise, so the COW regions are always written.
  const zeroCow = cow && !st.crypto && (zeroAround(st, e.view, first, k) || await cowReadsZero(w, r));
  if (zeroCow && host < endBefore) {
    // A reused cluster inside the file: zero it first (QEMU's handle_alloc_space), or copy zeros the normal way.
    try {
      await st.data.pwriteZeroes(host, gEnd - gStart, { noFallback: true, req });
      return data;
    } catch (err) {
      if (!(err instanceof BlockError && err.code === "ENOTSUP")) throw err;
    }
  } else if (zeroCow) {
    if (segEnd >= gEnd) return data;
    // Cover the whole run, as a file of full clusters, where that is cheap.
    const after = async () => {
      try {
        await st.data.pwriteZeroes(host + (segEnd - gStart), gEnd - segEnd, { noFallback: true, req });
      } catch (err) {
        // Without a fast path the tail stays a hole past the end: it reads as zeros.
        if (!(err instanceof BlockError && err.code === "ENOTSUP")) throw err;
      }
    };
    return { ...data, after };
  }
  if (!cow) return { ...data, buf: st.crypto ? await st.crypto.encrypted(part, data.host, cur) : part };
  // Guest data and COW regions go out in one write (QEMU's merged COW: write_aio, then cow_write).
  const out = new Uint8Array(gEnd - gStart);
  const p = st.event("cow_read", req);
  if (p) await p;
  if (cur > gStart) await readGuest(st, gStart, out.subarray(0, cur - gStart), req);
  if (segEnd < gEnd) await readGuest(st, segEnd, out.subarray(segEnd - gStart), req);
  out.set(part, cur - gStart);
  // The COW buffer is ours: encrypt in place.
  if (st.crypto) await st.crypto.encrypt(out, host, gStart);
  return { host, buf: out, cow: true };
}
