/**
 * The driver interface: what a protocol, format or filter driver implements.
 * Every callback is optional; the core (`BlockNode`) does bounds
 * checks, alignment, serialisation, FUA emulation and flush bookkeeping once,
 * and a filter that leaves a callback out passes that operation to its child.
 *
 * The interfaces that mention a node take it as a type parameter `N`, so
 * this module depends on nothing; `core/node.ts` binds them to `BlockNode`
 * (`DriverInstance`, `BlockDriver`, `OpenContext`, ...), the names drivers
 * use.
 *
 * @module
 */

import type { BlkdebugEvent } from "./events.ts";

/** Roles a child can have under its parent (QEMU's child names). */
export type ChildRole = "file" | "backing" | "data-file" | "image" | string;

/** What kind of node a driver makes. */
export type DriverKind = "protocol" | "format" | "filter";

/** The operations a request can be. */
export type RequestOp =
  | "read"
  | "write"
  | "write-zeroes"
  | "discard"
  | "flush"
  | "block-status"
  | "truncate";

/**
 * One request as it travels down the graph. A parent driver passes the
 * request it is serving to its children, so an event or an error deep in the
 * graph can name the top-level request that caused it.
 */
export interface RequestInfo {
  /** Process-wide request number. */
  readonly id: number;
  /** What the top-level request was. */
  readonly op: RequestOp;
  /** Node the request entered the graph at. */
  readonly node: string;
  /** Byte offset of the top-level request. */
  readonly offset: number;
  /** Byte length of the top-level request. */
  readonly length: number;
}

/** Per-request options for writes. */
export interface WriteOptions {
  /** Force unit access: the data is durable when the write resolves. */
  fua?: boolean;
  /**
   * Write the data compressed (QEMU's BDRV_REQ_WRITE_COMPRESSED): one whole
   * cluster at a cluster-aligned offset (or the image's shorter last
   * cluster). The node dispatches it to the driver's `pwriteCompressed`;
   * filters pass it down; other drivers refuse it with ENOTSUP.
   */
  compressed?: boolean;
  /** The request this write serves (set by parent drivers). */
  req?: RequestInfo;
}

/** Per-request options for reads and other operations. */
export interface RequestOptions {
  /** The request this operation serves (set by parent drivers). */
  req?: RequestInfo;
}

/** Options for write-zeroes. */
export interface WriteZeroesOptions extends WriteOptions {
  /** The range may be deallocated, as long as it reads back as zeros. */
  mayUnmap?: boolean;
  /** Fail with ENOTSUP instead of writing zero buffers when no fast path exists. */
  noFallback?: boolean;
}

/** Options for truncate. */
export interface TruncateOptions extends RequestOptions {
  /** Preallocation for the grown part: off (default), metadata, falloc, full. */
  prealloc?: "off" | "metadata" | "falloc" | "full";
  /**
   * Set by the core when the first `zeroFill` bytes of the grown part must
   * read as zeros (a longer backing file would show through): the core
   * zeroes them after the resize without falling back to writing zero
   * buffers, so a driver that cannot must refuse before changing anything.
   */
  zeroFill?: number;
}

/** Size limits a driver declares; the core splits and pads requests to fit. */
export interface BlockLimits {
  /** Reads and writes are padded to multiples of this (power of two). */
  requestAlignment: number;
  /** Largest read or write passed to the driver in one call (0 = no limit). */
  maxTransfer: number;
  /** Preferred write-zeroes granularity (0 = none). */
  optWriteZero: number;
  /** Largest write-zeroes passed in one call (0 = no limit). */
  maxWriteZero: number;
  /** Preferred discard granularity (0 = none). */
  optDiscard: number;
  /** Largest discard passed in one call (0 = no limit). */
  maxDiscard: number;
}

/** Allocation state of a range, as `blockStatus` reports it. */
export interface BlockStatusOf<N> {
  /** Start of the extent (the requested offset). */
  offset: number;
  /** Length of the extent; at least 1 byte, at most the requested length. */
  length: number;
  /** The range holds data (QEMU's BDRV_BLOCK_DATA). */
  data: boolean;
  /** The range reads as zeros (BDRV_BLOCK_ZERO). */
  zero: boolean;
  /** This node (not a backing file) defines the content (BDRV_BLOCK_ALLOCATED). */
  allocated: boolean;
  /**
   * Some layer of the backing chain (this node or one below it) defines the
   * content — qemu-img map's `present`. False for a range that is a hole in
   * every layer; a zero cluster in a backing file is present at its depth.
   * Absent means the same as `allocated`.
   */
  present?: boolean;
  /** How many backing layers down the content comes from (0 = this node; the bottom layer when none defines it). */
  depth?: number;
  /** Where the data lives in {@linkcode BlockStatus.file}, when known. */
  hostOffset?: number;
  /** The protocol node holding the data at `hostOffset`. */
  file?: N;
  /** The range is compressed (qcow2). */
  compressed?: boolean;
}

/**
 * A request passing through a filter, as its `intercept` hook sees it
 * (nbdkit's `next` pattern): what it is and where; the filter calls `next()`
 * to pass it on unchanged, or fails it, delays it, or logs around it.
 */
export interface FilterCall {
  /** The operation at this node. */
  readonly op: RequestOp;
  /** Byte offset (the new length for `truncate`; 0 for `flush`). */
  readonly offset: number;
  /** Byte length (0 for `flush` and `truncate`). */
  readonly length: number;
  /** The data of a write. */
  readonly data?: Uint8Array;
  /** A FUA write or write-zeroes. */
  readonly fua?: boolean;
  /** A compressed write. */
  readonly compressed?: boolean;
  /** The top-level request it serves. */
  readonly req?: RequestInfo;
}

/**
 * Synchronous I/O a protocol driver can offer for the last-chance
 * write-back when the process exits through `Deno.exit()` (the `unload`
 * event runs no async code).
 */
export interface SyncIo {
  /** Writes `data` at `offset` now. */
  pwrite(offset: number, data: Uint8Array): void;
  /** Makes what was written durable now. */
  flush(): void;
}

/** Options for a consistency check. */
export interface CheckOptions {
  /** Repair: `leaks` drops leaked references, `all` also fixes corruptions. */
  repair?: "leaks" | "all";
  /**
   * Receives each line the check reports, as it is reported (qemu-img's
   * stderr); the result's `messages` then stays empty, so a check of a badly
   * damaged image does not keep millions of lines in memory.
   */
  onMessage?: (line: string) => void;
}

/**
 * What a consistency check found (QEMU's BdrvCheckResult); the fields mean
 * what `qemu-img check --output=json`'s kebab-case fields mean.
 */
export interface CheckResult {
  /** Refcounts too low and other metadata errors. */
  corruptions: number;
  /** Refcounts too high (wasted space). */
  leaks: number;
  /** Errors that stopped part of the check. */
  checkErrors: number;
  /** Corruptions repaired. */
  corruptionsFixed: number;
  /** Leaks repaired. */
  leaksFixed: number;
  /** End of the last used host cluster. */
  imageEndOffset: number;
  /** Guest clusters of the virtual disk. */
  totalClusters: number;
  /** Guest clusters allocated. */
  allocatedClusters: number;
  /** Allocated clusters not following their predecessor. */
  fragmentedClusters: number;
  /** Compressed clusters. */
  compressedClusters: number;
  /** What the check reported, one line each ("Leaked cluster 5 refcount=1 reference=0"); empty with `onMessage`. */
  messages: string[];
}

/** One internal snapshot of an image (QEMU's QEMUSnapshotInfo). */
export interface SnapshotInfo {
  /** Snapshot ID (unique in the image). */
  id: string;
  /** Snapshot name (tag). */
  name: string;
  /** Size of the saved VM state in bytes. */
  vmStateSize: number;
  /** Creation time, seconds since the epoch. */
  dateSec: number;
  /** Creation time, nanoseconds part. */
  dateNsec: number;
  /** VM clock at creation, nanoseconds. */
  vmClockNsec: number;
  /** Guest instructions executed at creation, when recorded. */
  icount?: number;
}

/** Format options as `qemu-img create -o` / `amend -o` give them. */
export type FormatOptions = Record<string, string | number | boolean>;

/** Options for {@linkcode DriverInstance.amend}. */
export interface AmendOptions {
  /** Allow changes that lose information (qemu-img amend `--force`). */
  force?: boolean;
}

/**
 * Kinds of metadata a format keeps in its file (qcow2's names; other formats
 * may add their own).
 */
export type MetadataKind =
  | "header"
  | "l1"
  | "l2"
  | "refcount-table"
  | "refcount-block"
  | "snapshot-table"
  | "snapshot-l1"
  | "snapshot-l2"
  | "bitmap-directory"
  | "bitmap-table"
  | "bitmap-data"
  | "crypto-header"
  | string;

/** One stretch of a format's metadata in its file. */
export interface MetadataExtent {
  /** What the bytes hold. */
  kind: MetadataKind;
  /** Byte offset in the format's `file` child. */
  offset: number;
  /** Length in bytes (whole clusters for qcow2). */
  length: number;
  /** What it belongs to, for people ("L2 table 3", "snapshot 'before'"). */
  label?: string;
}

/** One dirty bitmap of an image (QEMU's BlockDirtyInfo). */
export interface BitmapInfo {
  /** Bitmap name (unique in the image). */
  name: string;
  /** Bytes per bit. */
  granularity: number;
  /** Dirty bytes, counted in whole chunks of `granularity` (QEMU's `count`). */
  count: number;
  /** Records writes (enabled; the qcow2 `auto` flag). */
  recording: boolean;
  /** Stored in the image (persistent). */
  persistent: boolean;
  /**
   * The image was not closed cleanly while the bitmap was in use (qcow2
   * `in-use` flag at open): its content is lost and only removal is allowed.
   */
  inconsistent: boolean;
}

/** Options for {@linkcode DriverInstanceOf.bitmapAdd} (qemu-img bitmap `--add`). */
export interface BitmapAddOptions {
  /** Bytes per bit: a power of two of at least 512 (default: the cluster size, within 4 KiB..64 KiB, as QEMU picks it). */
  granularity?: number;
  /** Created disabled: it records nothing until enabled. */
  disabled?: boolean;
}

/** A run of equal state in a dirty bitmap. */
export interface DirtyExtent {
  /** Start of the run (bytes). */
  offset: number;
  /** Length of the run (bytes, at least 1 inside the disk). */
  length: number;
  /** The run is dirty (was written since the bitmap was cleared). */
  dirty: boolean;
}

/** Driver callbacks as the driver sees them (mirror of the node's operations). */
export interface DriverInstanceOf<N> {
  /** Limits for this node; missing fields default (alignment 1, no limits). */
  limits?: Partial<BlockLimits>;
  /**
   * The driver checks requests against its length itself (the core then
   * skips its past-the-end check); raw windows use it to fail writes with
   * ENOSPC as QEMU's raw format does.
   */
  checksBounds?: boolean;
  /** Handles FUA itself; otherwise the core follows a FUA write with a flush. */
  supportsFua?: boolean;
  /**
   * A filter's one hook around every request it passes to its primary
   * child (read, write, write-zeroes, discard, flush, block status,
   * truncate): call `next()` to pass it on. Operations the filter implements
   * itself (`pread`, ...) do not come here.
   */
  intercept?<T>(call: FilterCall, next: () => Promise<T>): Promise<T>;
  /**
   * A new image reads as zeros where nothing was written (QEMU's
   * `bdrv_has_zero_init`). Default true; false for encrypted formats,
   * whose unwritten sectors decrypt to noise, so copies must write zeros.
   */
  zeroInit?: boolean;
  /** Reads `buf.length` bytes at `offset` into `buf`. */
  pread?(offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> | void;
  /** Synchronous I/O for the exit write-back (protocol drivers whose I/O is synchronous: `file`). */
  readonly syncIo?: SyncIo;
  /**
   * At `Deno.exit()` with the node still open: writes back what the driver
   * caches, synchronously. Returns false when it could not do so safely
   * (the data is then lost as in a crash; the image stays consistent).
   */
  exitSync?(): boolean;
  /** Writes `data` at `offset`. */
  pwrite?(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> | void;
  /** Writes one cluster compressed (a write with `compressed`; the node checks bounds and permissions). */
  pwriteCompressed?(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> | void;
  /** Makes `[offset, offset+length)` read as zeros. */
  pwriteZeroes?(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> | void;
  /** Discards a range (advisory: content afterwards is unspecified). */
  pdiscard?(offset: number, length: number, opts: RequestOptions): Promise<void> | void;
  /** Writes back driver caches to the children (QEMU's flush_to_os). */
  flushToOs?(opts: RequestOptions): Promise<void> | void;
  /** Makes everything written durable (QEMU's flush_to_disk); protocol nodes. */
  flush?(opts: RequestOptions): Promise<void> | void;
  /** Reports the allocation state of the extent starting at `offset`. */
  blockStatus?(offset: number, length: number, opts: RequestOptions): Promise<BlockStatusOf<N>> | BlockStatusOf<N>;
  /** Current length in bytes. */
  getLength?(): number;
  /** Changes the length. */
  truncate?(length: number, opts: TruncateOptions): Promise<void> | void;
  /** Releases resources (children are closed by the core afterwards). */
  close?(): Promise<void> | void;
  /** Receives a BLKDBG event raised by a parent on this node (blkdebug). */
  debugEvent?(event: BlkdebugEvent, req: RequestInfo | undefined): Promise<void> | void;
  /** Where the format's metadata lies in its file, sorted by offset (for `map --output=svg`). */
  metadataExtents?(): Promise<MetadataExtent[]> | MetadataExtent[];
  /** Driver-specific information for `info` (format-specific data). */
  info?(): Promise<Record<string, unknown>> | Record<string, unknown>;
  /** Drops all data of this layer, so it reads from its backing file or as zeros (QEMU's bdrv_make_empty). */
  makeEmpty?(opts: RequestOptions): Promise<void> | void;
  /** Changes format options of the open image in place (qemu-img amend). */
  amend?(options: FormatOptions, opts: AmendOptions): Promise<void> | void;
  /** Records a new backing file name and format in the image (QEMU's bdrv_change_backing_file; `undefined` removes it). */
  changeBackingFile?(name: string | undefined, format: string | undefined): Promise<void> | void;
  /** Checks (and optionally repairs) the image's metadata (QEMU's bdrv_check). */
  check?(opts: CheckOptions): Promise<CheckResult>;
  /** Lists the image's internal snapshots (QEMU's bdrv_snapshot_list). */
  snapshotList?(): Promise<SnapshotInfo[]> | SnapshotInfo[];
  /** Creates an internal snapshot of the current state (`id` empty: the driver picks one). */
  snapshotCreate?(info: SnapshotInfo): Promise<void> | void;
  /** Deletes the snapshot whose ID or name is `idOrName`. */
  snapshotDelete?(idOrName: string): Promise<void> | void;
  /** Reverts the image to the snapshot whose ID or name is `idOrName`. */
  snapshotGoto?(idOrName: string): Promise<void> | void;
  /** The driver can store persistent dirty bitmaps in the image (qcow2 version 3). */
  persistentBitmaps?: boolean;
  /** The image's dirty bitmaps, in directory order. */
  bitmapList?(): Promise<BitmapInfo[]> | BitmapInfo[];
  /** Adds a persistent dirty bitmap (qemu-img bitmap --add). */
  bitmapAdd?(name: string, opts: BitmapAddOptions): Promise<void> | void;
  /** Removes a dirty bitmap from the image (--remove). */
  bitmapRemove?(name: string): Promise<void> | void;
  /** Marks the whole bitmap clean (--clear). */
  bitmapClear?(name: string): Promise<void> | void;
  /** Starts (`true`) or stops recording writes (--enable / --disable). */
  bitmapSetEnabled?(name: string, enabled: boolean): Promise<void> | void;
  /**
   * Marks dirty every chunk of bitmap `name` that holds a byte of `dirty`'s
   * ranges (--merge); the ranges come from another bitmap of this image or
   * of another one of the same size.
   */
  bitmapMerge?(name: string, dirty: AsyncIterable<DirtyExtent>): Promise<void>;
  /** The run of equal state in bitmap `name` from `offset`, at most `length` bytes. */
  bitmapExtent?(name: string, offset: number, length: number): Promise<DirtyExtent> | DirtyExtent;
  /** Reads saved VM state at byte `pos` of the image's VM state area (QEMU's bdrv_load_vmstate). */
  loadVmstate?(pos: number, buf: Uint8Array): Promise<void> | void;
  /** Writes VM state at byte `pos` of the image's VM state area (QEMU's bdrv_save_vmstate). */
  saveVmstate?(pos: number, data: Uint8Array): Promise<void> | void;
  /** Suspends the next request that raises `event`, tagging it `tag` (blkdebug breakpoints). */
  debugBreakpoint?(event: string, tag: string): void;
  /** Removes breakpoint `tag` and resumes requests held there. */
  debugRemoveBreakpoint?(tag: string): void;
  /** Resumes the request suspended at `tag`. */
  debugResume?(tag: string): void;
  /** Whether a request is suspended at `tag`. */
  debugIsSuspended?(tag: string): boolean;
  /** Resolves when a request is suspended at `tag`. */
  debugWaitBreak?(tag: string): Promise<void>;
}

/** Everything a driver's `open` gets. */
export interface OpenContextOf<N> {
  /** The node being opened (children can be attached through it). */
  readonly node: N;
  /** The node's options, with children's options removed. */
  readonly options: Record<string, unknown>;
  /** The node is opened read-only. */
  readonly readOnly: boolean;
  /**
   * Read-only node that lets others write the image meanwhile (QEMU's
   * `force-share`, qemu-img's `-U`): protocol drivers share every permission.
   */
  readonly forceShare?: boolean;
  /**
   * The node will not be read or written, only described (QEMU's
   * BDRV_O_NO_IO, used by qemu-img info): drivers may skip what only I/O
   * needs, such as unlocking an encryption key.
   */
  readonly noIo?: boolean;
  /**
   * Opens a child from the child spec found under `role` in the parent's
   * options (or `spec` when given) and attaches it.
   */
  openChild(
    role: ChildRole,
    spec?: unknown,
    opts?: { readOnly?: boolean; probe?: boolean; optional?: boolean },
  ): Promise<N | undefined>;
  /**
   * The child spec given under `role` as is: undefined when absent, null when
   * the child was explicitly disabled (`backing: null`).
   */
  childSpec?(role: ChildRole): unknown;
  /**
   * Opened for a consistency check (QEMU's BDRV_O_CHECK, `qemu-img check`):
   * the driver opens images it would otherwise refuse (corrupt bit set, dirty
   * refcounts) without repairing or changing anything at open.
   */
  readonly check?: boolean;
  /** The driver was chosen by probing the image's first bytes (QEMU's `bs->probed`). */
  readonly probed?: boolean;
}

/** Everything a driver's `create` gets. */
export interface CreateContextOf<N> {
  /** The protocol node the image is written to (already empty). */
  readonly file: N;
  /** Virtual size in bytes. */
  readonly size: number;
  /** Format options (`cluster_size`, `compat`, ...), values as given. */
  readonly options: Record<string, string | number | boolean>;
  /** Filename of the image, when it is a host file. */
  readonly filename?: string;
}

/** One creation or amend option as `qemu-img create -o help` lists it. */
export interface OptionHelp {
  /** Option name (`cluster_size`). */
  readonly name: string;
  /** Value type as QEMU shows it. */
  readonly type: "str" | "size" | "num" | "bool";
  /** One-line description. */
  readonly help: string;
}

/** What {@linkcode BlockDriver.checkCreate} validates: a creation without its file. */
export type CheckCreateContext = Omit<CreateContextOf<unknown>, "file">;

/** A block driver: a name, a kind, and how to open (and create) nodes. */
export interface BlockDriverOf<N> {
  /** Driver name as in QEMU (`"qcow2"`, `"file"`, `"blkdebug"`). */
  readonly name: string;
  /** Protocol, format or filter. */
  readonly kind: DriverKind;
  /** Scores how much `head` (the first bytes of a file) looks like this format. */
  probe?(head: Uint8Array, filename?: string): number;
  /** Filename prefix this protocol or filter parses (`"blkdebug"`, `"nbd"`). */
  readonly protocolPrefix?: string;
  /** Turns a prefixed filename into options. */
  parseFilename?(filename: string): Record<string, unknown>;
  /**
   * Every runtime option the driver takes, besides the keys naming its
   * children and the options every node takes (`driver`, `node-name`,
   * `read-only`, `cache`, `discard`, `detect-zeroes`, `force-share`).
   * drivers/README.md describes each one; unknown keys are refused with
   * this list.
   */
  readonly options?: readonly string[];
  /** Option keys that name children (default: `file`). */
  readonly childKeys?: readonly string[];
  /**
   * The child a filter passes requests to and BLKDBG events and breakpoints
   * walk down to (QEMU's primary child); default `file` (blkdebug: `image`).
   */
  readonly primaryChildRole?: ChildRole;
  /**
   * Creates the object a new image is written to, for protocols that are
   * not host files (QEMU's protocol-level create: an RBD image, say).
   * `options` are what {@linkcode BlockDriverOf.parseFilename} made of the
   * target name; `size` is the size to create it with. Fails with EEXIST
   * when the object exists.
   */
  createFile?(options: Record<string, unknown>, size: number): Promise<void>;
  /** Opens a node: returns the instance whose callbacks serve requests. */
  open(ctx: OpenContextOf<N>): Promise<DriverInstanceOf<N>>;
  /** Writes a new, empty image of this format onto `ctx.file`. */
  create?(ctx: CreateContextOf<N>): Promise<void>;
  /**
   * Validates creation options and size without touching any file, with
   * the errors `create` would raise (so a failed `qemu-img create` leaves
   * nothing behind and prints nothing first).
   */
  checkCreate?(ctx: CheckCreateContext): Promise<void> | void;
  /**
   * The creation options this driver takes (for `-o help`). A protocol
   * driver's options that the format does not take itself are handed to
   * the protocol node when an image is created (the file driver's
   * `extent_size_hint`, `nocow`).
   */
  readonly createOptions?: readonly OptionHelp[];
  /** The options `amend` takes (for `amend -o help`). */
  readonly amendOptions?: readonly OptionHelp[];
  /** Computes the size an image of this format needs (qemu-img measure). */
  measure?(input: MeasureInputOf<N>): Promise<MeasureResult> | MeasureResult;
}

/** What {@linkcode BlockDriver.measure} is asked about. */
export interface MeasureInputOf<N> {
  /** Virtual size of the new image. */
  size: number;
  /** Format options of the new image (`cluster_size`, ...). */
  options: FormatOptions;
  /** The image whose data would be converted into it, if any (its allocation is counted). */
  source?: N;
}

/** The answer of {@linkcode BlockDriver.measure} (qemu-img measure's fields). */
export interface MeasureResult {
  /** Bytes the image needs for the source's data. */
  required: number;
  /** Bytes of the image fully allocated. */
  fullyAllocated: number;
  /** Bytes of persistent bitmaps to copy (qcow2 with `--bitmaps`), when counted. */
  bitmaps?: number;
}
