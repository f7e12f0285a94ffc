/**
 * What the qcow2 write path shares between its helpers: the request's
 * context, the classification of each cluster a write touches, and the
 * pieces of one host write. A request's data for clusters that are
 * contiguous on the host (overwritten in place or newly allocated) is
 * gathered into pieces and written in one host write, as QEMU writes the
 * whole range qcow2_alloc_host_offset returns (handle_copied and
 * handle_alloc continue one host range); the L2 entries that expose the
 * data change only after that write.
 *
 * @module
 */

import type { RequestInfo } from "../../core/types.ts";
import type { CacheEntry } from "./_cache.ts";
import { decodeCompressed, newMapping } from "./_l2.ts";
import { allocAt, allocClusters } from "./_refcount.ts";
import { entryOffset, HI_COMPRESSED, HI_COPIED, LO_ZERO } from "./_entries.ts";
import type { Qcow2State } from "./_state.ts";

export const ALL = 0xffffffff;

/** What a write must do with one cluster: overwrite in place. */
export const INPLACE = 0;
/** A COPIED cluster whose touched (sub)clusters are not allocated data: write in place, then mark them allocated. */
export const WIDEN = 1;
/** A new cluster for the whole cluster. */
export const NEWALLOC = 2;
/** Extended L2: a new cluster of which only the touched subclusters are written. */
export const NEWSUB = 3;

/** The mask of the subclusters of one cluster touched by [from, to) (offsets within the cluster). */
export function touchedMask(st: Qcow2State, from: number, to: number): number {
  const a = Math.floor(from / st.subSize);
  const b = Math.ceil(to / st.subSize);
  return b - a >= 32 ? ALL : ((((1 << (b - a)) >>> 0) - 1) << a) >>> 0;
}

/** Which of {@linkcode INPLACE}, {@linkcode WIDEN}, {@linkcode NEWALLOC}, {@linkcode NEWSUB} a write of [from, to) of cluster `idx` is. */
export function classify(st: Qcow2State, view: DataView, idx: number, from: number, to: number): number {
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
 * Queues the host clusters an L2 entry references for freeing (shared,
 * compressed or preallocated). `fresh` is a run of host clusters just
 * allocated to replace it: an old entry pointing into it had a reference
 * its refcount never counted (a damaged image), and freeing it would take
 * the new data's count (and discard its cluster), so it is not queued.
 * `keepSpace`: a replacement by a preallocating resize, whose freed
 * clusters keep their space in the file (QCOW2_DISCARD_NEVER).
 */
export function releaseEntry(
  st: Qcow2State,
  view: DataView,
  at: number,
  fresh?: { first: number; end: number },
  keepSpace = false,
): void {
  if (st.externalData) return;
  const queue = (c: number) => {
    if (fresh && c >= fresh.first && c < fresh.end) return;
    st.pendingFree.push(c * st.cs);
    if (keepSpace) st.noDiscard.add(c * st.cs);
  };
  const hi = view.getUint32(at);
  if (hi & HI_COMPRESSED) {
    const m = newMapping();
    decodeCompressed(st, view, at, m);
    const first = Math.floor(m.host / st.cs);
    const last = Math.floor((m.host + m.compressedBytes - 1) / st.cs);
    for (let c = first; c <= last; c++) queue(c);
    st.freeCompressedNow = true;
    return;
  }
  const host = entryOffset(view, at);
  if (host !== 0) queue(Math.floor(host / st.cs));
}

/** Part of one host write: the bytes of a run of clusters, and what to do once they are written (or the write failed). */
export interface Piece {
  /** Host offset of `buf[0]`. */
  host: number;
  /** The bytes to write, encrypted already on an encrypted image. */
  buf: Uint8Array;
  /** The bytes include copy-on-write regions (QEMU's merged COW raises cow_write). */
  cow: boolean;
  /** Runs after the write, before {@linkcode Piece.commit}. */
  after?: () => Promise<void>;
  /** Exposes the written data: the L2 entry updates. */
  commit(): void;
  /** Gives back what the piece allocated, when the write failed. */
  abort(): Promise<void>;
}

/**
 * One write request under the lock as it walks its L2 tables, shared by the
 * write helpers; {@linkcode writeLocked} builds one per request and updates
 * it as it goes.
 */
export class WriteCtx {
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
  /** Pieces of the next host write, contiguous on the host. */
  pending: Piece[] = [];

  constructor(st: Qcow2State, offset: number, data: Uint8Array, req: RequestInfo | undefined) {
    this.st = st;
    this.offset = offset;
    this.data = data;
    this.req = req;
    this.cur = offset;
  }
}

/** New clusters for a run of `k`: contiguous with the previous ones when free there, else first fit. */
export async function placeRun(w: WriteCtx, k: number): Promise<{ host: number; k: number }> {
  const { st, req } = w;
  if (w.contHost >= 0) {
    const got = await allocAt(st, w.contHost / st.cs, k, req);
    if (got > 0) return { host: w.contHost, k: got };
  }
  return { host: await allocClusters(st, k, req), k };
}

/** Adds a piece to the next host write, first writing the pending ones when it does not continue them on the host. */
export async function queuePiece(w: WriteCtx, piece: Piece): Promise<void> {
  const last = w.pending.at(-1);
  if (last && last.host + last.buf.length !== piece.host) await flushPieces(w);
  w.pending.push(piece);
}

/** Writes the pending pieces in one host write, then commits them; on a failure gives back what they allocated. */
export async function flushPieces(w: WriteCtx): Promise<void> {
  const { st, req } = w;
  const pieces = w.pending;
  if (pieces.length === 0) return;
  w.pending = [];
  try {
    let p = st.event("write_aio", req);
    if (p) await p;
    if (pieces.some((x) => x.cow)) {
      p = st.event("cow_write", req);
      if (p) await p;
    }
    let buf = pieces[0].buf;
    if (pieces.length > 1) {
      buf = new Uint8Array(pieces.reduce((n, x) => n + x.buf.length, 0));
      let at = 0;
      for (const x of pieces) {
        buf.set(x.buf, at);
        at += x.buf.length;
      }
    }
    await st.data.pwrite(pieces[0].host, buf, { req });
    for (const x of pieces) if (x.after) await x.after();
  } catch (err) {
    await abortPieces(pieces);
    throw err;
  }
  for (const x of pieces) x.commit();
}

/** Gives back what unwritten pieces allocated (a later piece of the same write failed to build). */
export async function abortPieces(pieces: Piece[]): Promise<void> {
  for (const x of pieces) await x.abort();
}
