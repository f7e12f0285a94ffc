/**
 * qcow2 image creation, laid out byte for byte as `qemu-img create -f qcow2`
 * lays it out (see `_create_layout.ts`): header in cluster 0, refcount
 * table in cluster 1, first refcount block in cluster 2, the L1 table from
 * cluster 3 (sized for the virtual size), then the preallocated L2 tables
 * and data. The header carries QEMU's feature name table (version 3,
 * clusters over 4 KiB) and the backing format and data file extensions.
 *
 * `preallocation=falloc|full` is passed to the file node's truncate, which
 * allocates (or writes zeros over) the data clusters. Checked byte for byte
 * against qemu-img 7.2 for every option, including refcount table growth
 * with small clusters. Encryption (`encrypt.format=luks|aes`): the LUKS
 * header goes into clusters allocated after everything else, as QEMU's
 * qcow2_set_up_encryption runs after the truncate to the virtual size.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import { open } from "../../core/open.ts";
import { optBool, parseSize } from "../../core/options.ts";
import type { CreateContext } from "../../core/node.ts";
import type { CheckCreateContext } from "../../core/types.ts";
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MIN_CLUSTER_BITS,
  type Qcow2Header,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
} from "./header.ts";
import { encodeL2, planLayout } from "./_create_layout.ts";
import { serialiseHeader } from "./_header_write.ts";
import { l2EntrySize } from "./_entries.ts";
import { CRYPT_AES, CRYPT_LUKS, cryptoExtension, parseEncryptCreate, type Qcow2EncryptCreate, writeEncryptionHeader } from "./_crypto.ts";
import { ENCRYPT_CREATE_NAMES, PLAIN_CREATE_NAMES } from "./_image_options.ts";

/** The creation options besides encryption's; `version` is blkgraph's alias of `compat`. */
const KNOWN: readonly string[] = [...PLAIN_CREATE_NAMES, "version"];
const PREALLOC = ["off", "metadata", "falloc", "full"] as const;
/** A preallocation mode. */
export type Qcow2Prealloc = typeof PREALLOC[number];

/** The validated creation options. */
export interface Qcow2CreateOptions {
  /** Virtual size in bytes. */
  size: number;
  /** Cluster size in bytes. */
  clusterSize: number;
  /** Format version. */
  version: 2 | 3;
  /** Refcount entry width in bits. */
  refcountBits: number;
  /** Lazy refcounts (compatible feature bit 0). */
  lazyRefcounts: boolean;
  /** Preallocation mode. */
  preallocation: Qcow2Prealloc;
  /** Backing file name, stored as given. */
  backingFile?: string;
  /** Backing file format. */
  backingFormat?: string;
  /** 128-bit L2 entries with subclusters. */
  extendedL2: boolean;
  /** zlib or zstd. */
  compressionType: "zlib" | "zstd";
  /** External data file name, stored as given. */
  dataFile?: string;
  /** The data file is a valid raw image. */
  dataFileRaw: boolean;
  /** Encryption (`encrypt.format=luks|aes`), when asked for. */
  encrypt?: Qcow2EncryptCreate;
}

/** Refuses the options: `message` names the values, `qemu` is QEMU's shorter text for the drop-in qemu-img (default: the message). */
function fail(message: string, qemu?: string): never {
  throw new BlockError("EINVAL", message, { qemuMessage: qemu });
}

function optText(options: Record<string, unknown>, key: string): string | undefined {
  const v = options[key];
  return v === undefined || v === null || v === "" ? undefined : String(v);
}

/**
 * Validates qcow2 creation options the way QEMU's `qcow2_co_create` does,
 * with its error texts plus the offending option and value.
 *
 * @example
 * ```ts
 * import { parseCreateOptions } from "./create.ts";
 * const o = parseCreateOptions(1 << 20, { cluster_size: "4k", compat: "0.10" });
 * console.log(o.clusterSize, o.version); // 4096 2
 * ```
 */
export function parseCreateOptions(size: number, input: Record<string, string | number | boolean>): Qcow2CreateOptions {
  const options: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(input)) {
    if (ENCRYPT_CREATE_NAMES.includes(k)) {
      options[k] = v;
      continue;
    }
    const key = k.replaceAll("-", "_");
    if (!KNOWN.includes(key)) fail(`Unknown option '${k}' for format 'qcow2' (known options: ${KNOWN.join(", ")})`);
    options[key] = v;
  }
  // `-o size=...` counts when no size was given otherwise.
  if (size === 0 && options.size !== undefined) {
    const given = parseSize(options.size);
    if (given === undefined) fail(`Invalid image size '${String(options.size)}' (option 'size')`);
    size = given;
  }
  if (!Number.isSafeInteger(size) || size < 0) fail(`Invalid image size ${size}`);
  // QEMU's qcow2_co_create_opts rounds the size up to whole sectors.
  size = Math.ceil(size / 512) * 512;

  const compat = optText(options, "compat") ?? optText(options, "version") ?? "1.1";
  let version: 2 | 3;
  if (compat === "0.10" || compat === "v2") version = 2;
  else if (compat === "1.1" || compat === "v3") version = 3;
  else {fail(
      `Invalid compatibility level: '${compat}' (option 'compat' must be 0.10, v2, 1.1 or v3)`,
      `Parameter 'version' does not accept value '${compat}'`,
    );}

  const extendedL2 = optBool(options, "extended_l2", "qcow2") ?? false;
  if (extendedL2 && version < 3) {
    fail("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)");
  }
  const csRaw = options.cluster_size;
  const clusterSize = csRaw === undefined ? 65536 : parseSize(csRaw);
  if (
    clusterSize === undefined || clusterSize < 2 ** MIN_CLUSTER_BITS || clusterSize > 2 ** MAX_CLUSTER_BITS ||
    (clusterSize & (clusterSize - 1)) !== 0
  ) {
    fail(
      `Cluster size must be a power of two between 512 and 2048k (cluster_size ${String(csRaw)})`,
      "Cluster size must be a power of two between 512 and 2048k",
    );
  }
  if (extendedL2 && clusterSize < 16384) {
    fail(
      `Extended L2 entries are only supported with cluster sizes of at least 16384 bytes (cluster_size ${clusterSize})`,
      "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
    );
  }

  const preRaw = optText(options, "preallocation") ?? "off";
  if (!(PREALLOC as readonly string[]).includes(preRaw)) {
    fail(
      `Invalid parameter '${preRaw}' for option 'preallocation' (expected off, metadata, falloc or full)`,
      `Parameter 'preallocation' does not accept value '${preRaw}'`,
    );
  }
  let preallocation = preRaw as Qcow2Prealloc;
  const backingFile = optText(options, "backing_file");
  const backingFormat = optText(options, "backing_fmt");
  if (backingFile !== undefined && preallocation !== "off" && !extendedL2) {
    fail(
      `Backing file and preallocation can only be used at the same time if extended_l2 is on (backing_file '${backingFile}', preallocation ${preallocation})`,
    );
  }
  if (backingFormat !== undefined && backingFile === undefined) {
    fail(
      `Backing format cannot be used without backing file (backing_fmt '${backingFormat}')`,
      "Backing format cannot be used without backing file",
    );
  }
  const lazyRefcounts = optBool(options, "lazy_refcounts", "qcow2") ?? false;
  if (lazyRefcounts && version < 3) {
    fail("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)");
  }
  const rbRaw = options.refcount_bits;
  const refcountBits = rbRaw === undefined ? 16 : Number(rbRaw);
  if (!Number.isInteger(refcountBits) || refcountBits < 1 || refcountBits > 64 || (refcountBits & (refcountBits - 1)) !== 0) {
    fail(
      `Refcount width must be a power of two and may not exceed 64 bits (refcount_bits ${String(rbRaw)})`,
      "Refcount width must be a power of two and may not exceed 64 bits",
    );
  }
  if (version < 3 && refcountBits !== 16) {
    fail(
      `Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater) (refcount_bits ${refcountBits})`,
      "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)",
    );
  }
  const dataFile = optText(options, "data_file");
  const dataFileRaw = optBool(options, "data_file_raw", "qcow2") ?? false;
  if (dataFileRaw && dataFile === undefined) fail("data-file-raw requires data-file");
  if (dataFileRaw && backingFile !== undefined) {
    fail(`Backing file and data-file-raw cannot be used at the same time (backing_file '${backingFile}')`);
  }
  if (dataFileRaw && preallocation === "off") preallocation = "metadata";
  if (dataFile !== undefined && version < 3) {
    fail("External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)");
  }
  const ct = optText(options, "compression_type") ?? "zlib";
  if (ct !== "zlib" && ct !== "zstd") {
    fail(
      `Invalid parameter '${ct}' for option 'compression_type' (expected zlib or zstd)`,
      `Parameter 'compression-type' does not accept value '${ct}'`,
    );
  }
  if (ct !== "zlib" && version < 3) {
    fail("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)");
  }
  // qcow2_grow_l1_table refuses an active L1 table over 32 MiB (EFBIG).
  const l2Entries = clusterSize! / l2EntrySize(extendedL2);
  const l1Entries = Math.ceil(Math.ceil(size / clusterSize!) / l2Entries);
  if (l1Entries * 8 > MAX_L1_BYTES) {
    throw new BlockError(
      "EFBIG",
      `The image size is too large for file format 'qcow2' (try using a larger cluster size): size ${size} needs ${l1Entries} L1 entries, at most ${
        MAX_L1_BYTES / 8
      } with cluster_size ${clusterSize}`,
    );
  }
  return {
    size,
    clusterSize: clusterSize!,
    version: version!,
    refcountBits,
    lazyRefcounts,
    preallocation,
    backingFile,
    backingFormat,
    extendedL2,
    compressionType: ct,
    dataFile,
    dataFileRaw,
    encrypt: parseEncryptCreate(options),
  };
}

async function backingSize(o: Qcow2CreateOptions, filename: string | undefined): Promise<number> {
  const name = o.backingFile!;
  const path = name.startsWith("/") || !filename ? name : `${dirOf(filename)}/${name}`;
  let node: BlockNode | undefined;
  try {
    // The backing file's own chain is not needed for its size (qemu-img's BDRV_O_NO_BACKING).
    const spec = {
      driver: o.backingFormat,
      file: { driver: "file", filename: path },
      ...(o.backingFormat === "qcow2" ? { backing: null } : {}),
    };
    node = await open(spec, { readOnly: true });
    return node.length;
  } catch (e) {
    throw new BlockError("EINVAL", `Could not open backing file '${name}' to get its size: ${(e as Error).message}`, { cause: e });
  } finally {
    await node?.close();
  }
}

function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

/**
 * Writes a new, empty qcow2 image onto `ctx.file` (QEMU's options:
 * `cluster_size`, `compat`, `refcount_bits`, `lazy_refcounts`,
 * `preallocation`, `backing_file`, `backing_fmt`, `extended_l2`,
 * `compression_type`, `data_file`, `data_file_raw`).
 *
 * @example
 * ```ts
 * import { createImage } from "@blkgraph/blkgraph";
 * await createImage("/tmp/disk.qcow2", "qcow2", 1 << 30, { options: { cluster_size: "64k" } });
 * ```
 */
export async function createQcow2(ctx: CreateContext): Promise<void> {
  const o = checkQcow2Create(ctx);
  if (o.size === 0 && o.backingFile !== undefined) o.size = await backingSize(o, ctx.filename);
  const file = ctx.file;
  const cs = o.clusterSize;
  const layout = planLayout({
    size: o.size,
    clusterSize: cs,
    refcountBits: o.refcountBits,
    extendedL2: o.extendedL2,
    preallocation: o.preallocation,
    dataFile: o.dataFile !== undefined,
    cryptoBytes: o.encrypt?.headerBytes ?? 0,
  });
  const h: Qcow2Header = {
    version: o.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: Math.log2(cs),
    size: o.size,
    cryptMethod: o.encrypt ? (o.encrypt.format === "luks" ? CRYPT_LUKS : CRYPT_AES) : 0,
    l1Size: layout.l1Size,
    l1TableOffset: layout.l1Offset,
    refcountTableOffset: layout.reftableOffset,
    refcountTableClusters: layout.reftableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: (o.extendedL2 ? INCOMPAT_EXTL2 : 0) | (o.compressionType === "zstd" ? INCOMPAT_COMPRESSION : 0) |
      (o.dataFile !== undefined ? INCOMPAT_DATA_FILE : 0),
    compatibleFeatures: o.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0,
    autoclearFeatures: o.dataFileRaw ? AUTOCLEAR_DATA_FILE_RAW : 0,
    refcountOrder: Math.log2(o.refcountBits),
    headerLength: o.version === 3 ? V3_HEADER_LENGTH : V2_HEADER_LENGTH,
    compressionType: o.compressionType === "zstd" ? 1 : 0,
    extensions: [],
    backingFile: o.backingFile,
    backingFormat: o.backingFormat,
    dataFile: o.dataFile,
  };
  if (layout.crypto) h.extensions.push(cryptoExtension(layout.crypto.offset, o.encrypt!.headerBytes));
  const header = serialiseHeader(h, cs);

  await file.pwrite(0, header);
  // Grow the file over the data clusters first, so the file node preallocates
  // them (falloc, full); metadata preallocation only needs them inside the file.
  const data = layout.data;
  if (data && data.offset + data.length > file.length) {
    await file.truncate(data.offset + data.length, { prealloc: o.preallocation === "metadata" ? "off" : o.preallocation, exact: false });
  }
  for (const [offset, table] of layout.tables) await file.pwrite(offset, table);
  const buf = new Uint8Array(cs);
  for (const plan of layout.blocks) {
    layout.encodeBlock(plan, buf);
    await file.pwrite(plan.offset, buf);
  }
  if (layout.l1Size) await file.pwrite(layout.l1Offset, layout.l1);
  const l2 = buf;
  for (const plan of layout.l2) {
    encodeL2(plan, l2, cs, o.extendedL2);
    await file.pwrite(plan.offset, l2);
  }
  if (layout.crypto) {
    // QEMU zero-fills the header clusters, then writes the LUKS header and key slot 0 into them.
    const end = layout.crypto.offset + layout.crypto.clusters * cs;
    if (end > file.length) await file.truncate(end, { exact: false });
    await writeEncryptionHeader(file, layout.crypto.offset, o.encrypt!);
  }
  if (o.dataFile !== undefined) await createDataFile(o);
}

/**
 * Validates a qcow2 creation (options, size, backing format) without
 * writing anything: what `createQcow2` checks first.
 *
 * @example
 * ```ts
 * import { checkQcow2Create } from "./create.ts";
 * try {
 *   checkQcow2Create({ size: 1 << 20, options: { cluster_size: "3000" } });
 * } catch (e) {
 *   console.log((e as Error).message); // Cluster size must be a power of two between 512 and 2048k (cluster_size 3000)
 * }
 * ```
 */
export function checkQcow2Create(ctx: CheckCreateContext): Qcow2CreateOptions {
  const o = parseCreateOptions(ctx.size, ctx.options);
  if (o.backingFile !== undefined && o.backingFormat === undefined) {
    fail(`Backing file specified without backing format (backing_file '${o.backingFile}'): give backing_fmt`);
  }
  return o;
}

async function createDataFile(o: Qcow2CreateOptions): Promise<void> {
  // Like QEMU, a relative data file name is relative to the working
  // directory (not to the image, unlike a backing file name).
  const node = await open({ driver: "file", filename: o.dataFile!, create: true });
  try {
    // Like QEMU's file creation: emptied first, then grown with the preallocation asked for.
    if (node.length > 0) await node.truncate(0);
    await node.truncate(o.size, { prealloc: o.preallocation === "metadata" ? "off" : o.preallocation });
    await node.flush();
  } finally {
    await node.close();
  }
}
