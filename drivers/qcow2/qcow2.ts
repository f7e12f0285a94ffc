/**
 * The qcow2 format driver: opening (header validation, backing and data file
 * children, cache sizing, dirty-image repair, autoclear bits) and the
 * request callbacks. Reads and overwrites of allocated clusters whose L2
 * table is cached run without the metadata lock and without allocations of
 * their own; everything that changes metadata runs under the lock.
 *
 * Options (QEMU names): `l2-cache-size`, `refcount-cache-size`,
 * `cache-size`, `lazy-refcounts`, `metadata-mode` (`ordered` default, or
 * `metadata-sync`), `overlap-check` (`none`, `constant`, `cached` default,
 * `all`, or an object with `template` and per-structure booleans: see
 * `_overlap.ts`), `x-wrong-order` (tests only), `encrypt.key-secret` and
 * `encrypt.format` (encrypted images, see `_crypto.ts`); children `file`,
 * `backing` (null disables it), `data-file`.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import { checkKnownOptions, optBool, optEnum, optSize } from "../../core/options.ts";
import { registerDriver } from "../../core/registry.ts";
import type {
  AmendOptions,
  BlockLimits,
  CheckOptions,
  CheckResult,
  FormatOptions,
  MetadataExtent,
  RequestOptions,
  SnapshotInfo,
  TruncateOptions,
  WriteOptions,
  WriteZeroesOptions,
} from "../../core/types.ts";
import type { BlockDriver, BlockStatus, DriverInstance, OpenContext } from "../../core/node.ts";
import { repairImage } from "./check.ts";
import { createQcow2 } from "./create.ts";
import { measureQcow2 } from "./measure.ts";
import { COMPRESSION_NAMES } from "./compress.ts";
import { writeCompressedLocked } from "./_write_compressed.ts";
import {
  AUTOCLEAR_DATA_FILE_RAW,
  clusterSize,
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  l2EntryBytes,
  QCOW2_MAGIC,
  type Qcow2Header,
  readHeaderFrom,
} from "./header.ts";
import { K_NORMAL, mapSync, newMapping } from "./_l2.ts";
import { blockStatus, dataIo, readFast, readGuest } from "./_read.ts";
import { resize } from "./_resize.ts";
import { type MetadataMode, Qcow2State, type WrongOrder } from "./_state.ts";
import { writeLocked, zeroOrDiscard } from "./_write.ts";
import { amendQcow2, changeBackingFileQcow2, checkQcow2Node } from "./_image_ops.ts";
import { listSnapshots } from "./_snapshot.ts";
import { exitWriteback } from "./_exit.ts";
import { markClean, relieveCaches, writeback } from "./_writeback.ts";
import { writeHeaderFields } from "./_header_write.ts";
import { entryOffset } from "./_entries.ts";
import { metadataExtents } from "./_metadata_map.ts";
import { openBacking, openDataFile } from "./_children.ts";
import { findOverlapSync, initOverlapChecks, OVERLAP_OPTIONS, parseOverlapOptions, preWriteOverlapCheck } from "./_overlap.ts";
import { CRYPT_NONE, ENCRYPT_OPTIONS, Qcow2Crypto } from "./_crypto.ts";

const OPTIONS = [
  "l2-cache-size",
  "refcount-cache-size",
  "cache-size",
  "lazy-refcounts",
  "metadata-mode",
  "x-wrong-order",
  ...OVERLAP_OPTIONS,
  ...ENCRYPT_OPTIONS,
];

/** The driver instance of an open qcow2 node. */
export class Qcow2Instance implements DriverInstance {
  /**
   * Write-zeroes and discard work on whole clusters (the core splits off
   * partial ones); encrypted images take whole 512-byte sectors (QEMU's
   * request alignment for them).
   */
  readonly limits: Partial<BlockLimits>;
  #st: Qcow2State;
  #m = newMapping();
  #closed = false;

  /** Wraps an opened image state. */
  constructor(st: Qcow2State) {
    this.#st = st;
    this.limits = { optWriteZero: st.cs, optDiscard: st.cs, ...(st.crypto ? { requestAlignment: 512 } : {}) };
  }

  /** The image header as currently in force (size, L1 and refcount table updated). */
  get header(): Readonly<Qcow2Header> {
    return this.#st.header;
  }

  /** Cluster size in bytes. */
  get clusterSize(): number {
    return this.#st.cs;
  }

  /** The metadata mode in force (`lazy` when lazy refcounts are on). */
  get metadataMode(): MetadataMode {
    return this.#st.mode;
  }

  /** Current virtual size. */
  getLength(): number {
    return this.#st.size;
  }

  /**
   * Reads guest data; a cached hit is one synchronous call on the data file,
   * its promise returned as it is. After corruption was found read-write,
   * reads fail too with ENOMEDIUM (QEMU detaches the driver: "No medium
   * found"): the tables in memory may be what was refused; the image reads
   * again when opened read-only.
   */
  pread(offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
    if (this.#st.corrupt) {
      return Promise.reject(
        new BlockError(
          "ENOMEDIUM",
          `Cannot read node '${this.#st.node.name}': corruption was found and the image is marked corrupt; open it read-only to read it, or repair it with 'blkgraph check -r all'`,
          { node: this.#st.node.name, offset, length: buf.length },
        ),
      );
    }
    try {
      return readFast(this.#st, offset, buf, opts.req) ?? this.#preadSlow(offset, buf, opts);
    } catch (e) {
      return this.#corrupted(e);
    }
  }

  async #corrupted(e: unknown): Promise<never> {
    await this.#st.signalCorruption(e);
    throw e;
  }

  async #preadSlow(offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
    try {
      await readGuest(this.#st, offset, buf, opts.req);
    } catch (e) {
      await this.#st.signalCorruption(e);
      throw e;
    }
  }

  /**
   * Writes guest data: an overwrite of one allocated extent with the COPIED
   * flag whose L2 table is cached goes to the data file in place without the
   * lock (synchronously, its promise returned as it is, when unencrypted);
   * everything else runs under the lock.
   */
  pwrite(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const st = this.#st;
    const m = this.#m;
    let hit: boolean;
    try {
      st.refuseIfCorrupt();
    } catch (e) {
      return Promise.reject(e);
    }
    try {
      hit = mapSync(st, offset, data.length, m) && m.kind === K_NORMAL && m.copied && m.bytes === data.length;
    } catch (e) {
      return this.#corrupted(e);
    }
    // The lock-free write is synchronous up to the data file: only when the overlap check can answer now, and clear.
    if (
      hit && !st.crypto && Number.isSafeInteger(m.host + data.length) &&
      (st.externalData || findOverlapSync(st, 0, m.host, data.length) === 0)
    ) {
      st.noteDataWrite(m.host, data.length);
      return dataIo(st, m.host, data, opts.req, true);
    }
    return this.#pwriteSlow(offset, data, opts, hit);
  }

  async #pwriteSlow(offset: number, data: Uint8Array, opts: WriteOptions, inPlace: boolean): Promise<void> {
    const st = this.#st;
    const m = this.#m;
    if (inPlace) {
      const host = m.host;
      st.ioInFlight++;
      try {
        const p = st.event("write_aio", opts.req);
        if (p) await p;
        await preWriteOverlapCheck(st, 0, host, data.length, true);
        st.noteDataWrite(host, data.length);
        await st.data.pwrite(host, st.crypto ? await st.crypto.encrypted(data, host, offset) : data, { req: opts.req });
      } finally {
        st.ioInFlight--;
      }
      return;
    }
    await st.change(async () => {
      await writeLocked(st, offset, data, opts.req);
      await relieveCaches(st, opts.req);
    });
  }

  /**
   * Writes one whole cluster compressed (the last cluster may be short when
   * the image ends there); falls back to a normal write when compression
   * does not save space. Used by `convert -c`.
   */
  pwriteCompressed(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const st = this.#st;
    st.refuseIfCorrupt();
    if (st.crypto) return Promise.reject(new BlockError("ENOTSUP", "Compression can't be used with encryption"));
    return st.change(async () => {
      await writeCompressedLocked(st, offset, data, opts.req);
      await relieveCaches(st, opts.req);
    });
  }

  /**
   * Write-zeroes of whole clusters (the core splits off partial ones, as it
   * does for every driver with `optWriteZero`): the zero flag (v3). A v2
   * image has no zero clusters: ENOTSUP, and the core writes zero buffers.
   */
  async pwriteZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    const st = this.#st;
    if (st.header.version < 3) {
      throw new BlockError(
        "ENOTSUP",
        `Cannot write zeroes to ${length} bytes at offset ${offset}: a compat=0.10 image has no zero clusters`,
        {
          node: st.node.name,
          offset,
          length,
        },
      );
    }
    await st.change(async () => {
      await zeroOrDiscard(
        st,
        offset,
        this.#clusterEnd(offset + length) - offset,
        { discard: false, unmap: opts.mayUnmap ?? false },
        opts.req,
      );
      await relieveCaches(st, opts.req);
    });
  }

  /** The end of a zero or discard range: a partial last cluster of the image counts whole. */
  #clusterEnd(end: number): number {
    const st = this.#st;
    return end >= st.size ? Math.ceil(end / st.cs) * st.cs : end;
  }

  /**
   * Discards whole clusters (the core passes only those, as QEMU does). A v2
   * image with a backing file keeps its data: it has no zero flag, and
   * deallocating would show the backing file there (QEMU skips it too).
   */
  async pdiscard(offset: number, length: number, opts: RequestOptions): Promise<void> {
    const st = this.#st;
    if (st.header.version < 3 && st.backing) return;
    await st.change(async () => {
      await zeroOrDiscard(st, offset, this.#clusterEnd(offset + length) - offset, { discard: true, unmap: true }, opts.req);
      await relieveCaches(st, opts.req);
    });
  }

  /**
   * Drops every cluster of the active layer, so the image reads from its
   * backing file (or as zeros) everywhere — QEMU's `qcow2_make_empty`, used
   * by `commit` to empty the overlay.
   */
  async makeEmpty(opts: RequestOptions): Promise<void> {
    const st = this.#st;
    st.refuseIfCorrupt();
    const size = Math.ceil(st.size / st.cs) * st.cs;
    await st.change(async () => {
      await zeroOrDiscard(st, 0, size, { discard: true, unmap: true, full: true }, opts.req);
      await relieveCaches(st, opts.req);
    });
  }

  /** qemu-img amend: changes format options of the open image. */
  amend(options: FormatOptions, opts: AmendOptions): Promise<void> {
    return amendQcow2(this.#st, options, opts);
  }

  /** Records a new backing file name and format in the header (qemu-img rebase -u). */
  changeBackingFile(name: string | undefined, format: string | undefined): Promise<void> {
    return changeBackingFileQcow2(this.#st, name, format);
  }

  /** Checks (and repairs) the image through this node's file child; a repair reloads the tables. */
  check(opts: CheckOptions): Promise<CheckResult> {
    const st = this.#st;
    return checkQcow2Node(st, opts, async () => {
      const h = await readHeaderFrom(st.file);
      const { l1, reftable } = await readTables(st.node, st.file, h);
      st.reset(h, l1, reftable);
    });
  }

  /** Writes cached metadata back synchronously at `Deno.exit()`, when that is safe (see `_exit.ts`). */
  exitSync(): boolean {
    return exitWriteback(this.#st) !== "not-safe";
  }

  /** The internal snapshots in the snapshot table. */
  snapshotList(): Promise<SnapshotInfo[]> {
    return listSnapshots(this.#st);
  }

  /** Allocation state of the extent at `offset`. */
  blockStatus(offset: number, length: number, opts: RequestOptions): Promise<BlockStatus> {
    return blockStatus(this.#st, offset, length, opts.req);
  }

  /**
   * Writes back the metadata caches in dependency order. Once the image was
   * marked corrupt nothing is written: the flush succeeds when no completed
   * write waited for the write-back (QEMU's flush of a node without its
   * driver succeeds), and fails when one did (its data is not reachable).
   */
  flushToOs(opts: RequestOptions): Promise<void> {
    const st = this.#st;
    if (st.corrupt && st.unwrittenChanges) {
      return Promise.reject(
        new BlockError(
          "EIO",
          `Cannot flush node '${st.node.name}': the image was marked corrupt before the metadata of earlier writes was written; those writes are lost`,
          { node: st.node.name },
        ),
      );
    }
    if (!st.hasDirtyMetadata || st.corrupt) return Promise.resolve();
    return st.change(() => writeback(st, opts.req));
  }

  /** Grows the image. */
  truncate(length: number, opts: TruncateOptions): Promise<void> {
    const st = this.#st;
    if (opts.prealloc && opts.prealloc !== "off") {
      throw new BlockError("ENOTSUP", `Cannot resize qcow2 image with preallocation '${opts.prealloc}': only 'off' is supported`, {
        node: st.node.name,
      });
    }
    if (opts.zeroFill && st.header.version < 3) {
      // QEMU: v2 images have no zero clusters, so the area over the longer backing file cannot be hidden.
      throw new BlockError("ENOTSUP", "Failed to zero out new clusters: Operation not supported", { node: st.node.name });
    }
    return st.change(() => resize(st, length, opts.req));
  }

  /** Writes everything back and clears the dirty bit of a lazy-refcounts image. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const st = this.#st;
    try {
      // A corrupt image keeps what is on disk: writing cached metadata back could spread the damage.
      if (st.node.readOnly || st.corrupt) return;
      await st.lock.run(async () => {
        await writeback(st, undefined);
        if (st.markedDirty) await markClean(st, undefined);
      });
    } finally {
      await st.crypto?.close();
    }
  }

  /** Where the image's metadata lies in its file (drivers/qcow2/_metadata_map.ts). */
  metadataExtents(): Promise<MetadataExtent[]> {
    return metadataExtents(this.#st);
  }

  /** Format-specific information shaped like `qemu-img info --output=json`. */
  info(): Record<string, unknown> {
    const h = this.#st.header;
    const data: Record<string, unknown> = {
      compat: h.version === 3 ? "1.1" : "0.10",
      "compression-type": COMPRESSION_NAMES[h.compressionType],
    };
    if (h.version === 3) data["lazy-refcounts"] = (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0;
    data["refcount-bits"] = 2 ** h.refcountOrder;
    if (this.#st.crypto) data.encrypt = this.#st.crypto.info();
    if (h.dataFile !== undefined) {
      data["data-file"] = h.dataFile;
      data["data-file-raw"] = (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0;
    }
    if (h.version === 3) {
      data.corrupt = (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0;
      data["extended-l2"] = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0;
    }
    const out: Record<string, unknown> = {
      "format-specific": { type: "qcow2", data },
      "cluster-size": clusterSize(h),
      "virtual-size": this.#st.size,
      "dirty-flag": (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0,
    };
    if (h.backingFile !== undefined) out["backing-filename"] = h.backingFile;
    if (h.backingFormat !== undefined) out["backing-filename-format"] = h.backingFormat;
    if (this.#st.crypto) out.encrypted = true;
    return out;
  }
}

function cacheTables(ctx: OpenContext, h: Qcow2Header): { l2: number; rb: number } {
  const o = ctx.options;
  const cs = clusterSize(h);
  const entryBytes = l2EntryBytes(h);
  const full = Math.ceil(h.size / cs) * entryBytes;
  const total = optSize(o, "cache-size", "qcow2");
  let l2 = optSize(o, "l2-cache-size", "qcow2");
  let rb = optSize(o, "refcount-cache-size", "qcow2");
  if (total !== undefined && l2 === undefined && rb === undefined) {
    l2 = Math.min(full, Math.floor((total * 4) / 5));
    rb = total - l2;
  } else if (total !== undefined && l2 !== undefined && rb === undefined) rb = Math.max(0, total - l2);
  else if (total !== undefined && rb !== undefined && l2 === undefined) l2 = Math.max(0, total - rb);
  l2 ??= Math.min(full, 32 << 20);
  rb ??= Math.max(Math.floor(l2 / 4), 4 * cs);
  return { l2: Math.max(2, Math.ceil(l2 / cs)), rb: Math.max(4, Math.ceil(rb / cs)) };
}

/** Reads the active L1 table and the refcount table the header points at. */
async function readTables(node: BlockNode, file: BlockNode, h: Qcow2Header): Promise<{ l1: Uint8Array; reftable: Float64Array }> {
  const l1 = new Uint8Array(h.l1Size * 8);
  if (l1.length) await file.pread(h.l1TableOffset, l1);
  const ev = node.event("reftable_load", undefined);
  if (ev) await ev;
  const rtBytes = new Uint8Array(h.refcountTableClusters * clusterSize(h));
  await file.pread(h.refcountTableOffset, rtBytes);
  const rtView = new DataView(rtBytes.buffer);
  const reftable = new Float64Array(rtBytes.length / 8);
  for (let i = 0; i < reftable.length; i++) {
    reftable[i] = entryOffset(rtView, i * 8);
  }
  return { l1, reftable };
}

async function openQcow2(ctx: OpenContext): Promise<DriverInstance> {
  checkKnownOptions(ctx.options, OPTIONS, "qcow2");
  const file = (await ctx.openChild("file"))!;
  let h = await readHeaderFrom(file);
  const rw = !ctx.readOnly;
  const checking = ctx.check ?? false;
  if (h.incompatibleFeatures & INCOMPAT_CORRUPT && rw && !checking) {
    throw new BlockError(
      "EACCES",
      "qcow2: Image is corrupt; cannot be opened read/write (open it read-only, or repair it with check -r all)",
      {
        node: ctx.node.name,
      },
    );
  }
  const lazyOpt = optBool(ctx.options, "lazy-refcounts", "qcow2");
  const lazy = lazyOpt ?? (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0;
  if (lazy && h.version < 3) {
    throw new BlockError("EINVAL", "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level (compat=1.1)");
  }
  const modeOpt = optEnum(ctx.options, "metadata-mode", "qcow2", ["ordered", "metadata-sync"] as const);
  const mode: MetadataMode = lazy ? "lazy" : modeOpt ?? "ordered";
  const wrongOrder = optEnum(ctx.options, "x-wrong-order", "qcow2", ["none", "l2-before-refblock"] as const) ?? "none";
  if (rw && !checking && h.incompatibleFeatures & INCOMPAT_DIRTY) {
    // Refcounts may be stale (lazy refcounts and a crash): rebuild them.
    await repairImage(file);
    h = await readHeaderFrom(file);
    if (h.incompatibleFeatures & INCOMPAT_DIRTY) {
      throw new BlockError("EIO", "qcow2: Could not repair the dirty image; run check -r all", { node: ctx.node.name });
    }
  }
  const backing = await openBacking(ctx, h, file);
  const data = await openDataFile(ctx, h, file);
  const { l1, reftable } = await readTables(ctx.node, file, h);
  const tables = cacheTables(ctx, h);
  const st = new Qcow2State({
    header: h,
    node: ctx.node,
    file,
    data,
    backing,
    l1,
    reftable,
    mode,
    wrongOrder: wrongOrder as WrongOrder,
    l2CacheTables: tables.l2,
    rbCacheTables: tables.rb,
    overlapChecks: parseOverlapOptions(ctx.options),
  });
  if (h.cryptMethod !== CRYPT_NONE) {
    st.crypto = await Qcow2Crypto.open(h, file, ctx.options, { noIo: (ctx.noIo ?? false) || checking, node: ctx.node.name });
  }
  // Before the autoclear bits go: a valid bitmap directory is metadata to protect.
  if (rw && !checking) await initOverlapChecks(st);
  if (rw && !checking) {
    // Autoclear bits we cannot maintain (bitmaps, raw data file, unknown
    // ones) are cleared, so a program that maintains them knows their data
    // is stale.
    if (h.autoclearFeatures !== 0 || h.featureHigh?.autoclear) {
      h.autoclearFeatures = 0;
      if (h.featureHigh) h.featureHigh.autoclear = 0;
      await writeHeaderFields(file, h, ["autoclearFeatures"]);
    }
  }
  return new Qcow2Instance(st);
}

/** The qcow2 format driver. */
export const qcow2Driver: BlockDriver = {
  name: "qcow2",
  kind: "format",
  options: OPTIONS,
  probe(head: Uint8Array): number {
    if (head.length < 8) return 0;
    const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
    return v.getUint32(0) === QCOW2_MAGIC && v.getUint32(4) >= 2 ? 100 : 0;
  },
  open: openQcow2,
  create: createQcow2,
  measure: measureQcow2,
};

registerDriver(qcow2Driver);
