/**
 * qcow2 write-zeroes and discard through the L2 entries (QEMU's
 * qcow2_co_pwrite_zeroes, qcow2_subcluster_zeroize and
 * qcow2_cluster_discard): the zero flag (v3) or the subclusters' zero bits
 * (extended L2), deallocation, or both; a raw external data file gets the
 * same operation.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import type { CacheEntry } from "./_cache.ts";
import { entryOffset, HI_COMPRESSED, HI_COPIED, LO_ZERO, setEntry } from "./_entries.ts";
import { AUTOCLEAR_DATA_FILE_RAW } from "./header.ts";
import { K_UNALLOC, K_ZERO, map, newMapping } from "./_l2.ts";
import { blockStatus } from "./_read.ts";
import type { Qcow2State } from "./_state.ts";
import { markDirty, releaseFreed, relieveCaches } from "./_writeback.ts";
import { getL2ForWrite, releaseEntry } from "./_write.ts";

const ALL = 0xffffffff;

function notSupported(st: Qcow2State, offset: number, length: number, why: string): BlockError {
  return new BlockError("ENOTSUP", `Cannot write zeroes to ${length} bytes at offset ${offset}: ${why}`, {
    node: st.node.name,
    offset,
    length,
  });
}

/** Whether `[offset, offset + length)` (clamped to the image) reads as zeros, backing chain included (QEMU's is_zero). */
async function readsZero(st: Qcow2State, offset: number, length: number, req: RequestInfo | undefined): Promise<boolean> {
  const end = Math.min(offset + length, st.size);
  for (let o = offset; o < end;) {
    const s = await blockStatus(st, o, end - o, req);
    if (!s.zero || s.length <= 0) return false;
    o += s.length;
  }
  return true;
}

/**
 * Write-zeroes (QEMU's qcow2_co_pwrite_zeroes). The core passes whole
 * subclusters (clusters without extended L2), or a piece of one: that piece
 * zeroes its whole subcluster when the rest of it already reads as zeros and
 * it holds no data, as in QEMU; otherwise ENOTSUP, and the core writes zero
 * buffers. compat=0.10 has no zero flag: without a backing file the clusters
 * are discarded (they read as zeros then), with one ENOTSUP.
 */
export async function writeZeroes(
  st: Qcow2State,
  offset: number,
  length: number,
  unmap: boolean,
  req: RequestInfo | undefined,
): Promise<void> {
  const ss = st.subSize;
  const head = offset % ss;
  const end = offset + length;
  const tail = end >= st.size ? 0 : (ss - (end % ss)) % ss;
  if (head || tail) {
    // The rest of the subcluster must read as zeros already (checked before taking the lock, as QEMU does).
    if (!(await readsZero(st, offset - head, head, req) && await readsZero(st, end, tail, req))) {
      throw notSupported(st, offset, length, "the rest of the subcluster does not read as zeros");
    }
  }
  if (st.header.version < 3 && st.backing) {
    throw notSupported(st, offset, length, "a compat=0.10 image has no zero clusters");
  }
  await st.change(async () => {
    let from = offset;
    let to = end;
    if (head || tail) {
      // Re-checked under the lock: only an unallocated or zero subcluster is zeroed whole.
      from -= head;
      to = from + ss;
      const m = newMapping();
      await map(st, from, ss, m, req);
      if (m.kind !== K_UNALLOC && m.kind !== K_ZERO) throw notSupported(st, offset, length, "the subcluster holds data");
    }
    // The image ends inside this subcluster: it counts whole (QEMU: size_to_subclusters); the subclusters past the end stay as they were.
    if (to >= st.size) to = Math.ceil(to / ss) * ss;
    await zeroOrDiscard(st, from, to - from, { discard: st.header.version < 3, unmap }, req);
    await releaseFreed(st, req);
    await relieveCaches(st, req);
  });
}

/**
 * Makes whole clusters `[offset, offset + length)` read as zeros (v3 zero
 * flag, `discard` false) or discards them (`discard` true: v3 zero flag when
 * the old content must stay hidden, v2 deallocation). With extended L2
 * entries a write-zeroes may start and end on subcluster boundaries: the
 * clusters it covers in part get their subclusters' zero bits (ENOTSUP for
 * a compressed one). Metadata lock held.
 */
export async function zeroOrDiscard(
  st: Qcow2State,
  offset: number,
  length: number,
  opts: { discard: boolean; unmap: boolean; full?: boolean },
  req: RequestInfo | undefined,
): Promise<void> {
  await markDirty(st, req);
  const end = offset + length;
  const v3 = st.header.version >= 3;
  if (st.externalData && st.header.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) {
    // A raw data file reads as the image does (QEMU's qcow2_subcluster_zeroize and discard pass through).
    const n = Math.min(end, st.header.size) - offset;
    if (n > 0 && !opts.discard) await st.data.pwriteZeroes(offset, n, { req });
    else if (n > 0) await st.data.pdiscard(offset, n, { req }).catch(() => {});
  }
  let cur = offset;
  while (cur < end) {
    const l1i = Math.floor(cur / st.l2Span);
    const base = l1i * st.l2Span;
    const chunkEnd = Math.min(end, base + st.l2Span);
    const hasTable = l1i < st.l1Size && st.l1Offset(l1i) !== 0;
    // Unallocated with nothing below to hide: a discard leaves it. Write-zeroes on v3 still marks the
    // clusters zero (allocating the L2 table), as QEMU's zero_in_l2_slice does: they then read as
    // present zeros, and a backing file added later stays hidden.
    const skip = opts.discard ? !st.backing || !v3 || opts.full : !st.backing && !v3;
    if (!hasTable && skip) {
      cur = chunkEnd;
      continue;
    }
    const e = await getL2ForWrite(st, l1i, req);
    let touched = false;
    try {
      for (let idx = Math.floor((cur - base) / st.cs); base + idx * st.cs < chunkEnd; idx++) {
        const cb = base + idx * st.cs;
        const a = Math.max(cur, cb) - cb;
        const b = Math.min(chunkEnd, cb + st.cs) - cb;
        const whole = a === 0 && (b === st.cs || cb + b >= st.size);
        const at = idx * st.entryBytes;
        const before = entryWords(e.view, at, st.extL2);
        if (whole || opts.discard || !st.extL2) zeroEntry(st, e, at, v3, opts);
        else zeroSubclusters(st, e.view, at, a / st.subSize, Math.ceil(b / st.subSize), cb);
        // An entry that already said this leaves the table clean: no l2_update, as in QEMU's zero_in_l2_slice.
        if (entryWords(e.view, at, st.extL2) !== before) touched = true;
      }
    } finally {
      if (touched) st.l2Cache.markDirty(e);
      st.l2Cache.release(e);
    }
    cur = chunkEnd;
  }
}

function zeroEntry(
  st: Qcow2State,
  e: CacheEntry,
  at: number,
  v3: boolean,
  opts: { discard: boolean; unmap: boolean; full?: boolean },
): void {
  const view = e.view;
  const hi = view.getUint32(at);
  const host = entryOffset(view, at);
  const compressed = (hi & HI_COMPRESSED) !== 0;
  const copied = (hi & HI_COPIED) !== 0;
  const allocated = compressed || host !== 0 || (st.externalData && copied);
  let keep = false;
  let zero: boolean;
  // A discard of an unallocated cluster with no backing file to hide leaves
  // its entry as it is, zero flag or subclusters' zero bits included (QEMU's
  // discard_in_l2_slice).
  if (opts.discard && !opts.full && !allocated && !st.backing) return;
  if (opts.discard) {
    // A full discard makes the cluster unallocated (reads from the backing
    // file again), as QEMU's full_discard does for make_empty.
    zero = !opts.full && v3 && (st.backing !== undefined || allocated);
  } else {
    // QEMU's zero_in_l2_slice keeps the whole entry unless it unmaps (a compressed cluster always): the host offset and its
    // OFLAG_COPIED as they were, also for a cluster a snapshot shares (no COPIED), whose refcount then stays as it is.
    zero = true;
    keep = !opts.unmap && !compressed && allocated;
  }
  if (!keep && allocated) releaseEntry(st, view, at);
  const flags = keep && copied ? HI_COPIED : 0;
  if (st.extL2) {
    setEntry(view, at, keep ? host : 0, flags, 0);
    view.setUint32(at + 8, zero ? ALL : 0);
    view.setUint32(at + 12, 0);
  } else {
    setEntry(view, at, keep ? host : 0, flags, zero ? LO_ZERO : 0);
  }
}

/** Sets the zero bits of subclusters `[first, end)` of one cluster and clears their allocation bits (QEMU's zero_l2_subclusters). */
function zeroSubclusters(st: Qcow2State, view: DataView, at: number, first: number, end: number, guest: number): void {
  if (view.getUint32(at) & HI_COMPRESSED) {
    throw notSupported(st, guest + first * st.subSize, (end - first) * st.subSize, "part of a compressed cluster cannot be zeroed");
  }
  const mask = ((2 ** (end - first) - 1) * 2 ** first) >>> 0;
  view.setUint32(at + 8, (view.getUint32(at + 8) | mask) >>> 0);
  view.setUint32(at + 12, (view.getUint32(at + 12) & ~mask) >>> 0);
}

/** The words of one L2 entry, as a string to compare. */
function entryWords(view: DataView, at: number, ext: boolean): string {
  const w = `${view.getUint32(at)},${view.getUint32(at + 4)}`;
  return ext ? `${w},${view.getUint32(at + 8)},${view.getUint32(at + 12)}` : w;
}
