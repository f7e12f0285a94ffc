/**
 * The state of one open qcow2 image shared by the cluster-mapping, refcount,
 * read and write modules: geometry, the in-memory L1 table, the metadata
 * caches and the metadata lock. Dirty metadata is written back in an order
 * that keeps the image consistent after a crash at any point (`_writeback.ts`
 * orders the table writes of `_metadata_write.ts`).
 *
 * Write-back order (mode `ordered`): refcount blocks are written, then one
 * flush makes them and all guest/COW data durable; then L2 tables are
 * written; if any L1 entry points at a new table, a flush makes the tables
 * durable before the L1 entries are written. Clusters whose last reference
 * was removed are only freed once that removal is durable.
 *
 * Lock-free paths. Reads (`_read.ts`) and in-place overwrites of allocated
 * clusters (`Qcow2Instance.pwrite`'s fast path) run without the metadata
 * lock. Everything else changes metadata under {@linkcode Qcow2State.lock}
 * (`change()`). A lock-free path may only:
 * - read the geometry (`cs`, `clusterBits`, `extL2`, `entryBytes`,
 *   `l2Entries`, `l2Span`, `subSize`, `externalData`, the `readonly`
 *   fields), `header.size`, `data`, `file`, `backing`, `crypto`;
 * - look up `l1`/`l1View` and `l2Cache` and use the entry in the same
 *   synchronous stretch (`mapSync`); across an `await` it must hold the
 *   entry with `l2Cache.acquire()`/`release()`, as QEMU's
 *   `qcow2_cache_get`/`put` — an unpinned entry may be evicted meanwhile;
 * - count every data request it starts from such a mapping in `ioInFlight`
 *   (increment before the request, decrement when it settles): clusters in
 *   `pendingFree` are freed, and so reusable, only while `ioInFlight` is 0;
 * - read `corrupt` (`refuseIfCorrupt`) and call `signalCorruption`, raise
 *   events (`event`), and set or read `lastCompressed` (keyed by the host
 *   descriptor; compressed writes reset it).
 * It never writes `l1`, `reftable`, cache entries, `pendingFree`,
 * `reserved`, `freeHint` or `header` fields other than through `change()`.
 *
 * @module
 */

import { BlockError, CorruptImageError, reportCorruption } from "../../core/errors.ts";
import type { BlkdebugEvent } from "../../core/events.ts";
import type { BlockNode } from "../../core/node.ts";
import type { RequestInfo } from "../../core/types.ts";
import { type CacheEntry, MetaCache } from "./_cache.ts";
import type { Qcow2Crypto } from "./_crypto.ts";
import { entryOffset, HI_COPIED, l2EntrySize } from "./_entries.ts";
import { INCOMPAT_CORRUPT, INCOMPAT_EXTL2, type Qcow2Header } from "./header.ts";
import { writeHeaderFields } from "./_header_write.ts";

/** How metadata reaches the disk. */
export type MetadataMode = "ordered" | "metadata-sync" | "lazy";

/** Test-only deliberate ordering bugs (for the crash explorer). */
export type WrongOrder = "none" | "l2-before-refblock" | "snapshot-l1-after-table";

/** A promise-chain mutex around metadata operations. */
export class Mutex {
  #tail: Promise<void> = Promise.resolve();
  #held = false;

  /** Whether an operation holds the lock. */
  get held(): boolean {
    return this.#held;
  }

  /** Runs `fn` when every earlier holder is done. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.#tail;
    let release!: () => void;
    this.#tail = new Promise<void>((r) => (release = r));
    await prev;
    this.#held = true;
    try {
      return await fn();
    } finally {
      this.#held = false;
      release();
    }
  }
}

/** Everything the qcow2 modules share about one open image. */
export class Qcow2State {
  /** The parsed header (kept current: size, L1, refcount table). */
  header: Qcow2Header;
  /** The qcow2 node itself (events are raised on it). */
  readonly node: BlockNode;
  /** The image file. */
  readonly file: BlockNode;
  /** Where guest data lives: the data-file child or the image file. */
  readonly data: BlockNode;
  /** The backing node, if any. */
  readonly backing?: BlockNode;
  /** Cluster size in bytes. */
  readonly cs: number;
  /** log2 of the cluster size. */
  readonly clusterBits: number;
  /** Extended L2 entries (16 bytes, 32 subclusters). */
  readonly extL2: boolean;
  /** Bytes per L2 entry. */
  readonly entryBytes: number;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  /** Guest bytes mapped by one L2 table. */
  readonly l2Span: number;
  /** Subcluster size (cluster size without extended L2). */
  readonly subSize: number;
  /** Guest data is in an external data file (host offset = guest offset, no refcounts). */
  readonly externalData: boolean;
  /** Metadata write mode. */
  mode: MetadataMode;
  /** Deliberate ordering bug for tests. */
  readonly wrongOrder: WrongOrder;
  /** The active L1 table (raw big-endian entries). */
  l1: Uint8Array;
  /** View of {@linkcode Qcow2State.l1}. */
  l1View: DataView;
  /** L1 indexes changed in memory and not yet written. */
  readonly l1Dirty: Set<number> = new Set();
  /** L2 table cache. */
  readonly l2Cache: MetaCache;
  /** Refcount block cache. */
  readonly rbCache: MetaCache;
  /** Refcount table (offsets of refcount blocks, 0 = none). */
  reftable: Float64Array;
  /** Refcount table entries changed in memory and not yet written. */
  readonly reftableDirty: Set<number> = new Set();
  /** Refcount entries per refcount block. */
  perBlock: number;
  /** Refcount width in bits. */
  refBits: number;
  /** Lowest cluster index that may be free. */
  freeHint = 0;
  /** Clusters chosen for an allocation in progress (not yet counted). */
  readonly reserved: Set<number> = new Set();
  /** Host clusters (offsets) whose last reference was removed, freed after write-back. */
  pendingFree: number[] = [];
  /**
   * Those of `pendingFree` whose space stays in the file when freed (QEMU's
   * QCOW2_DISCARD_NEVER and _OTHER: a cluster a copy-on-write or a
   * preallocation replaced, an old L1 or L2 table): the next allocation
   * reuses them anyway.
   */
  noDiscard: Set<number> = new Set();
  /**
   * `pendingFree` holds a compressed cluster's host clusters: a write that
   * replaced one frees them before it returns, so the next allocation reuses
   * them at once, as QEMU's qcow2_alloc_cluster_link_l2 does.
   */
  freeCompressedNow = false;
  /** Data reads and writes running outside the lock. */
  ioInFlight = 0;
  /** The metadata lock. */
  readonly lock: Mutex = new Mutex();
  /** The image looks made with preallocation=metadata (`_prealloc_detect.ts`); undefined until a block status asks. */
  metadataPreallocation?: boolean;
  /** How often the refcount table was replaced by a larger one (allocations restart when it changes). */
  reftableSwitches = 0;
  /** The dirty bit has been set on disk by this open (lazy refcounts). */
  markedDirty = false;
  /** Corruption was found while the image was open read-write: it refuses changes. */
  corrupt = false;
  /**
   * Emptying the image failed half-way and its refcounts are broken
   * (`_make_empty.ts`): like a corrupt image, nothing more is read or
   * written through this open (QEMU ejects the driver); opening the image
   * again repairs it (the dirty bit is set).
   */
  broken = false;
  /**
   * A change that completed left metadata in the caches (cleared when a
   * change, such as the write-back itself, leaves none): if corruption
   * stops the write-back, a flush must say those writes are lost.
   */
  unwrittenChanges = false;
  /** Next free byte for compressed data in a partly used cluster (0 = none). */
  freeByteOffset = 0;
  /** Clusters the compression pool compresses at once (open option `compress-threads`; undefined: the pool's default). */
  compressThreads: number | undefined;
  /** Last decompressed cluster (host descriptor key and content). */
  lastCompressed: { key: number; data: Uint8Array } | undefined;
  /** Metadata structures writes are checked against (QEMU's `overlap-check`; OL_* bits of `_overlap.ts`). */
  readonly overlapChecks: number;
  /**
   * Bumped by {@linkcode Qcow2State.metadataMoved} whenever an L1 entry or a
   * refcount table entry changes, or a table moves: the overlap checks
   * rebuild their index of metadata clusters then.
   */
  metadataGen = 0;
  /** The cipher of an encrypted image (crypt_method 1 or 2). */
  crypto: Qcow2Crypto | undefined;

  /** Sets up the state from a validated header and its L1 and refcount tables. */
  constructor(init: {
    header: Qcow2Header;
    node: BlockNode;
    file: BlockNode;
    data: BlockNode;
    backing?: BlockNode;
    l1: Uint8Array;
    reftable: Float64Array;
    mode: MetadataMode;
    wrongOrder: WrongOrder;
    l2CacheTables: number;
    rbCacheTables: number;
    overlapChecks: number;
  }) {
    const h = init.header;
    this.header = h;
    this.node = init.node;
    this.file = init.file;
    this.data = init.data;
    this.backing = init.backing;
    this.externalData = init.data !== init.file;
    this.clusterBits = h.clusterBits;
    this.cs = 2 ** h.clusterBits;
    this.extL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0;
    this.entryBytes = l2EntrySize(this.extL2);
    this.l2Entries = this.cs / this.entryBytes;
    this.l2Span = this.l2Entries * this.cs;
    this.subSize = this.extL2 ? this.cs / 32 : this.cs;
    this.mode = init.mode;
    this.wrongOrder = init.wrongOrder;
    this.l1 = init.l1;
    this.l1View = new DataView(init.l1.buffer, init.l1.byteOffset, init.l1.byteLength);
    this.reftable = init.reftable;
    this.refBits = 2 ** h.refcountOrder;
    this.perBlock = (this.cs * 8) / this.refBits;
    this.l2Cache = new MetaCache(init.l2CacheTables);
    this.rbCache = new MetaCache(init.rbCacheTables);
    this.overlapChecks = init.overlapChecks;
  }

  /**
   * Host clusters of the image file guest data was written to since freed
   * clusters were last given back (null: too many to track). The write-back
   * does not discard those: a cluster freed while an entry written since
   * points at it (its refcount counted one of two references, a damaged
   * image) keeps its data, as in QEMU, which never discards such frees.
   */
  recentData: Set<number> | null = new Set();

  /** Records guest data written to `[host, host + length)` of the image file (not the external data file). */
  noteDataWrite(host: number, length: number): void {
    if (this.externalData || !this.recentData || length <= 0) return;
    const last = Math.floor((host + length - 1) / this.cs);
    for (let c = Math.floor(host / this.cs); c <= last; c++) this.recentData.add(c);
    if (this.recentData.size > 1 << 16) this.recentData = null;
  }

  /** Says that the L1 table, the refcount table or a table pointer in the header changed (call after every such change). */
  metadataMoved(): void {
    this.metadataGen++;
  }

  /**
   * Replaces the header and tables with what is on disk now (after a repair
   * rewrote them): caches, pending frees and allocation hints start over.
   */
  reset(header: Qcow2Header, l1: Uint8Array, reftable: Float64Array): void {
    this.header = header;
    this.l1 = l1;
    this.l1View = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.reftable = reftable;
    this.l1Dirty.clear();
    this.reftableDirty.clear();
    this.l2Cache.clear();
    this.rbCache.clear();
    this.pendingFree = [];
    this.noDiscard.clear();
    this.freeCompressedNow = false;
    this.freeHint = 0;
    this.freeByteOffset = 0;
    this.lastCompressed = undefined;
    this.corrupt = false;
    this.metadataMoved();
  }

  /**
   * Switches to new refcount structures (after `refcount_bits` changed on
   * disk): the width, the table, and an empty refcount block cache.
   */
  setRefcounts(refcountOrder: number, reftable: Float64Array): void {
    this.refBits = 2 ** refcountOrder;
    this.perBlock = (this.cs * 8) / this.refBits;
    this.reftable = reftable;
    this.reftableDirty.clear();
    this.rbCache.clear();
    this.metadataMoved();
  }

  /** Raises a BLKDBG event on the node; resolves when a breakpoint (if any) releases it. */
  event(name: BlkdebugEvent, req: RequestInfo | undefined): Promise<void> | void {
    return this.node.event(name, req);
  }

  /**
   * The virtual size: the header's size rounded down to whole 512-byte
   * sectors, as QEMU reads it (`bs->total_sectors = size / 512`).
   */
  get size(): number {
    return Math.floor(this.header.size / 512) * 512;
  }

  /** Number of entries in the active L1 table. */
  get l1Size(): number {
    return this.l1.length / 8;
  }

  /** Offset of the L2 table for L1 index `i` (0 = none). */
  l1Offset(i: number): number {
    return entryOffset(this.l1View, i * 8);
  }

  /** The L1 entry at `i` has the COPIED flag. */
  l1Copied(i: number): boolean {
    return (this.l1View.getUint32(i * 8) & HI_COPIED) !== 0;
  }

  /** Loads (or finds cached) the L2 table at `offset`; the entry comes back pinned: release it. */
  loadL2(offset: number, l1Index: number, req: RequestInfo | undefined): Promise<CacheEntry> {
    return this.loadTable(
      this.l2Cache,
      offset,
      { kind: "L2 table", where: `L1 index: ${l1Index ? `0x${l1Index.toString(16)}` : "0"}` },
      "l2_load",
      req,
    );
  }

  /**
   * Loads a metadata table through `cache` (QEMU's qcow2_cache_get): a hit
   * is pinned at once; a miss validates the offset, raises `event` (if any), reads
   * the cluster and inserts it pinned. The caller releases the entry.
   */
  loadTable(
    cache: MetaCache,
    offset: number,
    what: { kind: string; where: string },
    event: BlkdebugEvent | undefined,
    req: RequestInfo | undefined,
  ): Promise<CacheEntry> {
    return cache.load(offset, async () => {
      // QEMU's texts ("Refblock offset 0x20600 unaligned (reftable index: 0x1)"), as the corrupt-marking line shows them.
      const at = `${what.kind} offset ${offset ? `0x${offset.toString(16)}` : "0"}`;
      if (offset % this.cs !== 0) throw new CorruptImageError(`${at} unaligned (${what.where})`, { node: this.node.name });
      if (offset >= this.file.length) {
        throw new CorruptImageError(`${at} is past the end of the file (${this.file.length} bytes; ${what.where})`, {
          node: this.node.name,
        });
      }
      const p = event && this.event(event, req);
      if (p) await p;
      const buf = new Uint8Array(this.cs);
      await this.file.pread(offset, buf, { req });
      return buf;
    });
  }

  /** Flushes the image file (and the data file when it is separate). */
  async flushFiles(req: RequestInfo | undefined): Promise<void> {
    if (this.externalData && !this.data.readOnly) await this.data.flush({ req });
    await this.file.flush({ req });
  }

  /** The metadata caches hold unwritten changes. */
  get hasDirtyMetadata(): boolean {
    return this.l2Cache.dirtyCount > 0 || this.rbCache.dirtyCount > 0 || this.l1Dirty.size > 0 || this.reftableDirty.size > 0 ||
      this.pendingFree.length > 0;
  }

  /**
   * Runs a metadata-changing operation under the lock. Corruption found on
   * the way marks the image corrupt on disk and refuses every later change
   * (QEMU's qcow2_signal_corruption), so a damaged image is not damaged
   * further; `check -r all` repairs it.
   */
  async change<T>(fn: () => Promise<T>): Promise<T> {
    this.refuseIfCorrupt();
    return await this.lock.run(async () => {
      this.refuseIfCorrupt();
      try {
        const r = await fn();
        this.unwrittenChanges = this.hasDirtyMetadata;
        return r;
      } catch (e) {
        await this.signalCorruption(e);
        throw e;
      }
    });
  }

  /**
   * Throws ENOMEDIUM when the image was marked corrupt while open: QEMU
   * detaches the driver then (`bs->drv = NULL`), and every later request
   * fails with "No medium found".
   */
  refuseIfCorrupt(): void {
    if (this.broken) {
      throw new BlockError(
        "ENOMEDIUM",
        `Cannot use node '${this.node.name}': emptying the image failed half-way; open it again to repair its refcounts`,
        { node: this.node.name },
      );
    }
    if (this.corrupt) {
      throw new BlockError(
        "ENOMEDIUM",
        `Cannot change node '${this.node.name}': corruption was found and the image is marked corrupt; repair it with 'blkgraph check -r all'`,
        { node: this.node.name },
      );
    }
  }

  /**
   * When `err` is a corruption and the image is open read-write, marks the
   * image corrupt (in memory and in the header's incompatible features).
   */
  async signalCorruption(err: unknown): Promise<void> {
    if (!(err instanceof CorruptImageError) || this.node.readOnly || this.corrupt) return;
    this.corrupt = true;
    // What was found, in QEMU's words where they were given: the innermost corruption of the chain (the downgrade's
    // "Failed to turn zero into data clusters" wraps one).
    let found: CorruptImageError = err;
    while (found.cause instanceof CorruptImageError) found = found.cause;
    // Some messages are already QEMU's whole line (the overlap checks): report the reason only.
    const whole = /^qcow2: Marking image as corrupt: (.*); further corruption events will be suppressed$/s.exec(found.qemuMessage);
    reportCorruption({ node: this.node.name, format: "qcow2", message: whole ? whole[1] : found.qemuMessage });
    this.header.incompatibleFeatures |= INCOMPAT_CORRUPT;
    try {
      await writeHeaderFields(this.file, this.header, ["incompatibleFeatures"]);
    } catch {
      // The in-memory flag still refuses changes; the original error is what the caller sees.
    }
  }
}
