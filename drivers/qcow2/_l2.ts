/**
 * Guest-to-host mapping through the L1 and L2 tables: decoding L2 entries
 * (standard, compressed descriptors, the zero flag, extended L2 subcluster
 * bitmaps) into extents of one kind, QEMU's qcow2_get_host_offset.
 *
 * @module
 */

import { CorruptImageError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import { entryOffset, HI_COMPRESSED, HI_COPIED, LO_ZERO } from "./_entries.ts";
import type { Qcow2State } from "./_state.ts";

/** The range is not allocated in this image (reads from the backing file or zeros). */
export const K_UNALLOC = 0;
/** The range reads as zeros (zero flag or subcluster zero bit). */
export const K_ZERO = 1;
/** The range is data at {@linkcode Mapping.host} in the data file. */
export const K_NORMAL = 2;
/** The range is one compressed cluster. */
export const K_COMPRESSED = 3;

/** An extent of one kind, as {@linkcode mapSync} finds it. Reused between calls. */
export interface Mapping {
  /** One of K_UNALLOC, K_ZERO, K_NORMAL, K_COMPRESSED. */
  kind: number;
  /** Host offset of the first byte (K_NORMAL, or K_ZERO preallocated: 0 for a plain zero cluster), or of the compressed data. */
  host: number;
  /** Bytes of compressed data (K_COMPRESSED). */
  compressedBytes: number;
  /** Length of the extent in bytes. */
  bytes: number;
  /** Every cluster of a K_NORMAL extent has the COPIED flag (overwrite in place). */
  copied: boolean;
  /** L2 table offset the extent was found in (0 = no table). */
  l2Offset: number;
}

/** Makes an empty mapping record. */
export function newMapping(): Mapping {
  return { kind: K_UNALLOC, host: 0, compressedBytes: 0, bytes: 0, copied: false, l2Offset: 0 };
}

/** Decodes a compressed cluster descriptor (entry at byte `at`) into `m`. */
export function decodeCompressed(st: Qcow2State, view: DataView, at: number, m: Mapping): void {
  const x = 62 - (st.clusterBits - 8);
  const hi = view.getUint32(at) & 0x3fffffff;
  const lo = view.getUint32(at + 4);
  const hostBitsHi = x - 32;
  const host = (hi & ((1 << hostBitsHi) - 1)) * 0x100000000 + lo;
  const sectors = (hi >>> hostBitsHi) + 1;
  m.host = host;
  m.compressedBytes = sectors * 512 - (host % 512);
}

/**
 * Maps `[offset, offset + maxBytes)` from cached tables: fills `m` with the
 * first extent of one kind and returns true, or returns false when the L2
 * table is not cached (call {@linkcode map}).
 */
export function mapSync(st: Qcow2State, offset: number, maxBytes: number, m: Mapping): boolean {
  const l1i = Math.floor(offset / st.l2Span);
  const inTable = offset - l1i * st.l2Span;
  const toTableEnd = st.l2Span - inTable;
  m.copied = false;
  m.compressedBytes = 0;
  m.host = 0;
  if (l1i >= st.l1Size) {
    m.kind = K_UNALLOC;
    m.bytes = Math.min(maxBytes, toTableEnd);
    m.l2Offset = 0;
    return true;
  }
  const l2Off = st.l1Offset(l1i);
  m.l2Offset = l2Off;
  if (l2Off === 0) {
    m.kind = K_UNALLOC;
    m.bytes = Math.min(maxBytes, toTableEnd);
    return true;
  }
  const e = st.l2Cache.get(l2Off);
  if (!e) return false;
  const limit = Math.min(maxBytes, toTableEnd);
  const base = l1i * st.l2Span;
  return st.extL2 ? mapExtended(st, e.view, base, inTable, limit, m) : mapStandard(st, e.view, base, inTable, limit, m);
}

function corrupt(st: Qcow2State, what: string): never {
  throw new CorruptImageError(`Corrupt qcow2 image: ${what}`, { node: st.node.name });
}

/**
 * An external data file maps each guest cluster at its own offset: an L2
 * entry saying otherwise would let two guest clusters share data. QEMU's
 * qcow2_get_host_offset refuses it as a corruption; so does every read and
 * write here (QEMU 7.2 still writes there, then fails the read).
 */
export function checkDataFileOffset(st: Qcow2State, host: number, guest: number, idx: number): void {
  if (!st.externalData || host === guest) return;
  corrupt(
    st,
    `External data file host cluster offset 0x${host.toString(16)} does not match guest cluster offset: ${sharp(guest)}, L2 index: ${
      sharp(idx)
    }`,
  );
}

/**
 * Version 2 images have no zero flag: an L2 entry with it set is a
 * corruption for QEMU (qcow2_get_host_offset), on reads and on writes.
 */
export function checkV2ZeroFlag(st: Qcow2State, lo: number, idx: number, l2Offset: number): void {
  if (st.header.version >= 3 || !(lo & LO_ZERO)) return;
  corrupt(st, `Zero cluster entry found in pre-v3 image (L2 offset: ${sharp(l2Offset)}, L2 index: ${sharp(idx)})`);
}

function sharp(n: number): string {
  return n === 0 ? "0" : `0x${n.toString(16)}`;
}

/**
 * An allocated cluster (data, preallocated zero, or on extended L2 one whose
 * subcluster asked for is unallocated) must sit on a cluster boundary: QEMU's
 * qcow2_get_host_offset marks the image corrupt in these words otherwise,
 * whichever subcluster is read.
 */
function checkAligned(st: Qcow2State, host: number, l2Offset: number, idx: number): void {
  if (host % st.cs === 0) return;
  throw new CorruptImageError(
    `Cluster allocation offset 0x${host.toString(16)} unaligned (L2 offset: ${sharp(l2Offset)}, L2 index: ${sharp(idx)})`,
    { node: st.node.name },
  );
}

function mapStandard(st: Qcow2State, view: DataView, base: number, inTable: number, limit: number, m: Mapping): boolean {
  const cs = st.cs;
  let idx = Math.floor(inTable / cs);
  const inCluster = inTable - idx * cs;
  let at = idx * 8;
  let hi = view.getUint32(at);
  let lo = view.getUint32(at + 4);
  let bytes = cs - inCluster;
  if (hi & HI_COMPRESSED) {
    m.kind = K_COMPRESSED;
    decodeCompressed(st, view, at, m);
    m.bytes = Math.min(bytes, limit);
    return true;
  }
  const host = entryOffset(view, at);
  checkV2ZeroFlag(st, lo, idx, m.l2Offset);
  const zero = st.header.version >= 3 && (lo & LO_ZERO) !== 0;
  const kind = zero ? K_ZERO : host === 0 && !(st.externalData && hi & HI_COPIED) ? K_UNALLOC : K_NORMAL;
  if (kind === K_NORMAL || (kind === K_ZERO && host !== 0)) checkAligned(st, host, m.l2Offset, idx);
  if (kind === K_NORMAL || (kind === K_ZERO && host !== 0)) checkDataFileOffset(st, host, base + idx * cs, idx);
  const copied = (hi & HI_COPIED) !== 0;
  if (kind === K_UNALLOC && hi === 0 && lo === 0) {
    // A hole: all-zero entries (always unallocated) are skipped in one tight scan, not decoded one by one.
    const end = Math.min(st.l2Entries, idx + 1 + Math.ceil((limit - bytes) / cs));
    const next = nextNonZeroEntry(view, idx + 1, end);
    bytes += (next - idx - 1) * cs;
    idx = next - 1;
    at = idx * 8;
  }
  let nextHost = host + cs;
  while (bytes < limit && ++idx < st.l2Entries) {
    at += 8;
    hi = view.getUint32(at);
    lo = view.getUint32(at + 4);
    if (hi & HI_COMPRESSED) break;
    if (st.header.version < 3 && lo & LO_ZERO) break; // reported when mapped on its own
    const h = entryOffset(view, at);
    const z = st.header.version >= 3 && (lo & LO_ZERO) !== 0;
    const k = z ? K_ZERO : h === 0 && !(st.externalData && hi & HI_COPIED) ? K_UNALLOC : K_NORMAL;
    if (k !== kind) break;
    if (kind === K_NORMAL && (h !== nextHost || ((hi & HI_COPIED) !== 0) !== copied)) break;
    // A preallocated zero cluster (QEMU's ZERO_ALLOC) keeps its host offset: no run with a plain one, nor a gap on the host.
    if (kind === K_ZERO && (host === 0 ? h !== 0 : h !== nextHost)) break;
    nextHost += cs;
    bytes += cs;
  }
  m.kind = kind;
  m.host = kind === K_NORMAL || (kind === K_ZERO && host !== 0) ? host + inCluster : 0;
  m.copied = copied;
  m.bytes = Math.min(bytes, limit);
  return true;
}

/** The first index in `[from, end)` whose 8-byte L2 entry is not all zero bits, or `end` (`from` when `end <= from`). */
export function nextNonZeroEntry(view: DataView, from: number, end: number): number {
  let i = from;
  if (view.byteOffset % 4 === 0 && end > from) {
    const w = new Uint32Array(view.buffer, view.byteOffset, end * 2);
    while (i < end && (w[2 * i] | w[2 * i + 1]) === 0) i++;
    return i;
  }
  while (i < end && (view.getUint32(i * 8) | view.getUint32(i * 8 + 4)) === 0) i++;
  return i;
}

function subKind(st: Qcow2State, view: DataView, at: number, sub: number, idx: number): number {
  const zeroBits = view.getUint32(at + 8);
  const allocBits = view.getUint32(at + 12);
  const bit = 1 << sub;
  if (zeroBits & bit) {
    if (allocBits & bit) corrupt(st, `subcluster ${sub} of L2 entry ${idx} is both allocated and zero`);
    return K_ZERO;
  }
  return allocBits & bit ? K_NORMAL : K_UNALLOC;
}

/**
 * An extended L2 entry QEMU's qcow2_get_subcluster_type calls invalid,
 * whichever subcluster is asked for: an allocated cluster with a
 * subcluster both allocated and zero, or an unallocated one with any
 * allocation bit.
 */
export function invalidExtended(st: Qcow2State, view: DataView, at: number): boolean {
  const zeroBits = view.getUint32(at + 8);
  const allocBits = view.getUint32(at + 12);
  const unallocated = entryOffset(view, at) === 0 && !(st.externalData && view.getUint32(at) & HI_COPIED);
  return unallocated ? allocBits !== 0 : (zeroBits & allocBits) !== 0;
}

/** QEMU's corruption message for an {@linkcode invalidExtended} entry (`%#x` prints 0 bare); reads say it with two spaces, writes with one. */
export function invalidEntryError(st: Qcow2State, l2Offset: number, idx: number, space: string): CorruptImageError {
  const where = `L2 offset: 0x${l2Offset.toString(16)}, L2 index: ${idx ? `0x${idx.toString(16)}` : "0"}`;
  return new CorruptImageError(`Invalid cluster entry found${space}(${where})`, { node: st.node.name });
}

function mapExtended(st: Qcow2State, view: DataView, base: number, inTable: number, limit: number, m: Mapping): boolean {
  const cs = st.cs;
  const ss = st.subSize;
  let idx = Math.floor(inTable / cs);
  const inCluster = inTable - idx * cs;
  let at = idx * 16;
  const hi = view.getUint32(at);
  if (hi & HI_COMPRESSED) {
    m.kind = K_COMPRESSED;
    decodeCompressed(st, view, at, m);
    m.bytes = Math.min(cs - inCluster, limit);
    return true;
  }
  let host = entryOffset(view, at);
  let sub = Math.floor(inCluster / ss);
  if (invalidExtended(st, view, at)) {
    throw invalidEntryError(st, m.l2Offset, idx, "  "); // QEMU's qcow2_get_host_offset words, two spaces and all
  }
  const kind = subKind(st, view, at, sub, idx);
  if (kind === K_NORMAL && host === 0 && !(st.externalData && hi & HI_COPIED)) {
    corrupt(st, `cluster offset 0x${host.toString(16)} invalid (L2 index ${idx})`);
  }
  if (host !== 0) checkAligned(st, host, m.l2Offset, idx);
  if (kind === K_NORMAL) checkDataFileOffset(st, host, base + idx * cs, idx);
  const copied = (hi & HI_COPIED) !== 0;
  const startHost = host + inCluster;
  let bytes = (sub + 1) * ss - inCluster;
  for (;;) {
    if (bytes >= limit) break;
    sub++;
    if (sub === 32) {
      if (++idx >= st.l2Entries) break;
      at += 16;
      const h2 = view.getUint32(at);
      if (h2 & HI_COMPRESSED) break;
      const nh = entryOffset(view, at);
      if (kind === K_NORMAL && (nh !== host + cs || ((h2 & HI_COPIED) !== 0) !== copied)) break;
      if (invalidExtended(st, view, at)) break; // reported when it is mapped first

      host = nh;
      sub = 0;
    }
    if (subKind(st, view, at, sub, idx) !== kind) break;
    bytes += ss;
  }
  m.kind = kind;
  m.host = kind === K_NORMAL ? startHost : 0;
  m.copied = copied;
  m.bytes = Math.min(bytes, limit);
  return true;
}

/** Maps an extent, loading the L2 table when it is not cached. */
export async function map(st: Qcow2State, offset: number, maxBytes: number, m: Mapping, req: RequestInfo | undefined): Promise<void> {
  if (mapSync(st, offset, maxBytes, m)) return;
  const l1i = Math.floor(offset / st.l2Span);
  // Map from the pinned entry itself: a concurrent load may evict it from the cache at once.
  const e = await st.loadL2(m.l2Offset, l1i, req);
  try {
    const inTable = offset - l1i * st.l2Span;
    const limit = Math.min(maxBytes, st.l2Span - inTable);
    const base = l1i * st.l2Span;
    if (st.extL2) mapExtended(st, e.view, base, inTable, limit, m);
    else mapStandard(st, e.view, base, inTable, limit, m);
  } finally {
    st.l2Cache.release(e);
  }
}
