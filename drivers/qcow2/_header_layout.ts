/**
 * The qcow2 header layout (qemu/qemu `docs/interop/qcow2.txt`): the magic,
 * the feature bits, the extension types and the limits QEMU enforces, the
 * decoded header type, and the table of the fixed part's fields (name,
 * offset, width). `header.ts` parses and validates with it and re-exports
 * all of it; `_header_write.ts` serialises with it.
 *
 * @module
 */

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
