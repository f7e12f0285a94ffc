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
import { classify, NEWALLOC, type Piece, placeRun, queuePiece, releaseEntry, touchedMask, type WriteCtx } from "./_write_run.ts";

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
  /** Guest start of the bytes written: `gStart`, or later on extended L2 (QEMU's cow_start.offset). */
  from: number;
  /** Guest end of the bytes written: `gEnd`, or earlier on extended L2 (QEMU's cow_end end). */
  to: number;
  cur: number;
  segEnd: number;
  first: number;
  k: number;
  endBefore: number;
}

/** Whether the COW regions `[gStart, cur)` and `[segEnd, gEnd)` of a new run read as zeros now (QEMU's is_zero_cow). */
async function cowReadsZero(w: WriteCtx, r: NewRun): Promise<boolean> {
  const { st, req } = w;
  const { from, cur, segEnd, to } = r;
  if (!st.backing) return false; // without a backing file, zeroAround() already answered
  for (const [s, e] of [[from, Math.min(cur, st.header.size)], [segEnd, Math.min(to, st.header.size)]]) {
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
  const { from, to } = cowBounds(st, e.view, { first, k, gStart, cur, segEnd });
  const r = { host, gStart, gEnd, from, to, cur, segEnd, first, k, endBefore };
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
        // The subclusters written (data and COW) become allocated; the old bitmap's other bits stay (QEMU's qcow2_alloc_cluster_link_l2).
        const cStart = gStart + i * st.cs;
        const mask = touchedMask(st, Math.max(from, cStart) - cStart, Math.min(to, cStart + st.cs) - cStart);
        e.view.setUint32(at + 8, (e.view.getUint32(at + 8) & ~mask) >>> 0);
        e.view.setUint32(at + 12, (e.view.getUint32(at + 12) | mask) >>> 0);
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
  const { host, gStart, gEnd, from, to, cur, segEnd, first, k, endBefore } = r;
  const cow = cur > from || segEnd < to;
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
  const out = new Uint8Array(to - from);
  const p = st.event("cow_read", req);
  if (p) await p;
  if (cur > from) await readGuest(st, from, out.subarray(0, cur - from), req);
  if (segEnd < to) await readGuest(st, segEnd, out.subarray(segEnd - from), req);
  out.set(part, cur - from);
  // The COW buffer is ours: encrypt in place.
  const at = host + (from - gStart);
  if (st.crypto) await st.crypto.encrypt(out, at, from);
  return { host: at, buf: out, cow: true };
}

/**
 * The guest range a run of new clusters gets written over, data and COW
 * (QEMU's calculate_l2_meta): whole clusters, except on extended L2 where
 * the head starts at the first subcluster of the write or the first
 * allocated one of its cluster, whichever comes first, and the tail ends
 * at the last subcluster written or the last allocated one (a compressed
 * cluster is copied whole; an unallocated one only to its subcluster's
 * end). Subclusters outside hold nothing to copy and stay as they were.
 */
function cowBounds(
  st: Qcow2State,
  view: DataView,
  r: { first: number; k: number; gStart: number; cur: number; segEnd: number },
): { from: number; to: number } {
  const { first, k, gStart, cur, segEnd } = r;
  const cs = st.cs;
  const ss = st.subSize;
  const gEnd = gStart + k * cs;
  if (!st.extL2) return { from: gStart, to: gEnd };
  const kind = (idx: number): "compressed" | "allocated" | "plain" => {
    const at = idx * st.entryBytes;
    if (view.getUint32(at) & HI_COMPRESSED) return "compressed";
    return entryOffset(view, at) !== 0 ? "allocated" : "plain";
  };
  const alloc = (idx: number) => view.getUint32(idx * st.entryBytes + 12);
  let from = gStart;
  const sc0 = Math.floor((cur - gStart) / ss);
  const k0 = kind(first);
  if (k0 === "allocated") from = gStart + Math.min(sc0, ctz32(alloc(first))) * ss;
  else if (k0 === "plain") from = gStart + sc0 * ss;
  const lastStart = gEnd - cs;
  let to = gEnd;
  const sc1 = Math.floor((segEnd - 1 - lastStart) / ss);
  const k1 = kind(first + k - 1);
  if (k1 === "allocated") to = gEnd - Math.min(31 - sc1, Math.clz32(alloc(first + k - 1))) * ss;
  else if (k1 === "plain") to = lastStart + (sc1 + 1) * ss;
  return { from, to };
}

/** Trailing zero bits of a 32-bit word (32 for 0). */
function ctz32(x: number): number {
  return x === 0 ? 32 : 31 - Math.clz32((x & -x) >>> 0);
}
