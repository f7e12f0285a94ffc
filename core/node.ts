/**
 * The block node (QEMU's BlockDriverState): a driver instance with its
 * children, and the public face of the request path. The generic work
 * (bounds, alignment padding, splitting, serialisation, FUA emulation, flush
 * bookkeeping, BLKDBG event delivery) is done once, on the node's private
 * `NodeCore` (`_node_core.ts`): reads and writes in `_read_write.ts`,
 * write-zeroes and discard in `_zero_discard.ts`, flush in `_flush.ts`,
 * block status and resize in `_status_resize.ts`, image operations in
 * `_image_ops.ts`, range serialisation in `_tracker.ts`.
 *
 * @module
 */

import type { BlkdebugEvent } from "./events.ts";
import { newRequest, newStats, type NodeConfigOf, type NodeEventOf, type NodeListenerOf, type NodeStats } from "./request.ts";
import type * as t from "./types.ts";
import { NodeCore } from "./_node_core.ts";
import { readRequest, sectorOffset, writeRequest } from "./_read_write.ts";
import { discardRequest, zeroesRequest } from "./_zero_discard.ts";
import { flushCount, flushRequest } from "./_flush.ts";
import { statusRequest, truncateRequest } from "./_status_resize.ts";
import * as ops from "./_image_ops.ts";
import { copyRange } from "./_copy_range.ts";
import type { NodeBitmaps, NodeDebug, NodeSnapshots } from "./node_groups.ts";
import { Bitmaps, Debug, Snapshots } from "./_node_groups.ts";

/** Driver callbacks as the driver sees them (mirror of the node's operations); see `DriverInstanceOf` in `core/types.ts`. */
export type DriverInstance = t.DriverInstanceOf<BlockNode>;
/** A block driver: a name, a kind, and how to open (and create) nodes. */
export type BlockDriver = t.BlockDriverOf<BlockNode>;
/** Everything a driver's `open` gets. */
export type OpenContext = t.OpenContextOf<BlockNode>;
/** Everything a driver's `create` gets. */
export type CreateContext = t.CreateContextOf<BlockNode>;
/** Allocation state of a range, as `blockStatus` reports it. */
export type BlockStatus = t.BlockStatusOf<BlockNode>;
/** What `BlockDriver.measure` is asked about. */
export type MeasureInput = t.MeasureInputOf<BlockNode>;
/** What a node listener receives. */
export type NodeEvent = NodeEventOf<BlockNode>;
/** Receives node events; see {@linkcode BlockNode.addListener}. */
export type NodeListener = NodeListenerOf<BlockNode>;
/** How a node was configured; fixed at open. */
export type NodeConfig = NodeConfigOf<BlockNode>;

const NO_OPTS: t.RequestOptions = Object.freeze({});

/**
 * One node of a block graph. Open nodes with `open()` from `mod.ts`; drivers
 * build them through the core.
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * await using node = await open({ driver: "memory", size: 1 << 20 });
 * await node.pwrite(0, new Uint8Array(512).fill(0xab));
 * const buf = new Uint8Array(512);
 * await node.pread(0, buf);
 * console.log(buf[0]); // 171
 * ```
 */
export class BlockNode {
  /** Unique node name (QEMU's node-name). */
  readonly name: string;
  /** The driver that serves this node. */
  readonly driver: BlockDriver;
  /** Options the node was opened with (children removed). */
  readonly options: Readonly<Record<string, unknown>>;
  /** Children by role. */
  readonly children: Map<t.ChildRole, BlockNode> = new Map();
  /** Counters for benchmarks and tests. */
  readonly stats: NodeStats = newStats();
  /** The format of this node was guessed from the image's first bytes (QEMU's `bs->probed`). */
  readonly probed: boolean;
  /** Internal snapshots (qemu-img snapshot). */
  readonly snapshots: NodeSnapshots<BlockNode>;
  /** Dirty bitmaps (qemu-img bitmap). */
  readonly bitmaps: NodeBitmaps<BlockNode>;
  /** Breakpoints on BLKDBG events below this node (qemu-io break/resume). */
  readonly debug: NodeDebug;
  #c: NodeCore<BlockNode>;

  /** Creates an unopened node; the core attaches the driver instance. */
  constructor(config: NodeConfig) {
    this.name = config.name;
    this.driver = config.driver;
    this.options = config.options;
    this.probed = config.probed ?? false;
    this.#c = new NodeCore<BlockNode>(this, config);
    this.snapshots = new Snapshots(this.#c);
    this.bitmaps = new Bitmaps(this.#c);
    this.debug = new Debug(this.#c);
  }

  /**
   * Requests made on this node directly may go past its end, so a protocol
   * node grows when written past it (QEMU's `blk_set_allow_write_beyond_eof`;
   * `createImage` sets it while it writes a new image). Off by default:
   * reading or writing past the end of the node you hold is EIO, as through
   * QEMU's BlockBackend; parents' requests keep QEMU's internal zero-fill. */
  get allowBeyondEof(): boolean {
    return this.#c.allowBeyondEof;
  }

  set allowBeyondEof(on: boolean) {
    this.#c.allowBeyondEof = on;
  }

  /** Attaches the driver instance (done once by the opener). */
  attach(inst: DriverInstance): void {
    this.#c.attach(inst);
  }

  /** Attaches `child` under `role` (done by the opener); the child then serves a parent. */
  attachChild(role: t.ChildRole, child: BlockNode): void {
    this.#c.attachChild(role, child);
  }

  /** Another node holds this one as a child. */
  get hasParents(): boolean {
    return this.#c.parents > 0;
  }

  /** The driver instance serving this node. */
  get instance(): DriverInstance {
    return this.#c.inst;
  }

  /** Re-reads the driver's limits (after it changes them). */
  refreshLimits(): void {
    this.#c.refreshLimits();
  }

  /** The limits in force (after defaults). */
  get limits(): Readonly<t.BlockLimits> {
    return this.#c.limits;
  }

  /** The node refuses writes. */
  get readOnly(): boolean {
    return this.#c.readOnly;
  }

  /** The `file` child, if any. */
  get file(): BlockNode | undefined {
    return this.children.get("file");
  }

  /** The `backing` child, if any. */
  get backing(): BlockNode | undefined {
    return this.children.get("backing");
  }

  /** The child requests pass to and events walk down to: the driver's `primaryChildRole` (default `file`). */
  get primaryChild(): BlockNode | undefined {
    return this.#c.primaryChild;
  }

  /** Writes that grow the node are allowed and reads past the end give zeros. */
  get growable(): boolean {
    return this.#c.growable;
  }

  /** Current length in bytes. */
  get length(): number {
    return this.#c.length;
  }

  /** Unwritten ranges of a new image read as zeros (QEMU's `bdrv_has_zero_init`): the driver's `zeroInit`, through filters, true by default. */
  get hasZeroInit(): boolean {
    return ops.hasZeroInit(this.#c);
  }

  /** Whether the node has been closed. */
  get closed(): boolean {
    return this.#c.closed;
  }

  // ---- listeners and events -------------------------------------------

  /**
   * Calls `fn` for every BLKDBG event this node raises, every disk flush
   * its flush requests cause at or below it (the `node` field names the node
   * whose driver flushed), the begin and end of every request it serves, and
   * its filter's own events (throttle waits, injected errors).
   */
  addListener(fn: NodeListener): () => void {
    this.#c.listeners = [...this.#c.listeners, fn];
    return () => this.removeListener(fn);
  }

  /** Stops calling `fn`. */
  removeListener(fn: NodeListener): void {
    this.#c.listeners = this.#c.listeners.filter((l) => l !== fn);
  }

  /**
   * Raises a BLKDBG event, as QEMU's `BLKDBG_EVENT(bs->file, ev)`: listeners
   * of this node see it, and it is delivered to the `file` child (or the first
   * node below it whose driver handles events, such as blkdebug).
   */
  event(event: BlkdebugEvent, req?: t.RequestInfo): Promise<void> | void {
    return this.#c.event(event, req);
  }

  /**
   * Delivers an event to this node (QEMU's `bdrv_debug_event(bs, ev)`): the
   * first node from here down the primary-child chain that handles events
   * gets it.
   */
  debugEvent(event: BlkdebugEvent, req?: t.RequestInfo): Promise<void> | void {
    return this.#c.debugEvent(event, req);
  }

  /** Some listener is attached: a filter tests this before it builds an event for {@linkcode BlockNode.emit}. */
  get listening(): boolean {
    return this.#c.listeners.length > 0;
  }

  /** Reports a filter's own event (a throttle wait, an injected error) to this node's listeners. */
  emit(e: NodeEvent): void {
    this.#c.notify(e);
  }

  // ---- requests -----------------------------------------------------------

  /** Reads `buf.length` bytes at `offset` into `buf`. */
  pread(offset: number, buf: Uint8Array, opts: t.RequestOptions = NO_OPTS): Promise<void> {
    return readRequest(this.#c, offset, buf, opts);
  }

  /** Reads `buf.length / 512` sectors starting at `sector`. */
  async read(sector: number, buf: Uint8Array, opts: t.RequestOptions = {}): Promise<void> {
    return await this.pread(sectorOffset(sector, buf.length, "read"), buf, opts);
  }

  /** Writes `data` at `offset`. */
  pwrite(offset: number, data: Uint8Array, opts: t.WriteOptions = NO_OPTS): Promise<void> {
    return writeRequest(this.#c, offset, data, opts);
  }

  /** Writes whole 512-byte sectors starting at `sector`. */
  async write(sector: number, data: Uint8Array, opts: t.WriteOptions = {}): Promise<void> {
    return await this.pwrite(sectorOffset(sector, data.length, "write"), data, opts);
  }

  /** Writes `data` at `offset`, then flushes; resolves when both are done. */
  async pwriteSync(offset: number, data: Uint8Array, opts: t.RequestOptions = {}): Promise<void> {
    await this.pwrite(offset, data, opts);
    await this.flush(opts);
  }

  /**
   * Copies `length` bytes at `offset` to `dstOffset` of `dst` by copy
   * offloading (QEMU's bdrv_co_copy_range, qemu-img convert -C): the data
   * goes from file to file (copy_file_range(2)) without being read into
   * memory; ranges that read as zeros become write-zeroes. ENOTSUP when the
   * graph cannot offload (no `file` node with FFI under both sides, a
   * compressed or encrypted source range, a target format that allocates on
   * write such as qcow2): copy the ordinary way then.
   */
  copyRange(offset: number, length: number, dst: BlockNode, dstOffset: number, opts: t.RequestOptions = NO_OPTS): Promise<void> {
    return copyRange<BlockNode>(this, offset, length, dst, dstOffset, opts);
  }

  /** Makes `[offset, offset+length)` read as zeros. */
  pwriteZeroes(offset: number, length: number, opts: t.WriteZeroesOptions = NO_OPTS): Promise<void> {
    return zeroesRequest(this.#c, offset, length, opts);
  }

  /** Discards a range; afterwards its content is unspecified (advisory). */
  pdiscard(offset: number, length: number, opts: t.RequestOptions = NO_OPTS): Promise<void> {
    return discardRequest(this.#c, offset, length, opts);
  }

  /**
   * Flushes: writes back driver caches (flush_to_os), makes this node's
   * writes durable (flush_to_disk, skipped when nothing was written since the
   * last flush), then flushes the writable children.
   */
  flush(opts: t.RequestOptions = NO_OPTS): Promise<void> {
    return flushRequest(this.#c, opts);
  }

  /** Number of flushes that reached a driver on this node and every node below it, whatever caused them. */
  get flushCount(): number {
    return flushCount(this.#c);
  }

  /**
   * Reports the allocation state of the extent starting at `offset` (at most
   * `length` bytes; the result's `length` says how far the state holds).
   */
  blockStatus(offset: number, length: number, opts: t.RequestOptions = NO_OPTS): Promise<BlockStatus> {
    return statusRequest(this.#c, offset, length, opts);
  }

  /**
   * Bytes the node occupies on its storage (QEMU's bdrv_get_allocated_file_size,
   * qemu-img info's disk size): a host file's allocated blocks, a format
   * node's sum over its file and data file; undefined when unknown.
   *
   * @example
   * ```ts
   * import { open } from "@blkgraph/blkgraph";
   * await using n = await open({ driver: "memory", size: 1 << 20 });
   * console.log(await n.allocatedSize()); // undefined
   * ```
   */
  allocatedSize(): Promise<number | undefined> {
    return ops.allocatedSize(this.#c);
  }

  /** Length in bytes. */
  getLength(): Promise<number> {
    return Promise.resolve(this.length);
  }

  /** Changes the length of the node. */
  truncate(length: number, opts: t.TruncateOptions = NO_OPTS): Promise<void> {
    return truncateRequest(this.#c, length, opts);
  }

  // ---- image operations (qemu-img verbs) -------------------------------

  /** Drops all data of the image's top layer so it reads from its backing file (or as zeros); `commit` uses it. */
  makeEmpty(opts: t.RequestOptions = {}): Promise<void> {
    const req = opts.req ?? newRequest(this.name, "discard", 0, this.length);
    return ops.imageOp(this.#c, "makeEmpty", "empty", true, (i) => i.makeEmpty!({ req }));
  }

  /** Changes format options of the open image in place (qemu-img amend). */
  amend(options: t.FormatOptions, opts: t.AmendOptions = {}): Promise<void> {
    return ops.imageOp(this.#c, "amend", "amend", true, (i) => i.amend!(options, opts));
  }

  /** Records a new backing file name and format in the image; `undefined` removes it (qemu-img rebase -u). */
  changeBackingFile(name: string | undefined, format: string | undefined): Promise<void> {
    return ops.imageOp(this.#c, "changeBackingFile", "change the backing file of", true, (i) => i.changeBackingFile!(name, format));
  }

  /**
   * Checks the image's metadata through the graph as opened (filters below
   * the format node see the check's I/O), optionally repairing it.
   */
  check(opts: t.CheckOptions = {}): Promise<t.CheckResult> {
    return ops.checkImage(this.#c, opts);
  }

  // ---- VM state (QEMU's bdrv_load_vmstate / bdrv_save_vmstate) --------

  /**
   * Reads `buf.length` bytes of saved VM state at `pos` (qemu-io `read -b`):
   * the VM state area of the first node down the primary-child chain whose
   * driver has one (qcow2 keeps it after the guest data).
   */
  loadVmstate(pos: number, buf: Uint8Array): Promise<void> {
    return ops.vmstateOp(this.#c, "loadVmstate", "read the VM state of", false, pos, buf.length, (i) => i.loadVmstate!(pos, buf));
  }

  /** Writes VM state at `pos` (qemu-io `write -b`); see {@linkcode BlockNode.loadVmstate}. */
  saveVmstate(pos: number, data: Uint8Array): Promise<void> {
    return ops.vmstateOp(this.#c, "saveVmstate", "write the VM state of", true, pos, data.length, (i) => i.saveVmstate!(pos, data));
  }

  /**
   * Where the format keeps its metadata in its file (qcow2: header, L1 and
   * L2 tables, refcount table and blocks, snapshots, bitmaps), sorted by
   * offset; from this node or the first one below its filters that has it.
   */
  metadataExtents(): Promise<t.MetadataExtent[]> {
    return ops.imageOp(this.#c, "metadataExtents", "list the metadata of", false, (i) => i.metadataExtents!());
  }

  /** Synchronous I/O of a protocol node whose driver offers it (for the exit write-back); undefined otherwise. */
  get syncIo(): t.SyncIo | undefined {
    return this.driver.kind === "protocol" && !this.#c.closed ? this.#c.inst.syncIo : undefined;
  }

  /**
   * The last-chance write-back at `Deno.exit()` with the node still open
   * (the `unload` event runs no async code): the driver writes back what it
   * caches synchronously, and a protocol node makes its writes durable.
   * Returns false when that could not be done safely.
   */
  exitSync(): boolean {
    return ops.exitSync(this.#c);
  }

  /** Driver-specific information (for `info`), from this node or the first one below its filters that has some. */
  async info(): Promise<Record<string, unknown>> {
    const n = ops.implementer(this.#c, "info");
    return n ? await n.inst.info!() : {};
  }

  /** A compressed write (`{ compressed: true }`) on this node reaches a driver that supports it. */
  get supportsCompressedWrites(): boolean {
    return ops.implementer(this.#c, "pwriteCompressed") !== undefined;
  }

  /** The name of the format driver a user thinks of: this node's, or the first one's below its filters. */
  get formatName(): string {
    return ops.formatName(this.#c);
  }

  /** The node a user thinks of as the image: this node, or the first one below its filters. */
  get formatNode(): BlockNode {
    return ops.formatCore(this.#c).node;
  }

  /** Registers a callback run when the node closes (used by the graph registry). */
  onClose(fn: () => void): void {
    this.#c.onClose.push(fn);
  }

  /**
   * Closes the node: waits for requests in flight, flushes what was written
   * since the last flush (ignoring a flush error, as QEMU does), closes the
   * driver, then closes the children. The first error of a driver's close is
   * thrown after everything is closed.
   */
  close(): Promise<void> {
    return ops.closeNode(this.#c);
  }

  /** Closes the node (`await using`). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
