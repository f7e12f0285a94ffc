/**
 * The qcow2 header: parsing with validation of every field (the checks QEMU
 * makes when it opens an image, see its iotest 080), and serialisation of the
 * header, its extensions and the backing file name into the first cluster.
 *
 * Layout (qemu/qemu `docs/interop/qcow2.txt`): a fixed part of 72 bytes
 * (version 2) or `header_length` bytes (version 3), then header extensions
 * (type, length, data padded to 8 bytes) up to an end marker, then the backing
 * file name at `backing_file_offset`. The constants, the decoded header
 * type and the field table live in `_header_layout.ts` and are re-exported
 * here; serialisation is `_header_write.ts`.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import type { RequestInfo } from "../../core/types.ts";
import {
  AUTOCLEAR_DATA_FILE_RAW,
  EXT_BACKING_FORMAT,
  EXT_DATA_FILE,
  EXT_END,
  EXT_FEATURE_TABLE,
  FAR_OFFSET,
  type FeatureHigh,
  type FeatureName,
  HEADER_FIELDS,
  type HeaderExtension,
  type HeaderField,
  type HeaderFieldKey,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  INCOMPAT_KNOWN,
  l1EntriesFor,
  MAX_BACKING_NAME,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MAX_REFTABLE_BYTES,
  MAX_SNAPSHOTS,
  MIN_CLUSTER_BITS,
  QCOW2_MAGIC,
  type Qcow2Header,
  V2_HEADER_LENGTH,
} from "./_header_layout.ts";

export * from "./_header_layout.ts";

const FEATURE_ENTRY = 48;
const decoder = new TextDecoder();

/**
 * An EINVAL naming what is wrong with a header: `message`, in QEMU's words
 * where it has some, then `detail` (the field and value) after a colon;
 * the drop-ins print QEMU's words alone (`qemuMessage`).
 */
export function invalid(message: string, detail?: string): BlockError {
  return detail === undefined
    ? new BlockError("EINVAL", message)
    : new BlockError("EINVAL", `${message}: ${detail}`, { qemuMessage: message });
}

/** An EFBIG as {@linkcode invalid} words it. */
function tooLarge(message: string, detail: string): BlockError {
  return new BlockError("EFBIG", `${message}: ${detail}`, { qemuMessage: message });
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
/**
 * A virtual size past 2^53: QEMU's own limit in its words where its
 * qcow2_do_open refuses it (the L1 index of the VM state past INT_MAX:
 * "Image is too big"), else blkgraph's (QEMU opens such an image; blkgraph
 * cannot address it).
 */
function tooBig(view: DataView, f: HeaderField, cs: number, version: number): BlockError {
  const size = view.getBigUint64(f.offset);
  const clusterBits = BigInt(Math.log2(cs));
  // Extended L2 entries (incompatible bit 4, version 3) take 16 bytes: one L2 bit fewer.
  const extL2 = version >= 3 && (view.getUint32(76) & 16) !== 0;
  const l2Bits = clusterBits - 3n - (extL2 ? 1n : 0n);
  const span = 1n << (clusterBits + l2Bits);
  if ((size + span - 1n) / span > 0x7fffffffn) {
    return new BlockError("EFBIG", `Image is too big: size ${size} needs more than 2^31 - 1 L1 entries with cluster_size ${cs}`, {
      qemuMessage: "Image is too big",
    });
  }
  return new BlockError("EFBIG", `Image size too large: size is at least 2^53 (size ${size})`);
}

function isFar(view: DataView, f: HeaderField): boolean {
  return f.size === 8 && view.getUint32(f.offset) >= 2 ** 21;
}

/**
 * QEMU's qcow2_validate_table for a table of `bytes` at `offset` (`raw`, the
 * field's exact value): misaligned, or ending past INT64_MAX, is "<what>
 * offset invalid", in QEMU's words. A table past the end of the file is
 * refused too where `fileLength` is given (QEMU reads zeros there).
 */
function checkTable(
  what: string,
  offset: number,
  raw: bigint,
  bytes: number,
  clusterSize: number,
  fileLength?: number,
): void {
  if (offset % clusterSize !== 0 || raw + BigInt(bytes) > 2n ** 63n - 1n) {
    throw invalid(`${what} offset invalid`, `offset 0x${raw.toString(16)} (${bytes} bytes; cluster size ${clusterSize})`);
  }
  if (fileLength !== undefined && bytes > 0 && offset + bytes > fileLength) {
    throw invalid(
      `Invalid ${
        what === "Active L1 table" ? "L1 table" : what.toLowerCase()
      } offset ${offset}: the table (${bytes} bytes) extends past the end of the file (${fileLength} bytes)`,
    );
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
  // Like QEMU, a short last entry counts (the rest reads as zeros) and an entry without a name ends the table.
  for (let at = 0; at + 2 < data.length; at += FEATURE_ENTRY) {
    const stop = Math.min(data.length, at + FEATURE_ENTRY);
    let end = at + 2;
    while (end < stop && data[end] !== 0) end++;
    if (end === at + 2) break;
    out.push({ type: data[at], bit: data[at + 1], name: decoder.decode(data.subarray(at + 2, end)) });
  }
  return out;
}

/**
 * Describes unknown incompatible bits (low and high 32-bit halves) as QEMU's
 * report_unsupported_feature does: the names the image's feature table
 * gives them (in table order), then "Unknown incompatible feature: <hex>"
 * for the bits it does not name.
 */
function describeUnknownIncompat(lo: number, hi: number, extensions: HeaderExtension[]): string {
  const table = extensions.find((e) => e.type === EXT_FEATURE_TABLE);
  const names = table ? parseFeatureTable(table.data) : [];
  let mask = (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
  const parts: string[] = [];
  for (const f of names) {
    if (f.type !== 0 || f.bit > 63 || !(mask & (1n << BigInt(f.bit)))) continue;
    parts.push(f.name.slice(0, 46));
    mask &= ~(1n << BigInt(f.bit));
  }
  if (mask) parts.push(`Unknown incompatible feature: ${mask.toString(16)}`);
  return parts.join(", ");
}

/**
 * Parses and validates the header in `buf` (at least the first cluster, or
 * the first 64 KiB). `fileLength` is the length of the image file; tables
 * must lie inside it. Throws a {@linkcode BlockError} (EINVAL, EFBIG or
 * ENOTSUP) naming the field and its value. With `check`, the snapshot
 * table's count and offset are left to the check (QEMU's check-mode open).
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
export function parseHeader(buf: Uint8Array, fileLength: number, opts: HeaderReadOptions = {}): Qcow2Header {
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
    if (len > cs) throw invalid("qcow2 header exceeds cluster size", `header_length ${len} > ${cs}`);
    if (len > buf.length) throw invalid(`qcow2 header_length ${len} exceeds the ${buf.length} bytes read`);
  }
  const high: FeatureHigh = { incompatible: 0, compatible: 0, autoclear: 0 };
  const raw = new Map<HeaderFieldKey, bigint>();
  for (const f of HEADER_FIELDS) {
    if (f.since > version || f.key === "version" || f.key === "clusterBits") continue;
    if (f.key === "compressionType" && view.getUint32(100) <= 104) continue; // absent: zlib
    const { value, hi } = readField(view, f);
    if (f.size === 8) raw.set(f.key, view.getBigUint64(f.offset));
    if (f.key === "incompatibleFeatures" || f.key === "compatibleFeatures" || f.key === "autoclearFeatures") {
      // Every known feature bit is below 32; the high half is kept aside exactly.
      h[f.key] = view.getUint32(f.offset + 4);
      high[f.key === "incompatibleFeatures" ? "incompatible" : f.key === "compatibleFeatures" ? "compatible" : "autoclear"] = hi;
      continue;
    }
    if (f.key === "size" && isFar(view, f)) throw tooBig(view, f, cs, version);
    if (f.size === 8 && hi >= 2 ** 31 && OFFSET_NAMES[f.key]) {
      // QEMU's validate_table_offset: past INT64_MAX is invalid, used or not.
      throw invalid(
        `${OFFSET_NAMES[f.key]} offset invalid`,
        `${f.name} 0x${hi.toString(16)}${view.getUint32(f.offset + 4).toString(16).padStart(8, "0")}`,
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
  // QEMU checks the backing file offset before it reads the extensions.
  if (h.backingFileOffset > cs) {
    throw invalid("Invalid backing file offset", `backing_file_offset ${h.backingFileOffset} (cluster size ${cs})`);
  }
  // Extensions: from the end of the fixed header to the backing file name
  // (or the end of the first cluster).
  const extEnd = Math.min(h.backingFileOffset > 0 ? h.backingFileOffset : cs, cs);
  let at = h.headerLength;
  while (at < extEnd) {
    if (at + 8 > extEnd) throw invalid("Header extension too large", `extension header at offset ${at} past offset ${extEnd}`);
    if (at + 8 > buf.length) throw invalid(`Header extension at offset ${at} lies past the ${buf.length} bytes read`);
    const type = view.getUint32(at);
    const len = view.getUint32(at + 4);
    at += 8;
    if (type === EXT_END) break;
    if (len > extEnd - at) {
      throw invalid("Header extension too large", `extension 0x${type.toString(16)}: length ${len} at offset ${at - 8}`);
    }
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
  validateFields(h, cs, fileLength, raw, opts.check ?? false);
  if (h.backingFileOffset > 0) {
    if (h.backingFileSize > Math.min(MAX_BACKING_NAME, cs - h.backingFileOffset)) {
      throw invalid("Backing file name too long", `backing_file_size ${h.backingFileSize}`);
    }
    if (h.backingFileOffset + h.backingFileSize > buf.length) {
      throw invalid(`Backing file name at offset ${h.backingFileOffset} lies past the ${buf.length} bytes read`);
    }
    h.backingFile = cString(buf.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize));
  }
  return h;
}

/** How a header is read. */
export interface HeaderReadOptions {
  /** For a check: the snapshot table's count and offset are not validated here (the check does, and may repair them). */
  check?: boolean;
}

/** A name as QEMU reads it: C string semantics, so it ends at the first NUL byte. */
function cString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return decoder.decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

function validateFields(h: Qcow2Header, cs: number, fileLength: number, raw: Map<HeaderFieldKey, bigint>, check: boolean): void {
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
  // QEMU's validate_compression_type: zlib with the bit set is as inconsistent.
  if (h.compressionType === 0 && h.incompatibleFeatures & INCOMPAT_COMPRESSION) {
    throw invalid("Compression type incompatible feature bit must not be set (compression_type 0, zlib)");
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
  // QEMU's words (qcow2_validate_table) first, then the field and value.
  if (h.refcountTableClusters * cs > MAX_REFTABLE_BYTES) {
    throw tooLarge("Reference count table too large", `refcount_table_clusters ${h.refcountTableClusters}`);
  }
  const reftableBytes = h.refcountTableClusters * cs;
  checkTable("Reference count table", h.refcountTableOffset, raw.get("refcountTableOffset")!, reftableBytes, cs, fileLength);
  // Snapshot table (a check validates it itself, and may repair it: qcow2_check_read_snapshot_table).
  if (!check) {
    if (h.nbSnapshots > MAX_SNAPSHOTS) throw tooLarge("Snapshot table too large", `nb_snapshots ${h.nbSnapshots}`);
    // Alignment is checked even for an empty table, as QEMU's validate_table_offset does. A table
    // past the end of the file is no error here: QEMU opens the image (the table reads as zeros).
    checkTable("Snapshot table", h.snapshotsOffset, raw.get("snapshotsOffset")!, h.nbSnapshots * 40, cs);
  }
  // Active L1 table.
  if (h.l1Size * 8 > MAX_L1_BYTES) throw tooLarge("Active L1 table too large", `l1_size ${h.l1Size}`);
  const needed = l1EntriesFor(h, h.size);
  if (h.l1Size < needed) throw invalid("L1 table is too small", `l1_size ${h.l1Size}, size ${h.size} needs ${needed}`);
  checkTable("Active L1 table", h.l1TableOffset, raw.get("l1TableOffset")!, h.l1Size * 8, cs, fileLength);
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
export async function readHeaderFrom(file: BlockNode, req?: RequestInfo, opts: HeaderReadOptions = {}): Promise<Qcow2Header> {
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
  return parseHeader(buf, file.length, opts);
}
