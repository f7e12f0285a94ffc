/**
 * The qcow2 bitmaps extension on disk (qemu/qemu `docs/interop/qcow2.txt`,
 * "Bitmaps extension"): the header extension (count, directory size and
 * offset), the bitmap directory entries' constraints and the bitmap table
 * entries, validated as QEMU's block/qcow2-bitmap.c validates them, with its
 * messages. Shared by the driver (`_bitmaps.ts`), the checker and the
 * metadata map, so all of them agree on what a valid bitmap is.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import { HI } from "./_entries.ts";
import { type BitmapEntry, parseBitmapDirectory } from "./_tables.ts";
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS, type Qcow2Header } from "./header.ts";

/** Directory entry flag: the bitmap was not stored correctly (the image was open and not closed). */
export const BME_FLAG_IN_USE = 1;
/** Directory entry flag: the bitmap records every write (an enabled bitmap). */
export const BME_FLAG_AUTO = 2;
/** Flags a directory entry must not have. */
export const BME_RESERVED_FLAGS = 0xfffffffc;
/** Most entries in a bitmap table. */
export const BME_MAX_TABLE_SIZE = 0x8000000;
/** Most bytes of bitmap data one bitmap may have (QEMU's limit on its size in RAM). */
export const BME_MAX_PHYS_SIZE = 0x20000000;
/** Granularity limits (log2 bytes). */
export const BME_MIN_GRANULARITY_BITS = 9;
/** Largest granularity (log2 bytes). */
export const BME_MAX_GRANULARITY_BITS = 31;
/** Longest bitmap name in bytes. */
export const BME_MAX_NAME_SIZE = 1023;
/** Most bitmaps in one image. */
export const QCOW2_MAX_BITMAPS = 65535;
/** Largest bitmap directory in bytes. */
export const QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS;
/** Bitmap type: dirty tracking. */
export const BT_DIRTY_TRACKING = 1;
/** Bitmap table entry bit 0: the whole cluster of bitmap data is ones (offset 0). */
export const BME_TABLE_ALL_ONES = 1;

/** The bitmaps header extension, decoded. */
export interface BitmapsExt {
  /** Number of bitmaps in the directory. */
  count: number;
  /** Directory size in bytes. */
  dirSize: number;
  /** Directory offset in the image file. */
  dirOffset: number;
}

/** What the header says about bitmaps. */
export type BitmapsState =
  | { kind: "none" }
  /** The extension is there but the autoclear bit is not: a program without bitmap support wrote the image. */
  | { kind: "stale" }
  | { kind: "valid"; ext: BitmapsExt };

const invalid = (message: string) => new BlockError("EINVAL", message);

/**
 * Reads the bitmaps extension of a header and validates it as QEMU's
 * `qcow2_read_extensions` does; throws EINVAL with QEMU's message.
 *
 * @example
 * ```ts
 * import { bitmapsState } from "./_bitmap_format.ts";
 * import type { Qcow2Header } from "./header.ts";
 * console.log(bitmapsState({ extensions: [], autoclearFeatures: 0 } as unknown as Qcow2Header)); // { kind: "none" }
 * ```
 */
export function bitmapsState(h: Qcow2Header): BitmapsState {
  const ext = h.extensions.find((e) => e.type === EXT_BITMAPS);
  if (!ext) return { kind: "none" };
  if (ext.data.length !== 24) throw invalid("bitmaps_ext: Invalid extension length");
  if (!(h.autoclearFeatures & AUTOCLEAR_BITMAPS)) return { kind: "stale" };
  const v = new DataView(ext.data.buffer, ext.data.byteOffset, 24);
  const count = v.getUint32(0);
  if (v.getUint32(4) !== 0) throw invalid("bitmaps_ext: Reserved field is not zero");
  if (count > QCOW2_MAX_BITMAPS) {
    throw invalid(`bitmaps_ext: Image has ${count} bitmaps, exceeding the QEMU supported maximum of ${QCOW2_MAX_BITMAPS}`);
  }
  if (count === 0) throw invalid("found bitmaps extension with zero bitmaps");
  const dirOffsetHi = v.getUint32(16);
  const dirOffset = dirOffsetHi * HI + v.getUint32(20);
  if (dirOffset % 2 ** h.clusterBits !== 0) throw invalid("bitmaps_ext: invalid bitmap directory offset");
  const dirSize = v.getUint32(8) * HI + v.getUint32(12);
  if (dirSize > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
    throw invalid(
      `bitmaps_ext: bitmap directory size (${dirSize}) exceeds the maximum supported size (${QCOW2_MAX_BITMAP_DIRECTORY_SIZE})`,
    );
  }
  // An offset at or past 2^53 lies in no file; it fails where the directory is read.
  return { kind: "valid", ext: { count, dirSize, dirOffset: dirOffsetHi >= 2 ** 21 ? Number.MAX_SAFE_INTEGER : dirOffset } };
}

/**
 * Encodes the bitmaps header extension.
 *
 * @example
 * ```ts
 * import { encodeBitmapsExt } from "./_bitmap_format.ts";
 * console.log(encodeBitmapsExt({ count: 1, dirSize: 32, dirOffset: 0xc0000 }).length); // 24
 * ```
 */
export function encodeBitmapsExt(ext: BitmapsExt): Uint8Array {
  const out = new Uint8Array(24);
  const v = new DataView(out.buffer);
  v.setUint32(0, ext.count);
  v.setUint32(8, Math.floor(ext.dirSize / HI));
  v.setUint32(12, ext.dirSize % HI);
  v.setUint32(16, Math.floor(ext.dirOffset / HI));
  v.setUint32(20, ext.dirOffset % HI);
  return out;
}

/**
 * Bytes of bitmap for `length` bytes of disk at `granularity`, rounded up to 64 bits as QEMU serialises it.
 *
 * @example
 * ```ts
 * import { bitmapBytes } from "./_bitmap_format.ts";
 * console.log(bitmapBytes(10 << 20, 65536)); // 24
 * ```
 */
export function bitmapBytes(length: number, granularity: number): number {
  return Math.ceil(Math.ceil(length / granularity) / 64) * 8;
}

/**
 * Entries of the bitmap table of a bitmap over `length` bytes (QEMU's size_to_clusters of the serialisation size).
 *
 * @example
 * ```ts
 * import { bitmapTableSize } from "./_bitmap_format.ts";
 * console.log(bitmapTableSize(1 << 30, 512, 512)); // 512
 * ```
 */
export function bitmapTableSize(length: number, granularity: number, clusterSize: number): number {
  return Math.ceil(bitmapBytes(length, granularity) / clusterSize);
}

/**
 * QEMU's check_dir_entry: whether a directory entry satisfies the
 * constraints for an image of `length` bytes with `clusterSize` clusters.
 *
 * @example
 * ```ts
 * import { dirEntryValid } from "./_bitmap_format.ts";
 * const e = { name: "b0", tableOffset: 0x50000, tableSize: 1, flags: 2, type: 1, granularityBits: 16, extra: new Uint8Array(0) };
 * console.log(dirEntryValid(e, 65536, 1 << 30), dirEntryValid({ ...e, granularityBits: 8 }, 65536, 1 << 30)); // true false
 * ```
 */
export function dirEntryValid(e: BitmapEntry, clusterSize: number, length: number): boolean {
  if (
    e.tableSize === 0 || e.tableOffset === 0 || e.tableOffset % clusterSize !== 0 || e.tableSize > BME_MAX_TABLE_SIZE ||
    e.granularityBits > BME_MAX_GRANULARITY_BITS || e.granularityBits < BME_MIN_GRANULARITY_BITS ||
    (e.flags & BME_RESERVED_FLAGS) !== 0 || new TextEncoder().encode(e.name).length > BME_MAX_NAME_SIZE || e.type !== BT_DIRTY_TRACKING
  ) return false;
  const phys = e.tableSize * clusterSize;
  if (phys > BME_MAX_PHYS_SIZE) return false;
  // A consistent bitmap must cover the disk; an in-use one may have a stale size.
  return (e.flags & BME_FLAG_IN_USE) !== 0 || length <= phys * 8 * 2 ** e.granularityBits;
}

/**
 * Reads and validates the bitmap directory (QEMU's bitmap_list_load): the
 * count must match the extension, entries must fill the directory exactly,
 * carry no extra data and satisfy the constraints. Throws EINVAL with
 * QEMU's message.
 *
 * @example
 * ```ts
 * import { open } from "../../mod.ts";
 * import { loadBitmapDirectory } from "./_bitmap_format.ts";
 * await using file = await open({ driver: "memory", size: 65536 });
 * await loadBitmapDirectory(file, { count: 1, dirSize: 32, dirOffset: 4096 }, 512, 1 << 20).catch((e) => console.log(e.message));
 * // Bitmap '' doesn't satisfy the constraints (32 zero bytes: an entry with table offset 0)
 * ```
 */
export async function loadBitmapDirectory(file: BlockNode, ext: BitmapsExt, clusterSize: number, length: number): Promise<BitmapEntry[]> {
  if (ext.dirSize === 0) throw invalid("Requested bitmap directory size is zero");
  if (ext.dirOffset + ext.dirSize > file.length) {
    throw invalid(`Failed to read bitmap directory: ${ext.dirSize} bytes at offset ${ext.dirOffset} lie past the end of the file`);
  }
  const buf = new Uint8Array(ext.dirSize);
  await file.pread(ext.dirOffset, buf);
  return checkBitmapDirectory(buf, ext.count, clusterSize, length);
}

/**
 * Validates a directory read into `buf`, entry by entry in QEMU's order (see {@linkcode loadBitmapDirectory}).
 *
 * @example
 * ```ts
 * import { checkBitmapDirectory } from "./_bitmap_format.ts";
 * import { encodeBitmapDirectory } from "./_tables.ts";
 * const dir = encodeBitmapDirectory([{ name: "b0", tableOffset: 0x50000, tableSize: 1, flags: 2, type: 1, granularityBits: 16,
 *   extra: new Uint8Array(0) }]);
 * try {
 *   checkBitmapDirectory(dir, 2, 65536, 1 << 20);
 * } catch (e) {
 *   console.log((e as Error).message); // Less bitmaps found than specified in header extension
 * }
 * ```
 */
export function checkBitmapDirectory(buf: Uint8Array, count: number, clusterSize: number, length: number): BitmapEntry[] {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: BitmapEntry[] = [];
  for (let at = 0; at < buf.length;) {
    if (at + 24 > buf.length) throw invalid("Broken bitmap directory");
    if (out.length + 1 > count) throw invalid("More bitmaps found than specified in header extension");
    const size = Math.ceil((24 + v.getUint32(at + 20) + v.getUint16(at + 18)) / 8) * 8;
    if (at + size > buf.length) throw invalid("Broken bitmap directory");
    const e = parseBitmapDirectory(buf.subarray(at, at + size), 1);
    if (typeof e === "string") throw invalid("Broken bitmap directory");
    if (e[0].extra.length !== 0) throw invalid("Bitmap extra data is not supported");
    if (v.getUint16(at + 18) > BME_MAX_NAME_SIZE || !dirEntryValid(e[0], clusterSize, length)) {
      throw invalid(`Bitmap '${e[0].name}' doesn't satisfy the constraints`);
    }
    out.push(e[0]);
    at += size;
  }
  if (out.length !== count) throw invalid("Less bitmaps found than specified in header extension");
  return out;
}

/** One bitmap table entry: where its cluster of data is (0: none), or all ones. */
export interface BitmapTableEntry {
  /** Offset of the data cluster (0 = none). */
  offset: number;
  /** The cluster reads as all ones (offset 0). */
  ones: boolean;
}

/**
 * QEMU's check_table_entry on the two 32-bit halves of an entry: reserved bits clear, offset aligned, all-ones only without offset.
 *
 * @example
 * ```ts
 * import { tableEntry } from "./_bitmap_format.ts";
 * console.log(tableEntry(0, 0x90000, 65536), tableEntry(0, 0x90002, 65536)); // { offset: 589824, ones: false } undefined
 * ```
 */
export function tableEntry(hi: number, lo: number, clusterSize: number): BitmapTableEntry | undefined {
  if (hi & 0xff000000 || lo & 0x1fe) return undefined;
  const offset = (hi & 0x00ffffff) * HI + ((lo & 0xfffffe00) >>> 0);
  const ones = (lo & BME_TABLE_ALL_ONES) !== 0;
  if (offset !== 0 && (ones || offset % clusterSize !== 0)) return undefined;
  return { offset: hi >= 2 ** 21 ? Number.MAX_SAFE_INTEGER : offset, ones };
}

/**
 * Reads a bitmap's table; returns its entries, or the index of the first invalid entry.
 *
 * @example
 * ```ts
 * import { open } from "../../mod.ts";
 * import { readBitmapTable } from "./_bitmap_format.ts";
 * await using file = await open({ driver: "memory", size: 65536 });
 * const e = { name: "b0", tableOffset: 512, tableSize: 2, flags: 2, type: 1, granularityBits: 16, extra: new Uint8Array(0) };
 * console.log(await readBitmapTable(file, e, 512)); // [ { offset: 0, ones: false }, { offset: 0, ones: false } ]
 * ```
 */
export async function readBitmapTable(file: BlockNode, e: BitmapEntry, clusterSize: number): Promise<BitmapTableEntry[] | number> {
  const bytes = e.tableSize * 8;
  const buf = new Uint8Array(bytes);
  const avail = Math.max(0, Math.min(bytes, file.length - e.tableOffset));
  if (avail) await file.pread(e.tableOffset, buf.subarray(0, avail));
  const v = new DataView(buf.buffer);
  const out: BitmapTableEntry[] = [];
  for (let i = 0; i < e.tableSize; i++) {
    const t = tableEntry(v.getUint32(i * 8), v.getUint32(i * 8 + 4), clusterSize);
    if (!t) return i;
    out.push(t);
  }
  return out;
}

/**
 * Encodes a bitmap table (entries of data cluster offsets; 0 = no data), padded to whole clusters.
 *
 * @example
 * ```ts
 * import { encodeBitmapTable } from "./_bitmap_format.ts";
 * console.log(encodeBitmapTable([0x10000, 0], 512).length); // 512
 * ```
 */
export function encodeBitmapTable(offsets: readonly number[], clusterSize: number): Uint8Array {
  const out = new Uint8Array(Math.max(clusterSize, Math.ceil((offsets.length * 8) / clusterSize) * clusterSize));
  const v = new DataView(out.buffer);
  offsets.forEach((off, i) => {
    v.setUint32(i * 8, Math.floor(off / HI));
    v.setUint32(i * 8 + 4, off % HI);
  });
  return out;
}

/**
 * qemu-img info's flag names for a directory entry's flags.
 *
 * @example
 * ```ts
 * import { bitmapFlagNames } from "./_bitmap_format.ts";
 * console.log(bitmapFlagNames(3)); // [ "in-use", "auto" ]
 * ```
 */
export function bitmapFlagNames(flags: number): string[] {
  const out: string[] = [];
  if (flags & BME_FLAG_IN_USE) out.push("in-use");
  if (flags & BME_FLAG_AUTO) out.push("auto");
  return out;
}

/** What {@linkcode newBitmapGranularity} needs to know of the image. */
export interface NewBitmapContext {
  /** Node name (for messages). */
  node: string;
  /** Cluster size in bytes. */
  clusterSize: number;
  /** Virtual size in bytes. */
  length: number;
  /** The image can store bitmaps (qcow2 v3). */
  persistent: boolean;
  /** Names of the bitmaps the image has. */
  names: readonly string[];
}

/**
 * Validates a new persistent bitmap as qemu-img bitmap --add does (QEMU's
 * checks, in its order, with its messages) and returns its granularity:
 * the one asked, or QEMU's default (the cluster size within 4 KiB..64 KiB).
 *
 * @example
 * ```ts
 * import { newBitmapGranularity } from "./_bitmap_format.ts";
 * const ctx = { node: "disk", clusterSize: 65536, length: 1 << 30, persistent: true, names: ["b0"] };
 * console.log(newBitmapGranularity("b1", {}, ctx)); // 65536
 * try {
 *   newBitmapGranularity("b0", {}, ctx);
 * } catch (e) {
 *   console.log((e as Error).message); // Bitmap already exists: b0
 * }
 * ```
 */
export function newBitmapGranularity(name: string, opts: { granularity?: number }, ctx: NewBitmapContext): number {
  const { node } = ctx;
  if (name === "") throw new BlockError("EINVAL", "Bitmap name cannot be empty", { node });
  const g = opts.granularity ?? Math.min(65536, Math.max(4096, ctx.clusterSize));
  if (!Number.isSafeInteger(g) || g < 512 || g > 2 ** BME_MAX_GRANULARITY_BITS || 2 ** Math.round(Math.log2(g)) !== g) {
    throw new BlockError("EINVAL", "Granularity must be power of 2 and at least 512", { node });
  }
  if (ctx.names.includes(name)) throw new BlockError("EEXIST", `Bitmap already exists: ${name}`, { node });
  const refuse = (why: string, code: "EINVAL" | "ENOTSUP" = "EINVAL"): never => {
    throw new BlockError(code, `Can't make bitmap '${name}' persistent in '${node}': ${why}`, { node });
  };
  if (!ctx.persistent) refuse("Cannot store dirty bitmaps in qcow2 v2 files", "ENOTSUP");
  const bytes = bitmapBytes(ctx.length, g);
  if (bytes > BME_MAX_PHYS_SIZE || bytes > BME_MAX_TABLE_SIZE * ctx.clusterSize) {
    refuse("Too much space will be occupied by the bitmap. Use larger granularity");
  }
  const utf8Length = (s: string) => new TextEncoder().encode(s).length;
  if (utf8Length(name) > BME_MAX_NAME_SIZE) refuse(`Name length exceeds maximum (${BME_MAX_NAME_SIZE} characters)`);
  if (ctx.names.length + 1 > QCOW2_MAX_BITMAPS) refuse("Maximum number of persistent bitmaps is already reached");
  const dirSize = [...ctx.names, name].reduce((n, s) => n + Math.ceil((24 + utf8Length(s)) / 8) * 8, 0);
  if (dirSize > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) refuse("Not enough space in the bitmap directory");
  return g;
}
