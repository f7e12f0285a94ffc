/**
 * The qcow2 header: parsing with validation of every field (the checks QEMU
 * makes when it opens an image, see its iotest 080), and serialisation of the
 * header, its extensions and the backing file name into the first cluster.
 *
 * Layout (qemu/qemu `docs/interop/qcow2.txt`): a fixed part of 72 bytes
 * (version 2) or `header_length` bytes (version 3), then header extensions
 * (type, length, data padded to 8 bytes) up to an end marker, then the backing
 * file name at `backing_file_offset`.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import type { RequestInfo } from "../../core/types.ts";

/** The magic at offset 0: `QFI\xfb`. */
export const QCOW2_MAGIC = 0x514649fb;

/** Incompatible feature bit 0: refcounts may be inconsistent (lazy refcounts). */
export const INCOMPAT_DIRTY = 1;
/** Incompatible feature bit 1: the image is corrupt; read-only access only. */
export const INCOMPAT_CORRUPT = 2;
/** Incompatible feature bit 2: guest data lives in an external data file. */
export const INCOMPAT_DATA_FILE = 4;
/** Incompatible feature bit 3: the compression type field is not zlib. */
export const INCOMPAT_COMPRESSION = 8;
/** Incompatible feature bit 4: L2 entries are 128 bits with subcluster bitmaps. */
export const INCOMPAT_EXTL2 = 16;
/** All incompatible feature bits this implementation knows. */
export const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/** Compatible feature bit 0: lazy refcounts. */
export const COMPAT_LAZY_REFCOUNTS = 1;

/** Autoclear feature bit 0: the bitmaps extension is consistent. */
export const AUTOCLEAR_BITMAPS = 1;
/** Autoclear feature bit 1: the external data file is a valid raw image. */
export const AUTOCLEAR_DATA_FILE_RAW = 2;

/** Header extension: backing file format name. */
export const EXT_BACKING_FORMAT = 0xe2792aca;
/** Header extension: feature name table. */
export const EXT_FEATURE_TABLE = 0x6803f857;
/** Header extension: bitmaps. */
export const EXT_BITMAPS = 0x23852875;
/** Header extension: full disk encryption header pointer. */
export const EXT_CRYPTO = 0x0537be77;
/** Header extension: external data file name. */
export const EXT_DATA_FILE = 0x44415441;
/** Header extension: end of the extension area. */
export const EXT_END = 0;

/** Smallest cluster size (2^9 = 512 bytes). */
export const MIN_CLUSTER_BITS = 9;
/** Largest cluster size (2^21 = 2 MiB). */
export const MAX_CLUSTER_BITS = 21;
/** Largest active L1 table QEMU accepts, in bytes. */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
/** Largest refcount table QEMU accepts, in bytes. */
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
/** Most snapshots an image may have. */
export const MAX_SNAPSHOTS = 65536;
/** Longest backing file name, in bytes. */
export const MAX_BACKING_NAME = 1023;
/** Fixed header length of version 2 images. */
export const V2_HEADER_LENGTH = 72;
/** Header length QEMU writes for version 3 images (with compression type). */
export const V3_HEADER_LENGTH = 112;

/** One header extension, kept as raw bytes (unknown ones are preserved). */
export interface HeaderExtension {
  /** Extension type (magic). */
  type: number;
  /** Extension data, without the padding. */
  data: Uint8Array;
}

/** The decoded qcow2 header. Offsets and sizes are bytes unless noted. */
export interface Qcow2Header {
  /** Format version. */
  version: 2 | 3;
  /** Offset of the backing file name (0 = no backing file). */
  backingFileOffset: number;
  /** Length of the backing file name. */
  backingFileSize: number;
  /** log2 of the cluster size. */
  clusterBits: number;
  /** Virtual disk size. */
  size: number;
  /** 0 = none, 1 = AES, 2 = LUKS. */
  cryptMethod: number;
  /** Entries in the active L1 table. */
  l1Size: number;
  /** Offset of the active L1 table. */
  l1TableOffset: number;
  /** Offset of the refcount table. */
  refcountTableOffset: number;
  /** Refcount table length in clusters. */
  refcountTableClusters: number;
  /** Number of snapshots. */
  nbSnapshots: number;
  /** Offset of the snapshot table. */
  snapshotsOffset: number;
  /** Incompatible feature bits (v3). */
  incompatibleFeatures: number;
  /** Compatible feature bits (v3). */
  compatibleFeatures: number;
  /** Autoclear feature bits (v3). */
  autoclearFeatures: number;
  /** log2 of the refcount width in bits (4 for v2). */
  refcountOrder: number;
  /** Length of the fixed header. */
  headerLength: number;
  /** 0 = zlib (deflate), 1 = zstd. */
  compressionType: 0 | 1;
  /** All extensions in file order, including unknown ones (preserved on rewrite). */
  extensions: HeaderExtension[];
  /** High 32 bits of the feature words (unknown to this implementation; kept on rewrite). */
  featureHigh?: FeatureHigh;
  /** Backing file name. */
  backingFile?: string;
  /** Backing file format (from the backing format extension). */
  backingFormat?: string;
  /** External data file name (from the data file extension). */
  dataFile?: string;
}

/** One entry of the feature name table extension. */
export interface FeatureName {
  /** 0 = incompatible, 1 = compatible, 2 = autoclear. */
  type: number;
  /** Bit number. */
  bit: number;
  /** Feature name. */
  name: string;
}

const FEATURE_ENTRY = 48;
const decoder = new TextDecoder();

/** An EINVAL naming what is wrong with a header. */
export function invalid(message: string): BlockError {
  return new BlockError("EINVAL", message);
}

/** A numeric field of the fixed header part: where it is, how wide, from which version on. */
export interface HeaderField {
  /** Property of {@linkcode Qcow2Header} it decodes into. */
  readonly key: HeaderFieldKey;
  /** Field name in `docs/interop/qcow2.txt` (used in error messages). */
  readonly name: string;
  /** Byte offset in the header. */
  readonly offset: number;
  /** Width in bytes (big-endian). */
  readonly size: 1 | 4 | 8;
  /** First header version that has it. */
  readonly since: 2 | 3;
}

/** The numeric header properties that come straight from a field. */
export type HeaderFieldKey =
  | "version"
  | "backingFileOffset"
  | "backingFileSize"
  | "clusterBits"
  | "size"
  | "cryptMethod"
  | "l1Size"
  | "l1TableOffset"
  | "refcountTableOffset"
  | "refcountTableClusters"
  | "nbSnapshots"
  | "snapshotsOffset"
  | "incompatibleFeatures"
  | "compatibleFeatures"
  | "autoclearFeatures"
  | "refcountOrder"
  | "headerLength"
  | "compressionType";

/** The fixed header, field by field (qcow2.txt "Header"); offset 0 is the magic. */
export const HEADER_FIELDS: readonly HeaderField[] = [
  { key: "version", name: "version", offset: 4, size: 4, since: 2 },
  { key: "backingFileOffset", name: "backing_file_offset", offset: 8, size: 8, since: 2 },
  { key: "backingFileSize", name: "backing_file_size", offset: 16, size: 4, since: 2 },
  { key: "clusterBits", name: "cluster_bits", offset: 20, size: 4, since: 2 },
  { key: "size", name: "size", offset: 24, size: 8, since: 2 },
  { key: "cryptMethod", name: "crypt_method", offset: 32, size: 4, since: 2 },
  { key: "l1Size", name: "l1_size", offset: 36, size: 4, since: 2 },
  { key: "l1TableOffset", name: "l1_table_offset", offset: 40, size: 8, since: 2 },
  { key: "refcountTableOffset", name: "refcount_table_offset", offset: 48, size: 8, since: 2 },
  { key: "refcountTableClusters", name: "refcount_table_clusters", offset: 56, size: 4, since: 2 },
  { key: "nbSnapshots", name: "nb_snapshots", offset: 60, size: 4, since: 2 },
  { key: "snapshotsOffset", name: "snapshots_offset", offset: 64, size: 8, since: 2 },
  { key: "incompatibleFeatures", name: "incompatible_features", offset: 72, size: 8, since: 3 },
  { key: "compatibleFeatures", name: "compatible_features", offset: 80, size: 8, since: 3 },
  { key: "autoclearFeatures", name: "autoclear_features", offset: 88, size: 8, since: 3 },
  { key: "refcountOrder", name: "refcount_order", offset: 96, size: 4, since: 3 },
  { key: "headerLength", name: "header_length", offset: 100, size: 4, since: 3 },
  { key: "compressionType", name: "compression_type", offset: 104, size: 1, since: 3 },
];

/** The field table entry for `key`. */
export function headerField(key: HeaderFieldKey): HeaderField {
  return HEADER_FIELDS.find((f) => f.key === key)!;
}

/**
 * 64-bit offsets at or past 2^53 cannot lie in any file and do not fit a
 * number exactly: they decode to this value plus their low 21 bits, so the
 * cluster alignment checks still see the real low bits and the "past the end
 * of the file" checks refuse them where the table is used, as QEMU does.
 */
export const FAR_OFFSET = 2 ** 52;

/** The feature words' high 32 bits (no known feature lives there). */
export interface FeatureHigh {
  /** Bits 32..63 of incompatible_features. */
  incompatible: number;
  /** Bits 32..63 of compatible_features. */
  compatible: number;
  /** Bits 32..63 of autoclear_features. */
  autoclear: number;
}

function readField(view: DataView, f: HeaderField): { value: number; hi: number } {
  if (f.size === 1) return { value: view.getUint8(f.offset), hi: 0 };
  if (f.size === 4) return { value: view.getUint32(f.offset), hi: 0 };
  const hi = view.getUint32(f.offset);
  const lo = view.getUint32(f.offset + 4);
  return { value: hi < 2 ** 21 ? hi * 2 ** 32 + lo : FAR_OFFSET + (lo % 2 ** 21), hi };
}

/** What each 64-bit offset field points at (for "... offset invalid" errors). */
const OFFSET_NAMES: Partial<Record<HeaderFieldKey, string>> = {
  l1TableOffset: "Active L1 table",
  refcountTableOffset: "Reference count table",
  snapshotsOffset: "Snapshot table",
};

/** A 64-bit field is at least 2^53 (not exactly representable). */
function isFar(view: DataView, f: HeaderField): boolean {
  return f.size === 8 && view.getUint32(f.offset) >= 2 ** 21;
}

function checkTable(
  what: string,
  offset: number,
  bytes: number,
  clusterSize: number,
  fileLength: number,
): void {
  if (offset % clusterSize !== 0) {
    throw invalid(`Invalid ${what} offset ${offset}: not aligned to the cluster size (${clusterSize})`);
  }
  if (bytes > 0 && offset + bytes > fileLength) {
    throw invalid(`Invalid ${what} offset ${offset}: the table (${bytes} bytes) extends past the end of the file (${fileLength} bytes)`);
  }
}

/**
 * Decodes the feature name table extension (entries of type, bit, name).
 *
 * @example
 * ```ts
 * import { parseFeatureTable } from "@blkgraph/blkgraph/drivers/qcow2";
 * console.log(parseFeatureTable(new Uint8Array(0))); // []
 * ```
 */
export function parseFeatureTable(data: Uint8Array): FeatureName[] {
  const out: FeatureName[] = [];
  for (let at = 0; at + FEATURE_ENTRY <= data.length; at += FEATURE_ENTRY) {
    let end = at + 2;
    while (end < at + FEATURE_ENTRY && data[end] !== 0) end++;
    out.push({ type: data[at], bit: data[at + 1], name: decoder.decode(data.subarray(at + 2, end)) });
  }
  return out;
}

/** Names of the features QEMU lists in the feature table it writes. */
export const QEMU_FEATURE_NAMES: readonly FeatureName[] = [
  { type: 0, bit: 0, name: "dirty bit" },
  { type: 0, bit: 1, name: "corrupt bit" },
  { type: 0, bit: 2, name: "external data file" },
  { type: 0, bit: 3, name: "compression type" },
  { type: 0, bit: 4, name: "extended L2 entries" },
  { type: 1, bit: 0, name: "lazy refcounts" },
  { type: 2, bit: 0, name: "bitmaps" },
  { type: 2, bit: 1, name: "raw external data" },
];

/** Describes unknown incompatible bits (low and high 32-bit halves), using names from the feature table. */
function describeUnknownIncompat(lo: number, hi: number, extensions: HeaderExtension[]): string {
  const table = extensions.find((e) => e.type === EXT_FEATURE_TABLE);
  const names = table ? parseFeatureTable(table.data) : [];
  const parts: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    const word = bit < 32 ? lo : hi;
    if (((word >>> (bit % 32)) & 1) === 0) continue;
    const named = names.find((f) => f.type === 0 && f.bit === bit);
    parts.push(named ? `bit ${bit} (${named.name})` : `bit ${bit}`);
  }
  return parts.join(", ");
}

/** Size of one cluster in bytes. */
export function clusterSize(h: Qcow2Header): number {
  return 2 ** h.clusterBits;
}

/** Bytes per L2 entry: 8, or 16 with extended L2 entries. */
export function l2EntryBytes(h: Qcow2Header): number {
  return (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0 ? 16 : 8; // l2EntrySize() of _entries.ts
}

/** Number of L1 entries needed to map `size` bytes. */
export function l1EntriesFor(h: Qcow2Header, size: number): number {
  const perL2 = clusterSize(h) / l2EntryBytes(h);
  return Math.ceil(size / (perL2 * clusterSize(h)));
}

/**
 * Parses and validates the header in `buf` (at least the first cluster, or
 * the first 64 KiB). `fileLength` is the length of the image file; tables
 * must lie inside it. Throws a {@linkcode BlockError} (EINVAL, EFBIG or
 * ENOTSUP) naming the field and its value.
 *
 * @example
 * ```ts
 * import { parseHeader } from "@blkgraph/blkgraph/drivers/qcow2";
 * try {
 *   parseHeader(new Uint8Array(512), 512);
 * } catch (e) {
 *   console.log((e as Error).message); // Image is not in qcow2 format (magic 0x0)
 * }
 * ```
 */
export function parseHeader(buf: Uint8Array, fileLength: number): Qcow2Header {
  if (buf.length < V2_HEADER_LENGTH) {
    throw invalid(`Image is not in qcow2 format: header needs ${V2_HEADER_LENGTH} bytes, got ${buf.length}`);
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magic = view.getUint32(0);
  if (magic !== QCOW2_MAGIC) throw invalid(`Image is not in qcow2 format (magic 0x${magic.toString(16)})`);
  const version = view.getUint32(4);
  if (version !== 2 && version !== 3) throw new BlockError("ENOTSUP", `Unsupported qcow2 version ${version}`);
  const clusterBits = view.getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw invalid(`Unsupported cluster size: 2^${clusterBits} (cluster_bits must be ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS})`);
  }
  const cs = 2 ** clusterBits;
  const h: Qcow2Header = {
    version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits,
    size: 0,
    cryptMethod: 0,
    l1Size: 0,
    l1TableOffset: 0,
    refcountTableOffset: 0,
    refcountTableClusters: 0,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0,
    compatibleFeatures: 0,
    autoclearFeatures: 0,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
    extensions: [],
  };
  if (version === 3) {
    if (buf.length < 104) throw invalid(`qcow2 header too short: need 104 bytes, got ${buf.length}`);
    const len = view.getUint32(100);
    if (len < 104) throw invalid(`qcow2 header too short: header_length ${len} (minimum 104)`);
    if (len > cs) throw invalid(`qcow2 header exceeds cluster size: header_length ${len} > ${cs}`);
    if (len > buf.length) throw invalid(`qcow2 header_length ${len} exceeds the ${buf.length} bytes read`);
  }
  const high: FeatureHigh = { incompatible: 0, compatible: 0, autoclear: 0 };
  for (const f of HEADER_FIELDS) {
    if (f.since > version || f.key === "version" || f.key === "clusterBits") continue;
    if (f.key === "compressionType" && view.getUint32(100) <= 104) continue; // absent: zlib
    const { value, hi } = readField(view, f);
    if (f.key === "incompatibleFeatures" || f.key === "compatibleFeatures" || f.key === "autoclearFeatures") {
      // Every known feature bit is below 32; the high half is kept aside exactly.
      h[f.key] = view.getUint32(f.offset + 4);
      high[f.key === "incompatibleFeatures" ? "incompatible" : f.key === "compatibleFeatures" ? "compatible" : "autoclear"] = hi;
      continue;
    }
    if (f.key === "size" && isFar(view, f)) throw new BlockError("EFBIG", "Image size too large: size is at least 2^53");
    if (f.size === 8 && hi >= 2 ** 31 && OFFSET_NAMES[f.key]) {
      // QEMU's validate_table_offset: past INT64_MAX is invalid, used or not.
      throw invalid(
        `${OFFSET_NAMES[f.key]} offset invalid: ${f.name} 0x${hi.toString(16)}${
          view.getUint32(f.offset + 4).toString(16).padStart(8, "0")
        }`,
      );
    }
    if (f.key === "compressionType") {
      if (value > 1) throw new BlockError("ENOTSUP", `Unknown compression type ${value} (compression_type must be 0 (zlib) or 1 (zstd))`);
      h.compressionType = value as 0 | 1;
      continue;
    }
    (h as unknown as Record<HeaderFieldKey, number>)[f.key] = value;
  }
  if (high.incompatible || high.compatible || high.autoclear) h.featureHigh = high;
  if (fileLength < Math.min(cs, h.headerLength)) {
    throw invalid(`Image file is too short (${fileLength} bytes) for its qcow2 header`);
  }
  // Extensions: from the end of the fixed header to the backing file name
  // (or the end of the first cluster).
  const extEnd = Math.min(h.backingFileOffset > 0 ? h.backingFileOffset : cs, cs);
  let at = h.headerLength;
  while (at < extEnd) {
    if (at + 8 > extEnd) throw invalid(`Invalid header extension at offset ${at}: extension header past offset ${extEnd}`);
    if (at + 8 > buf.length) throw invalid(`Header extension at offset ${at} lies past the ${buf.length} bytes read`);
    const type = view.getUint32(at);
    const len = view.getUint32(at + 4);
    at += 8;
    if (type === EXT_END) break;
    if (len > extEnd - at) throw invalid(`Header extension 0x${type.toString(16)} too large: length ${len} at offset ${at - 8}`);
    if (at + len > buf.length) throw invalid(`Header extension at offset ${at - 8} lies past the ${buf.length} bytes read`);
    const data = buf.slice(at, at + len);
    h.extensions.push({ type, data });
    if (type === EXT_BACKING_FORMAT) {
      if (len > MAX_BACKING_NAME) throw invalid(`Backing format extension too long: length ${len}`);
      h.backingFormat = cString(data);
    } else if (type === EXT_DATA_FILE) {
      if (len > MAX_BACKING_NAME) throw invalid(`Data file name extension too long: length ${len}`);
      h.dataFile = cString(data);
    }
    at += Math.ceil(len / 8) * 8;
  }
  validateFields(h, cs, fileLength);
  if (h.backingFileOffset > 0) {
    if (h.backingFileOffset > cs) throw invalid(`Invalid backing file offset ${h.backingFileOffset} (cluster size ${cs})`);
    if (h.backingFileSize > Math.min(MAX_BACKING_NAME, cs - h.backingFileOffset)) {
      throw invalid(`Backing file name too long: backing_file_size ${h.backingFileSize}`);
    }
    if (h.backingFileOffset + h.backingFileSize > buf.length) {
      throw invalid(`Backing file name at offset ${h.backingFileOffset} lies past the ${buf.length} bytes read`);
    }
    h.backingFile = cString(buf.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize));
  }
  return h;
}

/** A name as QEMU reads it: C string semantics, so it ends at the first NUL byte. */
function cString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return decoder.decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

function validateFields(h: Qcow2Header, cs: number, fileLength: number): void {
  const unknown = (h.incompatibleFeatures & ~INCOMPAT_KNOWN) >>> 0;
  const unknownHigh = h.featureHigh?.incompatible ?? 0;
  if (unknown !== 0 || unknownHigh !== 0) {
    throw new BlockError("ENOTSUP", `Unsupported qcow2 feature(s): ${describeUnknownIncompat(unknown, unknownHigh, h.extensions)}`);
  }
  if (h.cryptMethod > 2) throw invalid(`Unsupported encryption method: ${h.cryptMethod}`);
  if (h.refcountOrder > 6) {
    throw invalid(`Reference count entry width too large; may not exceed 64 bits (refcount_order ${h.refcountOrder})`);
  }
  if (h.compressionType !== 0 && !(h.incompatibleFeatures & INCOMPAT_COMPRESSION)) {
    throw invalid(`Compression type incompatible feature bit must be set (compression_type ${h.compressionType})`);
  }
  if (h.incompatibleFeatures & INCOMPAT_EXTL2 && h.clusterBits < 14) {
    throw invalid(`Extended L2 entries are only supported with cluster sizes of at least 16384 bytes (cluster_bits ${h.clusterBits})`);
  }
  if (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW && !(h.incompatibleFeatures & INCOMPAT_DATA_FILE)) {
    throw invalid("data-file-raw requires a data file (autoclear bit 1 set without incompatible bit 2)");
  }
  if (h.size > 2 ** 53 - cs) throw new BlockError("EFBIG", `Image size too large: size ${h.size}`);
  // Refcount table.
  if (h.refcountTableClusters === 0) throw invalid("Image does not contain a reference count table (refcount_table_clusters 0)");
  if (h.refcountTableClusters * cs > MAX_REFTABLE_BYTES) {
    throw new BlockError("EFBIG", `Reference count table too large: refcount_table_clusters ${h.refcountTableClusters}`);
  }
  checkTable("reference count table", h.refcountTableOffset, h.refcountTableClusters * cs, cs, fileLength);
  // Snapshot table.
  if (h.nbSnapshots > MAX_SNAPSHOTS) throw new BlockError("EFBIG", `Too many snapshots: nb_snapshots ${h.nbSnapshots}`);
  // Alignment is checked even for an empty table, as QEMU's validate_table_offset does.
  checkTable("snapshot table", h.snapshotsOffset, h.nbSnapshots > 0 ? 1 : 0, cs, fileLength);
  // Active L1 table.
  if (h.l1Size * 8 > MAX_L1_BYTES) throw new BlockError("EFBIG", `Active L1 table too large: l1_size ${h.l1Size}`);
  const needed = l1EntriesFor(h, h.size);
  if (h.l1Size < needed) throw invalid(`L1 table is too small: l1_size ${h.l1Size}, size ${h.size} needs ${needed}`);
  checkTable("L1 table", h.l1TableOffset, h.l1Size * 8, cs, fileLength);
}

/**
 * Reads and validates the header of the qcow2 image on `file`: the first
 * cluster (the header, its extensions and the backing file name live there).
 *
 * @example
 * ```ts
 * import { createImage, open } from "@blkgraph/blkgraph";
 * import { readHeaderFrom } from "@blkgraph/blkgraph/drivers/qcow2";
 * const path = await Deno.makeTempFile({ suffix: ".qcow2" });
 * await createImage(path, "qcow2", 1 << 20);
 * await using file = await open({ driver: "file", filename: path }, { readOnly: true });
 * console.log((await readHeaderFrom(file)).size); // 1048576
 * await Deno.remove(path);
 * ```
 */
export async function readHeaderFrom(file: BlockNode, req?: RequestInfo): Promise<Qcow2Header> {
  const first = new Uint8Array(Math.min(file.length, 4096));
  await file.pread(0, first, { req });
  let buf = first;
  if (first.length >= 24) {
    const bits = new DataView(first.buffer).getUint32(20);
    if (bits >= MIN_CLUSTER_BITS && bits <= MAX_CLUSTER_BITS && Math.min(2 ** bits, file.length) > first.length) {
      buf = new Uint8Array(Math.min(2 ** bits, file.length));
      await file.pread(0, buf, { req });
    }
  }
  return parseHeader(buf, file.length);
}
