/**
 * The driver instance of an open qcow2 node: the request callbacks. Reads and
 * overwrites of allocated clusters whose L2 table is cached run without the
 * lock (rules: top of `_state.ts`); every metadata change runs under it.
 *
 * @module
 */

import { BlockError, CacheFlushError } from "../../core/errors.ts";
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
  TruncateResult,
  WriteOptions,
  WriteZeroesOptions,
} from "../../core/types.ts";
import type { BlockStatus, DriverInstance } from "../../core/node.ts";
import { CompressedWriter } from "./_write_compressed.ts";
import type { CompressPool } from "./_compress_pool.ts";
import { type Qcow2Header, readHeaderFrom } from "./header.ts";
import { K_NORMAL, mapSync, newMapping } from "./_l2.ts";
import { blockStatus, dataIo, readFast, readGuest } from "./_read.ts";
import { metadataPreallocated } from "./_prealloc_detect.ts";
import { resize } from "./_resize.ts";
import type { MetadataMode, Qcow2State } from "./_state.ts";
import { canEmptyCompletely, makeCompletelyEmpty } from "./_make_empty.ts";
import { writeLocked } from "./_write.ts";
import { writeZeroes, zeroOrDiscard } from "./_zero.ts";
import { amendQcow2, changeBackingFileQcow2, checkQcow2Node } from "./_image_ops.ts";
import { listSnapshots } from "./_snapshot.ts";
import { createSnapshot, deleteSnapshot, gotoSnapshot, vmStateOffset } from "./_snapshot_ops.ts";
import { exitWriteback } from "./_exit.ts";
import { flushWriteback, markClean, releaseFreed, relieveCaches, writeback, writebackAtClose } from "./_writeback.ts";
import { metadataExtents } from "./_metadata_map.ts";
import { readTables } from "./_open.ts";
import { findOverlapSync, preWriteOverlapCheck } from "./_overlap.ts";
import { qcow2Info } from "./_info.ts";
import { bitmapCallbacks, type Qcow2Bitmaps } from "./_bitmaps.ts";

/** The driver instance of an open qcow2 node. */
export class Qcow2Instance implements DriverInstance {
  /**
   * Write-zeroes works on whole subclusters (clusters without extended L2;
   * the core passes a partial head and tail on their own), discard on whole
   * clusters; encrypted images take whole 512-byte sectors (QEMU's request
   * alignment for them).
   */
  readonly limits: Partial<BlockLimits>;

  /**
   * Whether the image reads as zeros where nothing was written (QEMU's
   * qcow2_has_zero_init): yes unless preallocated (the first L2 table
   * exists); a preallocated encrypted image's clusters decrypt to noise, and
   * a preallocated one reads as its data file does.
   */
  get zeroInit(): boolean {
    const st = this.#st;
    if (!(st.l1Size > 0 && st.l1Offset(0) !== 0)) return true;
    return st.crypto ? false : st.data.hasZeroInit;
  }
  #st: Qcow2State;
  #bm: Qcow2Bitmaps;
  #m = newMapping();
  #closed = false;
  #compressed: CompressedWriter;

  /** Wraps an opened image state and its persistent dirty bitmaps (whose `bitmap*` callbacks it serves). */
  constructor(st: Qcow2State, bitmaps: Qcow2Bitmaps) {
    this.#st = st;
    this.limits = { optWriteZero: st.subSize, optDiscard: st.cs, ...(st.crypto ? { requestAlignment: 512 } : {}) };
    this.#bm = bitmaps;
    this.#compressed = new CompressedWriter(st, st.compressThreads);
    Object.defineProperties(this, Object.getOwnPropertyDescriptors(bitmapCallbacks(bitmaps)));
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
    if (this.#st.broken) {
      try {
        this.#st.refuseIfCorrupt();
      } catch (e) {
        return Promise.reject(e);
      }
    }
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
    this.#bm.mark(offset, data.length);
    // A store in progress, or bitmaps to mark in use again first: the slow path after it.
    const gate = this.#bm.beforeChange();
    if (gate) return gate.then(() => this.#pwriteSlow(offset, data, opts, false));
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
      if (st.freeCompressedNow) {
        st.freeCompressedNow = false;
        await releaseFreed(st, opts.req);
      }
      await relieveCaches(st, opts.req);
    });
  }

  /**
   * Writes one whole cluster compressed (the last cluster may be short when
   * the image ends there); falls back to a normal write when compression
   * does not save space. Used by `convert -c`: compression runs on threads,
   * so many of these may be in flight; they commit in the order issued.
   */
  pwriteCompressed(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const st = this.#st;
    st.refuseIfCorrupt();
    if (st.crypto) return Promise.reject(new BlockError("ENOTSUP", "Compression can't be used with encryption"));
    this.#bm.mark(offset, data.length);
    const gate = this.#bm.beforeChange();
    return this.#compressed.write(offset, data, async (commit) => {
      await gate;
      await st.change(async () => {
        await commit();
        await relieveCaches(st, opts.req);
      });
    }, opts.req);
  }

  /** The compression pool of this image's compressed writes, once one ran (`stats` counts what it did). */
  get compressPool(): CompressPool | undefined {
    return this.#compressed.pool;
  }

  /** Write-zeroes through the L2 entries (see `_zero.ts`: whole subclusters, or a piece of one that zeroes it whole). */
  async pwriteZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    this.#bm.mark(offset, length);
    await this.#bm.beforeChange();
    await writeZeroes(this.#st, offset, length, opts.mayUnmap ?? false, opts.req);
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
    this.#bm.mark(offset, length);
    await this.#bm.beforeChange();
    await st.change(async () => {
      await zeroOrDiscard(st, offset, this.#clusterEnd(offset + length) - offset, { discard: true, unmap: true }, opts.req);
      await releaseFreed(st, opts.req);
      await relieveCaches(st, opts.req);
    });
  }

  /**
   * Drops every cluster of the active layer, so the image reads from its
   * backing file (or as zeros) everywhere — QEMU's `qcow2_make_empty`, used
   * by `commit` to empty the overlay: the whole image is reset at once where
   * it can be (`_make_empty.ts`), else every cluster is discarded.
   */
  async makeEmpty(opts: RequestOptions): Promise<void> {
    const st = this.#st;
    st.refuseIfCorrupt();
    const size = Math.ceil(st.size / st.cs) * st.cs;
    await st.change(async () => {
      if (canEmptyCompletely(st)) return await makeCompletelyEmpty(st, opts.req);
      await zeroOrDiscard(st, 0, size, { discard: true, unmap: true, full: true }, opts.req);
      await relieveCaches(st, opts.req);
    });
  }

  /** qemu-img amend: changes format options of the open image (a new `size` resizes the bitmaps too, as truncate does). */
  async amend(options: FormatOptions, opts: AmendOptions): Promise<void> {
    if (options.size !== undefined) {
      this.#bm.checkResize();
      await this.#bm.beforeChange();
    }
    await amendQcow2(this.#st, options, opts);
    this.#bm.resize(this.#st.header.size);
  }

  /** Records a new backing file name and format in the header (qemu-img rebase -u). */
  changeBackingFile(name: string | undefined, format: string | undefined): Promise<void> {
    return changeBackingFileQcow2(this.#st, name, format);
  }

  /** Checks (and repairs) the image through this node's file child; a repair reloads the tables. */
  check(opts: CheckOptions): Promise<CheckResult> {
    const st = this.#st;
    return checkQcow2Node(st, opts, async () => {
      const h = await readHeaderFrom(st.file, undefined, { check: true });
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
    // QEMU refuses to revert an image that has dirty bitmaps, enabled or not (their contents would be wrong after it).
    if (this.#bm.list().length) {
      return Promise.reject(new BlockError("EBUSY", "Device has active dirty bitmaps", { node: this.#st.node.name }));
    }
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
  async blockStatus(offset: number, length: number, opts: RequestOptions): Promise<BlockStatus> {
    const s = await blockStatus(this.#st, offset, length, opts.req);
    // Data of this layer at a host offset, in an image with preallocated metadata: the file may still hold a hole there.
    if (s.allocated && s.data && s.hostOffset !== undefined && (await metadataPreallocated(this.#st, opts.req))) s.recurse = true;
    return s;
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
    if (st.corrupt || st.broken) return Promise.resolve();
    if (this.#bm.wantsStoreAtFlush) return st.change(() => this.#bm.storeAtFlush(opts.req).then(() => writeback(st, opts.req)));
    if (!st.hasDirtyMetadata) return Promise.resolve();
    return st.change(() => flushWriteback(st, opts.req));
  }

  /**
   * Grows (with optional preallocation) or shrinks the image (`_resize.ts`).
   * A `zeroFill` under falloc/full preallocation is done here: the file
   * grows with zeros, so the new clusters are data that reads as zeros.
   */
  async truncate(length: number, opts: TruncateOptions): Promise<TruncateResult> {
    const st = this.#st;
    const zeroFilled = !!opts.zeroFill && (opts.prealloc === "falloc" || opts.prealloc === "full") && !st.externalData;
    if (opts.zeroFill && !zeroFilled && st.header.version < 3 && length > Math.ceil(st.header.size / st.cs) * st.cs) {
      // QEMU's qcow2_co_truncate: v2 images have no zero clusters, so only the grown head inside the last cluster can be zeroed.
      throw new BlockError("ENOTSUP", "Failed to zero out new clusters: Operation not supported", { node: st.node.name });
    }
    this.#bm.checkResize();
    await this.#bm.beforeChange();
    await st.change(async () => {
      await resize(st, length, { req: opts.req, prealloc: opts.prealloc, zeroFill: zeroFilled });
      this.#bm.resize(st.header.size);
      await relieveCaches(st, opts.req);
    });
    return { zeroFilled };
  }

  /** Writes everything back and clears the dirty bit of a lazy-refcounts image. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const st = this.#st;
    await this.#compressed.close();
    try {
      // A corrupt image keeps what is on disk: writing cached metadata back could spread the damage.
      if (st.node.readOnly || st.corrupt || st.broken) return;
      await st.lock.run(async () => {
        let lost: unknown;
        await this.#bm.store(undefined).catch((e) => (lost = e));
        const failed = await writebackAtClose(st);
        // As QEMU's qcow2_inactivate: a failed cache keeps the image dirty (its refcounts may be stale).
        if (failed.length) throw new CacheFlushError(st.node.name, failed);
        await this.#compressed.alignFileEnd();
        if (st.markedDirty) await markClean(st, undefined);
        if (lost) {
          throw new BlockError("EIO", `Lost persistent bitmaps during inactivation of node '${st.node.name}': ${(lost as Error).message}`, {
            node: st.node.name,
            cause: lost,
          });
        }
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
    return qcow2Info(this.#st, this.#bm.directoryInfo());
  }
}
