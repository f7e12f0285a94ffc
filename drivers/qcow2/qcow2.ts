/**
 * The qcow2 format driver: opening (header validation, backing and data file
 * children, cache sizing, dirty-image repair, autoclear bits) and the
 * request callbacks. Reads and overwrites of allocated clusters whose L2
 * table is cached run without the metadata lock and without allocations of
 * their own; everything that changes metadata runs under the lock.
 *
 * Options (QEMU names): `l2-cache-size`, `refcount-cache-size`,
 * `cache-size`, `lazy-refcounts`, `metadata-mode` (`ordered` default, or
 * `metadata-sync`), `x-wrong-order` (tests only), `encrypt.key-secret` and
 * `encrypt.format` (encrypted images, see `_crypto.ts`), `snapshot.id` /
 * `snapshot.name` (a read-only view of an internal snapshot, as qemu-img
 * convert -l opens it); children `file`, `backing` (null disables it),
 * `data-file`.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { checkKnownOptions, optBool, optEnum } from "../../core/options.ts";
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
import { writeCompressedLocked } from "./_write_compressed.ts";
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  QCOW2_MAGIC,
  type Qcow2Header,
  readHeaderFrom,
} from "./header.ts";
import { K_NORMAL, mapSync, newMapping } from "./_l2.ts";
import { blockStatus, readGuest } from "./_read.ts";
import { resize } from "./_resize.ts";
import { type MetadataMode, Qcow2State, type WrongOrder } from "./_state.ts";
import { writeLocked, zeroOrDiscard } from "./_write.ts";
import { amendQcow2, changeBackingFileQcow2, checkQcow2Node } from "./_image_ops.ts";
import { listSnapshots, readSnapshotTableChecked } from "./_snapshot.ts";
import { createSnapshot, deleteSnapshot, gotoSnapshot, loadSnapshotView, vmStateOffset } from "./_snapshot_ops.ts";
import { exitWriteback } from "./_exit.ts";
import { markClean, releaseFreed, relieveCaches, writeback } from "./_writeback.ts";
import { writeHeaderFields } from "./_header_write.ts";
import { metadataExtents } from "./_metadata_map.ts";
import { cacheTables, openBacking, openDataFile, readTables, snapshotOptions } from "./_open.ts";
import { CRYPT_NONE, ENCRYPT_OPTIONS, Qcow2Crypto } from "./_crypto.ts";
import { qcow2Info } from "./_info.ts";

const OPTIONS = [
  "l2-cache-size",
  "refcount-cache-size",
  "cache-size",
  "lazy-refcounts",
  "metadata-mode",
  "x-wrong-order",
  "snapshot",
  "snapshot.id",
  "snapshot.name",
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
    return this.#st.header.size;
  }

  /** Reads guest data. */
  async pread(offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
    try {
      await readGuest(this.#st, offset, buf, opts.req);
    } catch (e) {
      await this.#st.signalCorruption(e);
      throw e;
    }
  }

  /** Writes guest data: in place without the lock when possible, else under the lock. */
  async pwrite(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const st = this.#st;
    st.refuseIfCorrupt();
    const m = this.#m;
    let mapped: boolean;
    try {
      mapped = mapSync(st, offset, data.length, m);
    } catch (e) {
      await st.signalCorruption(e);
      throw e;
    }
    if (mapped && m.kind === K_NORMAL && m.copied && m.bytes === data.length) {
      const host = m.host;
      st.ioInFlight++;
      try {
        const p = st.event("write_aio", opts.req);
        if (p) await p;
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
      await releaseFreed(st, opts.req);
      await relieveCaches(st, opts.req);
    });
  }

  /** The end of a zero or discard range: a partial last cluster of the image counts whole. */
  #clusterEnd(end: number): number {
    const st = this.#st;
    return end >= st.header.size ? Math.ceil(end / st.cs) * st.cs : end;
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
      await releaseFreed(st, opts.req);
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
    const size = Math.ceil(st.header.size / st.cs) * st.cs;
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

  /** Creates an internal snapshot of the current state (qemu-img snapshot -c; `_snapshot_ops.ts`). */
  snapshotCreate(info: SnapshotInfo): Promise<void> {
    return this.#st.change(() => createSnapshot(this.#st, info, undefined));
  }

  /** Deletes the snapshot with ID (or else name) `idOrName` (qemu-img snapshot -d). */
  snapshotDelete(idOrName: string): Promise<void> {
    return this.#st.change(() => deleteSnapshot(this.#st, idOrName, undefined));
  }

  /** Reverts the image to the snapshot with ID (or else name) `idOrName` (qemu-img snapshot -a). */
  snapshotGoto(idOrName: string): Promise<void> {
    return this.#st.change(() => gotoSnapshot(this.#st, idOrName, undefined));
  }

  /** Reads VM state (after the guest data, as QEMU's qcow2_load_vmstate). */
  async loadVmstate(pos: number, buf: Uint8Array): Promise<void> {
    const p = this.#st.event("vmstate_load", undefined);
    if (p) await p;
    await readGuest(this.#st, vmStateOffset(this.#st) + pos, buf, undefined);
  }

  /** Writes VM state (qcow2_save_vmstate): allocated like guest data, past the virtual size. */
  async saveVmstate(pos: number, data: Uint8Array): Promise<void> {
    const st = this.#st;
    const p = st.event("vmstate_save", undefined);
    if (p) await p;
    await st.change(async () => {
      await writeLocked(st, vmStateOffset(st) + pos, data, undefined);
      await relieveCaches(st, undefined);
    });
  }

  /** Allocation state of the extent at `offset`. */
  blockStatus(offset: number, length: number, opts: RequestOptions): Promise<BlockStatus> {
    return blockStatus(this.#st, offset, length, opts.req);
  }

  /** Writes back the metadata caches in dependency order. */
  flushToOs(opts: RequestOptions): Promise<void> {
    const st = this.#st;
    if (!st.hasDirtyMetadata) return Promise.resolve();
    return st.change(() => writeback(st, opts.req));
  }

  /** Grows (with optional preallocation) or shrinks the image (`_resize.ts`). */
  truncate(length: number, opts: TruncateOptions): Promise<void> {
    const st = this.#st;
    if (opts.zeroFill && st.header.version < 3) {
      // QEMU: v2 images have no zero clusters, so the area over the longer backing file cannot be hidden.
      throw new BlockError("ENOTSUP", "Failed to zero out new clusters: Operation not supported", { node: st.node.name });
    }
    return st.change(async () => {
      await resize(st, length, { req: opts.req, prealloc: opts.prealloc });
      await relieveCaches(st, opts.req);
    });
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
    return qcow2Info(this.#st);
  }
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
      { node: ctx.node.name },
    );
  }
  const lazyOpt = optBool(ctx.options, "lazy-refcounts", "qcow2");
  const lazy = lazyOpt ?? (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0;
  if (lazy && h.version < 3) {
    throw new BlockError("EINVAL", "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level (compat=1.1)");
  }
  const modeOpt = optEnum(ctx.options, "metadata-mode", "qcow2", ["ordered", "metadata-sync"] as const);
  const mode: MetadataMode = lazy ? "lazy" : modeOpt ?? "ordered";
  const wrongOrder = optEnum(ctx.options, "x-wrong-order", "qcow2", ["none", "l2-before-refblock", "snapshot-l1-after-table"] as const) ??
    "none";
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
  });
  if (!checking && h.nbSnapshots) {
    // QEMU reads the snapshot table at open (qcow2_read_snapshots) and refuses one it cannot use.
    const t = await readSnapshotTableChecked(file, h, false);
    if ("error" in t) throw new BlockError("EFBIG", `${t.error}\n${t.hint}`, { node: ctx.node.name });
  }
  if (h.cryptMethod !== CRYPT_NONE) {
    st.crypto = await Qcow2Crypto.open(h, file, ctx.options, { noIo: (ctx.noIo ?? false) || checking, node: ctx.node.name });
  }
  const view = snapshotOptions(ctx.options);
  if (view) await loadSnapshotView(st, view.id, view.name);
  if (rw && !checking) {
    // Autoclear bits we cannot maintain (bitmaps, unknown ones) are
    // cleared, so a program that maintains them knows their data is stale.
    // A raw data file stays raw: writes go to guest offsets and zero writes are mirrored into it (`_write.ts`).
    const keep = h.incompatibleFeatures & INCOMPAT_DATA_FILE ? h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW : 0;
    if (h.autoclearFeatures !== keep || h.featureHigh?.autoclear) {
      h.autoclearFeatures = keep;
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
