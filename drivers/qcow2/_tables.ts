/**
 * Codecs for qcow2's variable-length tables: the snapshot table and the
 * bitmap directory. Each entry has a fixed part described by a field table
 * (name, offset, width, as in `docs/interop/qcow2.txt`), extra data, then
 * names, padded to 8 bytes. Parsers validate every length against the
 * buffer and say what is wrong instead of throwing a RangeError; encoders
 * write what the parsers read.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import { readU64, writeU64 } from "./_entries.ts";
import type { Qcow2Header } from "./header.ts";

/** One fixed-width field of a table entry. */
export interface TableField<K extends string> {
  /** Property it decodes into. */
  readonly key: K;
  /** Byte offset in the entry. */
  readonly offset: number;
  /** Width in bytes (big-endian). */
  readonly size: 1 | 2 | 4 | 8;
}

function getField(view: DataView, at: number, f: { offset: number; size: number }): number {
  const o = at + f.offset;
  return f.size === 1 ? view.getUint8(o) : f.size === 2 ? view.getUint16(o) : f.size === 4 ? view.getUint32(o) : readU64(view, o);
}

function putField(view: DataView, at: number, f: { offset: number; size: number }, v: number): void {
  const o = at + f.offset;
  if (f.size === 1) view.setUint8(o, v);
  else if (f.size === 2) view.setUint16(o, v);
  else if (f.size === 4) view.setUint32(o, v);
  else writeU64(view, o, v);
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();
const pad8 = (n: number) => Math.ceil(n / 8) * 8;

// ---- snapshot table -------------------------------------------------------

type SnapshotFixed = "l1Offset" | "l1Size" | "idSize" | "nameSize" | "dateSec" | "dateNsec" | "vmClockNsec" | "vmStateSize32" | "extraSize";

/** The fixed part of a snapshot table entry (40 bytes). */
export const SNAPSHOT_FIELDS: readonly TableField<SnapshotFixed>[] = [
  { key: "l1Offset", offset: 0, size: 8 },
  { key: "l1Size", offset: 8, size: 4 },
  { key: "idSize", offset: 12, size: 2 },
  { key: "nameSize", offset: 14, size: 2 },
  { key: "dateSec", offset: 16, size: 4 },
  { key: "dateNsec", offset: 20, size: 4 },
  { key: "vmClockNsec", offset: 24, size: 8 },
  { key: "vmStateSize32", offset: 32, size: 4 },
  { key: "extraSize", offset: 36, size: 4 },
];
/** Bytes of the fixed part of a snapshot table entry. */
export const SNAPSHOT_HEADER = 40;
/** Extra data QEMU writes (vm_state_size_large, disk_size, icount). */
export const SNAPSHOT_EXTRA = 24;
/** Extra data QEMU requires at least in a v3 image (vm_state_size_large, disk_size). */
export const SNAPSHOT_EXTRA_V3_MIN = 16;

/** One snapshot table entry, decoded. */
export interface SnapshotEntry {
  /** Offset of the snapshot's L1 table. */
  l1Offset: number;
  /** The exact offset when it is past 2^53 (`l1Offset` is then rounded, its low bits lost). */
  l1OffsetExact?: bigint;
  /** Entries in the snapshot's L1 table. */
  l1Size: number;
  /** Snapshot ID string. */
  id: string;
  /** Snapshot name. */
  name: string;
  /** Creation time, seconds since the epoch. */
  dateSec: number;
  /** Creation time, nanoseconds part. */
  dateNsec: number;
  /** VM clock at creation, nanoseconds. */
  vmClockNsec: number;
  /** Size of the saved VM state (the large field when present). */
  vmStateSize: number;
  /** Virtual disk size at creation (extra data), when recorded. */
  diskSize?: number;
  /** Guest instructions executed (extra data), when recorded (all ones = unknown, left out). */
  icount?: number;
  /** The extra data as found (kept for rewrites). */
  extra: Uint8Array;
  /** The ID and name bytes as found (they need not be UTF-8; a rewrite keeps them as they were). */
  raw?: { id: Uint8Array; name: Uint8Array };
}

/**
 * Parses `count` snapshot table entries from `buf`. Returns the entries and
 * the table's byte size (to the end of the last name: entries start 8-byte
 * aligned, the table does not end padded, as QEMU counts it), or a message
 * saying what is wrong.
 *
 * @example
 * ```ts
 * import { encodeSnapshotTable, parseSnapshotTable } from "./_tables.ts";
 * const bytes = encodeSnapshotTable([{ l1Offset: 0x50000, l1Size: 1, id: "1", name: "s1", dateSec: 0, dateNsec: 0,
 *   vmClockNsec: 0, vmStateSize: 0, diskSize: 1 << 20, extra: new Uint8Array(0) }]);
 * const t = parseSnapshotTable(bytes, 1);
 * console.log(typeof t === "string" ? t : t.entries[0].name); // s1
 * ```
 */
export function parseSnapshotTable(buf: Uint8Array, count: number): { entries: SnapshotEntry[]; size: number } | string {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const entries: SnapshotEntry[] = [];
  let at = 0;
  let size = 0;
  for (let i = 0; i < count; i++) {
    if (at + SNAPSHOT_HEADER > buf.length) return `snapshot table entry ${i} at byte ${at} lies past the end of the table`;
    const f = {} as Record<SnapshotFixed, number>;
    for (const d of SNAPSHOT_FIELDS) f[d.key] = getField(view, at, d);
    const end = at + SNAPSHOT_HEADER + f.extraSize + f.idSize + f.nameSize;
    if (end > buf.length) return `snapshot table entry ${i} (${end - at} bytes) lies past the end of the table`;
    const extraAt = at + SNAPSHOT_HEADER;
    const extra = buf.slice(extraAt, extraAt + f.extraSize);
    const e: SnapshotEntry = {
      l1Offset: f.l1Offset,
      ...(Number.isSafeInteger(f.l1Offset) ? {} : { l1OffsetExact: view.getBigUint64(at) }),
      l1Size: f.l1Size,
      id: decoder.decode(buf.subarray(extraAt + f.extraSize, extraAt + f.extraSize + f.idSize)),
      name: decoder.decode(buf.subarray(extraAt + f.extraSize + f.idSize, end)),
      dateSec: f.dateSec,
      dateNsec: f.dateNsec,
      vmClockNsec: f.vmClockNsec,
      vmStateSize: f.extraSize >= 8 ? readU64(view, extraAt) : f.vmStateSize32,
      extra,
      raw: {
        id: buf.slice(extraAt + f.extraSize, extraAt + f.extraSize + f.idSize),
        name: buf.slice(extraAt + f.extraSize + f.idSize, end),
      },
    };
    if (f.extraSize >= 16) e.diskSize = readU64(view, extraAt + 8);
    if (f.extraSize >= 24 && !(view.getUint32(extraAt + 16) === 0xffffffff && view.getUint32(extraAt + 20) === 0xffffffff)) {
      e.icount = readU64(view, extraAt + 16);
    }
    entries.push(e);
    size = end;
    at = pad8(end);
  }
  return { entries, size };
}

/**
 * Encodes snapshot table entries as QEMU's qcow2_write_snapshots writes them:
 * at least 24 bytes of extra data (vm_state_size_large, disk_size, icount;
 * all ones for an unknown icount) followed by any extra data this
 * implementation does not know (kept as read), the 32-bit vm_state_size
 * kept for old readers (0 when the size does not fit), entries starting at
 * 8-byte boundaries; the result ends with the last name (no padding).
 */
export function encodeSnapshotTable(entries: readonly SnapshotEntry[]): Uint8Array {
  const bytesOf = (text: string, raw: Uint8Array | undefined) => raw && decoder.decode(raw) === text ? raw : encoder.encode(text);
  const parts = entries.map((e) => ({
    e,
    id: bytesOf(e.id, e.raw?.id),
    name: bytesOf(e.name, e.raw?.name),
    extraSize: Math.max(SNAPSHOT_EXTRA, e.extra.length),
  }));
  let size = 0;
  for (const p of parts) size = pad8(size) + SNAPSHOT_HEADER + p.extraSize + p.id.length + p.name.length;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const { e, id, name, extraSize } of parts) {
    at = pad8(at);
    const f: Record<SnapshotFixed, number> = {
      l1Offset: e.l1Offset,
      l1Size: e.l1Size,
      idSize: id.length,
      nameSize: name.length,
      dateSec: e.dateSec,
      dateNsec: e.dateNsec,
      vmClockNsec: e.vmClockNsec,
      vmStateSize32: e.vmStateSize > 0xffffffff ? 0 : e.vmStateSize,
      extraSize,
    };
    for (const d of SNAPSHOT_FIELDS) putField(view, at, d, f[d.key]);
    const x = at + SNAPSHOT_HEADER;
    // A 64-bit field read from the extra data and not changed keeps its exact bytes (past 2^53 a number is not exact).
    const ev = new DataView(e.extra.buffer, e.extra.byteOffset, e.extra.byteLength);
    const put64 = (rel: number, value: number) => {
      if (e.extra.length >= rel + 8 && readU64(ev, rel) === value) out.set(e.extra.subarray(rel, rel + 8), x + rel);
      else writeU64(view, x + rel, value);
    };
    put64(0, e.vmStateSize);
    put64(8, e.diskSize ?? 0);
    if (e.icount === undefined) {
      view.setUint32(x + 16, 0xffffffff);
      view.setUint32(x + 20, 0xffffffff);
    } else put64(16, e.icount);
    if (e.extra.length > SNAPSHOT_EXTRA) out.set(e.extra.subarray(SNAPSHOT_EXTRA), x + SNAPSHOT_EXTRA);
    out.set(id, x + extraSize);
    out.set(name, x + extraSize + id.length);
    at = x + extraSize + id.length + name.length;
  }
  return out;
}

// ---- bitmap directory -------------------------------------------------------

type BitmapFixed = "tableOffset" | "tableSize" | "flags" | "type" | "granularityBits" | "nameSize" | "extraSize";

/** The fixed part of a bitmap directory entry (24 bytes). */
export const BITMAP_DIR_FIELDS: readonly TableField<BitmapFixed>[] = [
  { key: "tableOffset", offset: 0, size: 8 },
  { key: "tableSize", offset: 8, size: 4 },
  { key: "flags", offset: 12, size: 4 },
  { key: "type", offset: 16, size: 1 },
  { key: "granularityBits", offset: 17, size: 1 },
  { key: "nameSize", offset: 18, size: 2 },
  { key: "extraSize", offset: 20, size: 4 },
];
/** Bytes of the fixed part of a bitmap directory entry. */
export const BITMAP_DIR_HEADER = 24;

/** One bitmap directory entry, decoded. */
export interface BitmapEntry {
  /** Bitmap name. */
  name: string;
  /** Offset of the bitmap table. */
  tableOffset: number;
  /** Entries in the bitmap table. */
  tableSize: number;
  /** Flags (bit 0 in use, bit 1 auto, bit 2 extra data compatible). */
  flags: number;
  /** Bitmap type (1 = dirty tracking). */
  type: number;
  /** log2 of the granularity in bytes. */
  granularityBits: number;
  /** Extra data as found. */
  extra: Uint8Array;
}

/**
 * Parses `count` bitmap directory entries; returns them or what is wrong.
 *
 * @example
 * ```ts
 * import { encodeBitmapDirectory, parseBitmapDirectory } from "./_tables.ts";
 * const dir = encodeBitmapDirectory([{ name: "b0", tableOffset: 0x60000, tableSize: 1, flags: 2, type: 1,
 *   granularityBits: 16, extra: new Uint8Array(0) }]);
 * const e = parseBitmapDirectory(dir, 1);
 * console.log(typeof e === "string" ? e : e[0].granularityBits); // 16
 * ```
 */
export function parseBitmapDirectory(buf: Uint8Array, count: number): BitmapEntry[] | string {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: BitmapEntry[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + BITMAP_DIR_HEADER > buf.length) return `bitmap directory entry ${i} lies past the end of the directory`;
    const f = {} as Record<BitmapFixed, number>;
    for (const d of BITMAP_DIR_FIELDS) f[d.key] = getField(view, at, d);
    const end = at + BITMAP_DIR_HEADER + f.extraSize + f.nameSize;
    if (end > buf.length) return `bitmap directory entry ${i} lies past the end of the directory`;
    const x = at + BITMAP_DIR_HEADER;
    out.push({
      name: decoder.decode(buf.subarray(x + f.extraSize, end)),
      tableOffset: f.tableOffset,
      tableSize: f.tableSize,
      flags: f.flags,
      type: f.type,
      granularityBits: f.granularityBits,
      extra: buf.slice(x, x + f.extraSize),
    });
    at = pad8(end);
  }
  return out;
}

/** Encodes bitmap directory entries (extra data kept as given). */
export function encodeBitmapDirectory(entries: readonly BitmapEntry[]): Uint8Array {
  const parts = entries.map((e) => ({ e, name: encoder.encode(e.name) }));
  const out = new Uint8Array(parts.reduce((n, p) => n + pad8(BITMAP_DIR_HEADER + p.e.extra.length + p.name.length), 0));
  const view = new DataView(out.buffer);
  let at = 0;
  for (const { e, name } of parts) {
    const f: Record<BitmapFixed, number> = {
      tableOffset: e.tableOffset,
      tableSize: e.tableSize,
      flags: e.flags,
      type: e.type,
      granularityBits: e.granularityBits,
      nameSize: name.length,
      extraSize: e.extra.length,
    };
    for (const d of BITMAP_DIR_FIELDS) putField(view, at, d, f[d.key]);
    out.set(e.extra, at + BITMAP_DIR_HEADER);
    out.set(name, at + BITMAP_DIR_HEADER + e.extra.length);
    at += pad8(BITMAP_DIR_HEADER + e.extra.length + name.length);
  }
  return out;
}

/** The largest snapshot table QEMU reads (64 MiB). */
export const MAX_SNAPSHOT_TABLE = 64 * 1024 * 1024;

/**
 * Reads and decodes the snapshot table of the image on `file`: entries are
 * variable-sized, so it reads in growing steps, at most QEMU's 64 MiB limit.
 * Returns the entries and the table's size, or what is wrong.
 */
export async function readSnapshotTableFrom(
  file: BlockNode,
  h: Qcow2Header,
): Promise<{ entries: SnapshotEntry[]; size: number } | string> {
  if (h.nbSnapshots === 0) return { entries: [], size: 0 };
  // What lies past the end of the file reads as zeros, as QEMU's reads of the table do.
  const limit = MAX_SNAPSHOT_TABLE;
  let want = Math.min(h.nbSnapshots * 1024, limit);
  for (;;) {
    const buf = new Uint8Array(want);
    const inFile = Math.max(0, Math.min(want, file.length - h.snapshotsOffset));
    if (inFile > 0) await file.pread(h.snapshotsOffset, buf.subarray(0, inFile));
    const parsed = parseSnapshotTable(buf, h.nbSnapshots);
    if (typeof parsed !== "string" || want >= limit) return parsed;
    want = Math.min(limit, want * 4);
  }
}
