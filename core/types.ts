/**
 * The driver interface: what a protocol, format or filter driver implements.
 * Every callback is optional; the core (`BlockNode`) does bounds
 * checks, alignment, serialisation, FUA emulation and flush bookkeeping once,
 * and a filter that leaves a callback out passes that operation to its child.
 *
 * The interfaces that mention a node take it as a type parameter `N`, so
 * this module depends on nothing; `core/node.ts` binds them to `BlockNode`
 * (`DriverInstance`, `BlockDriver`, `OpenContext`, ...), the names drivers
 * use. The request vocabulary (`_request_types.ts`) and the types of the
 * image operations (`_image_types.ts`) are re-exported from here.
 *
 * @module
 */

import type { BlkdebugEvent } from "./events.ts";
import type {
  BlockLimits,
  BlockStatusOf,
  FilterCall,
  RequestInfo,
  RequestOptions,
  SyncIo,
  TruncateOptions,
  TruncateResult,
  WriteOptions,
  WriteZeroesOptions,
} from "./_request_types.ts";
import type {
  AmendOptions,
  BitmapAddOptions,
  BitmapInfo,
  CheckOptions,
  CheckResult,
  DirtyExtent,
  FormatOptions,
  MeasureInputOf,
  MeasureResult,
  MetadataExtent,
  SnapshotInfo,
} from "./_image_types.ts";

export type * from "./_request_types.ts";
export type * from "./_image_types.ts";

/** Roles a child can have under its parent (QEMU's child names). */
export type ChildRole = "file" | "backing" | "data-file" | "image" | string;

/** What kind of node a driver makes. */
export type DriverKind = "protocol" | "format" | "filter";

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
  /**
   * `false`: a removable-media device without its medium (a CD-ROM drive
   * without a disc); the core fails every request on this node and the nodes
   * above it with ENOMEDIUM, as QEMU's `bdrv_is_inserted`.
   */
  readonly inserted?: boolean;
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
  /**
   * Copies `length` bytes at `offset` to `dstOffset` of `dst`, the instance
   * of another protocol node, without passing them through memory (copy
   * offloading, QEMU's bdrv_co_copy_range; `file`: copy_file_range(2)).
   * ENOTSUP when it cannot reach `dst`. Called by `BlockNode.copyRange`.
   */
  copyRange?(offset: number, length: number, dst: DriverInstanceOf<N>, dstOffset: number, opts: RequestOptions): Promise<void> | void;
  /**
   * For a format whose mapping is fixed (raw): the child and offset a write
   * of `[offset, offset+length)` lands on, so copy offloading can write
   * there; undefined when this range cannot take one.
   */
  copyRangeTarget?(offset: number, length: number): { node: N; offset: number } | undefined;
  /** Makes `[offset, offset+length)` read as zeros. */
  pwriteZeroes?(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> | void;
  /** Discards a range (advisory: content afterwards is unspecified). */
  pdiscard?(offset: number, length: number, opts: RequestOptions): Promise<void> | void;
  /** Writes back driver caches to the children (QEMU's flush_to_os). */
  flushToOs?(opts: RequestOptions): Promise<void> | void;
  /**
   * Flushes the node's children itself, instead of the core flushing each
   * writable one and failing at the first error (quorum: succeeds when
   * enough of them do).
   */
  flushChildren?(opts: RequestOptions): Promise<void>;
  /** Makes everything written durable (QEMU's flush_to_disk); protocol nodes. */
  flush?(opts: RequestOptions): Promise<void> | void;
  /** Reports the allocation state of the extent starting at `offset`. */
  blockStatus?(offset: number, length: number, opts: RequestOptions): Promise<BlockStatusOf<N>> | BlockStatusOf<N>;
  /** Current length in bytes. */
  getLength?(): number;
  /**
   * Bytes the node occupies on its storage (a host file: its allocated
   * blocks, `st_blocks * 512`), QEMU's bdrv_get_allocated_file_size;
   * undefined when unknown. Without it the core asks the children.
   */
  allocatedSize?(): Promise<number | undefined> | number | undefined;
  /** Changes the length; says when it made a `zeroFill` part read as zeros itself. */
  truncate?(length: number, opts: TruncateOptions): Promise<TruncateResult | void> | TruncateResult | void;
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

/** What a driver's `exactFilename` sees. */
export interface ExactFilenameContext {
  /** The node's own options, as given. */
  readonly options: Readonly<Record<string, unknown>>;
  /** Its strong options and its children's (QEMU's full_open_options). */
  readonly full: Readonly<Record<string, unknown>>;
  /** A child's exact filename, if it has one. */
  child(role: ChildRole): string | undefined;
}

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
  /**
   * Scores a plain filename for a protocol driver of host devices (QEMU's
   * `bdrv_probe_device`): the highest score above 0 opens the name instead
   * of `file` (a block or character device gets `host_device`).
   */
  probeDevice?(filename: string): number;
  /** Turns a prefixed filename into options. */
  parseFilename?(filename: string): Record<string, unknown>;
  /**
   * Options that change what the guest sees (QEMU's strong_runtime_opts):
   * given, they keep a node from being named by its file's name, and they
   * go into its `json:{...}` name. An entry ending in `.` is a prefix.
   */
  readonly strongOptions?: readonly string[];
  /**
   * Builds the plain name that reopens this node (QEMU's
   * bdrv_refresh_filename hook: `nbd://host:port/export`, `null-co://`),
   * or undefined when none says everything; see `refreshFilename`.
   */
  exactFilename?(ctx: ExactFilenameContext): string | undefined;
  /**
   * The directory relative names in the node resolve against (QEMU's
   * bdrv_dirname hook), or a thrown BlockError when there is none (quorum);
   * default: the primary child's, else the exact filename's directory.
   */
  dirname?(node: N): string;
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
  /**
   * A protocol whose objects are not created, only opened (QEMU's
   * bdrv_co_create_opts_simple: an NBD export): creating an image on one of
   * its names opens the object, which must exist, and writes the image
   * there. A prefixed protocol with neither this nor `createFile` (`null-co`,
   * `blkdebug`) refuses creation, as QEMU does.
   */
  readonly createOpensExisting?: boolean;
  /** Opens a node: returns the instance whose callbacks serve requests. */
  open(ctx: OpenContextOf<N>): Promise<DriverInstanceOf<N>>;
  /** Writes a new, empty image of this format onto `ctx.file`. */
  create?(ctx: CreateContextOf<N>): Promise<void>;
  /**
   * True when `create` with these options only sizes the file (raw without
   * preallocation): on a protocol whose `createFile` makes the object at
   * that size (an RBD image) the image is then complete and is not opened,
   * as QEMU's raw_co_create only creates the protocol's file.
   */
  createOnlySizes?(options: FormatOptions): boolean;
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
