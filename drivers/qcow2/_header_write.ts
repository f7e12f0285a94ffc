/**
 * Writing the qcow2 header: the whole first cluster (fixed part from the
 * field table, extensions, backing file name) for creation and rewrites, and
 * single fields or runs of adjacent fields for in-place updates (feature
 * words, the L1 and refcount table pointers, the size), each in one write
 * so a crash leaves either the old or the new value.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import type { RequestInfo } from "../../core/types.ts";
import {
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO,
  EXT_DATA_FILE,
  EXT_END,
  EXT_FEATURE_TABLE,
  type FeatureName,
  HEADER_FIELDS,
  type HeaderExtension,
  headerField,
  type HeaderFieldKey,
  invalid,
  MAX_BACKING_NAME,
  QCOW2_MAGIC,
  type Qcow2Header,
  QEMU_FEATURE_NAMES,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
} from "./header.ts";

const FEATURE_ENTRY = 48;
const encoder = new TextEncoder();

/**
 * Encodes a feature name table extension.
 *
 * @example
 * ```ts
 * import { QEMU_FEATURE_NAMES } from "@blkgraph/blkgraph/drivers/qcow2";
 * import { serialiseFeatureTable } from "@blkgraph/blkgraph/drivers/qcow2";
 * console.log(serialiseFeatureTable(QEMU_FEATURE_NAMES).length); // 384
 * ```
 */
export function serialiseFeatureTable(features: readonly FeatureName[]): Uint8Array {
  const out = new Uint8Array(features.length * FEATURE_ENTRY);
  features.forEach((f, i) => {
    out[i * FEATURE_ENTRY] = f.type;
    out[i * FEATURE_ENTRY + 1] = f.bit;
    out.set(encoder.encode(f.name).subarray(0, FEATURE_ENTRY - 2), i * FEATURE_ENTRY + 2);
  });
  return out;
}

/** The high 32 bits stored for a feature word (unknown bits kept as read). */
function featureHigh(h: Qcow2Header, key: HeaderFieldKey): number {
  if (key === "incompatibleFeatures") return h.featureHigh?.incompatible ?? 0;
  if (key === "compatibleFeatures") return h.featureHigh?.compatible ?? 0;
  if (key === "autoclearFeatures") return h.featureHigh?.autoclear ?? 0;
  return Math.floor(h[key as "size"] / 2 ** 32);
}

function putField(view: DataView, at: number, size: number, h: Qcow2Header, key: HeaderFieldKey): void {
  const v = h[key] as number;
  if (size === 1) view.setUint8(at, v);
  else if (size === 4) view.setUint32(at, v);
  else {
    view.setUint32(at, featureHigh(h, key));
    view.setUint32(at + 4, v % 2 ** 32);
  }
}

/**
 * Encodes the run of adjacent fields `keys` (in offset order) as one buffer
 * for an in-place update; returns its offset in the header.
 *
 * @example
 * ```ts
 * import { encodeFields } from "@blkgraph/blkgraph/drivers/qcow2";
 * const h = { l1Size: 2, l1TableOffset: 0x30000 } as import("./header.ts").Qcow2Header;
 * const { offset, bytes } = encodeFields(h, ["l1Size", "l1TableOffset"]);
 * console.log(offset, bytes.length); // 36 12
 * ```
 */
export function encodeFields(h: Qcow2Header, keys: readonly HeaderFieldKey[]): { offset: number; bytes: Uint8Array } {
  const fields = keys.map(headerField);
  const offset = fields[0].offset;
  let end = offset;
  for (const f of fields) {
    if (f.offset !== end) throw new Error(`Header fields ${keys.join(", ")} are not adjacent`);
    end += f.size;
  }
  const bytes = new Uint8Array(end - offset);
  const view = new DataView(bytes.buffer);
  for (const f of fields) putField(view, f.offset - offset, f.size, h, f.key);
  return { offset, bytes };
}

/** Writes the fields `keys` of `h` into the header on `file` in one write, then flushes. */
export async function writeHeaderFields(
  file: BlockNode,
  h: Qcow2Header,
  keys: readonly HeaderFieldKey[],
  req?: RequestInfo,
): Promise<void> {
  const { offset, bytes } = encodeFields(h, keys);
  await file.pwrite(offset, bytes, { req });
  await file.flush({ req });
}

/**
 * Serialises a header, its extensions and the backing file name into one
 * cluster (`clusterSize` bytes, zero padded). The backing format and data
 * file extensions are written from `backingFormat` and `dataFile`, a feature
 * table is generated for version 3 (left out when it does not fit), and every
 * other extension in `extensions` is kept in order. `backingFileOffset` and
 * `backingFileSize` are recomputed. Throws EINVAL if it does not fit.
 *
 * @example
 * ```ts
 * import { parseHeader, type Qcow2Header } from "@blkgraph/blkgraph/drivers/qcow2";
 * import { serialiseHeader } from "@blkgraph/blkgraph/drivers/qcow2";
 * const h: Qcow2Header = {
 *   version: 3, backingFileOffset: 0, backingFileSize: 0, clusterBits: 16, size: 1 << 20,
 *   cryptMethod: 0, l1Size: 1, l1TableOffset: 0x30000, refcountTableOffset: 0x10000,
 *   refcountTableClusters: 1, nbSnapshots: 0, snapshotsOffset: 0, incompatibleFeatures: 0,
 *   compatibleFeatures: 0, autoclearFeatures: 0, refcountOrder: 4, headerLength: 112,
 *   compressionType: 0, extensions: [],
 * };
 * const bytes = serialiseHeader(h, 65536);
 * console.log(parseHeader(bytes, 0x40000).size); // 1048576
 * ```
 */
export function serialiseHeader(h: Qcow2Header, clusterSize: number): Uint8Array {
  const withTable = serialiseInto(h, clusterSize, true);
  if (withTable) return withTable;
  const without = serialiseInto(h, clusterSize, false);
  if (without) return without;
  throw invalid(`Cannot write qcow2 header: header, extensions and backing file name do not fit in one cluster (${clusterSize} bytes)`);
}

function serialiseInto(h: Qcow2Header, cs: number, featureTable: boolean): Uint8Array | undefined {
  const exts: HeaderExtension[] = [];
  if (h.backingFormat !== undefined && h.backingFile !== undefined) {
    exts.push({ type: EXT_BACKING_FORMAT, data: encoder.encode(h.backingFormat) });
  }
  // QEMU's order: backing format, then data file, then the crypto header pointer, then the feature table.
  if (h.dataFile !== undefined) exts.push({ type: EXT_DATA_FILE, data: encoder.encode(h.dataFile) });
  const crypto = h.extensions.find((e) => e.type === EXT_CRYPTO);
  if (crypto) exts.push(crypto);
  // QEMU writes no feature table for clusters of 4 KiB or less (checked against qemu-img 7.2).
  if (h.version === 3 && featureTable && cs > 4096) exts.push({ type: EXT_FEATURE_TABLE, data: serialiseFeatureTable(QEMU_FEATURE_NAMES) });
  // Then the bitmaps extension, then the rest in file order (QEMU's qcow2_update_header order).
  const bitmaps = h.extensions.find((e) => e.type === EXT_BITMAPS);
  if (bitmaps) exts.push(bitmaps);
  for (const e of h.extensions) {
    if ([EXT_DATA_FILE, EXT_BACKING_FORMAT, EXT_FEATURE_TABLE, EXT_END, EXT_CRYPTO, EXT_BITMAPS].includes(e.type)) continue;
    exts.push(e);
  }
  const headerLength = h.version === 3 ? V3_HEADER_LENGTH : V2_HEADER_LENGTH;
  let extBytes = 8; // end marker
  for (const e of exts) extBytes += 8 + Math.ceil(e.data.length / 8) * 8;
  const name = h.backingFile !== undefined ? encoder.encode(h.backingFile) : new Uint8Array(0);
  if (name.length > MAX_BACKING_NAME) throw invalid(`Backing file name too long: ${name.length} bytes (maximum ${MAX_BACKING_NAME})`);
  const nameOffset = headerLength + extBytes;
  if (nameOffset + name.length > cs) return undefined;
  const out = new Uint8Array(cs);
  const view = new DataView(out.buffer);
  view.setUint32(0, QCOW2_MAGIC);
  const fixed: Qcow2Header = {
    ...h,
    backingFileOffset: h.backingFile !== undefined ? nameOffset : 0,
    backingFileSize: name.length,
    headerLength,
  };
  for (const f of HEADER_FIELDS) if (f.since <= h.version) putField(view, f.offset, f.size, fixed, f.key);
  let at = headerLength;
  for (const e of exts) {
    view.setUint32(at, e.type);
    view.setUint32(at + 4, e.data.length);
    out.set(e.data, at + 8);
    at += 8 + Math.ceil(e.data.length / 8) * 8;
  }
  // End marker: 8 zero bytes, already there.
  out.set(name, nameOffset);
  return out;
}
