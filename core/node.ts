/**
 * The block node (QEMU's BlockDriverState): a driver instance with its
 * children, and the request path every operation goes through. The generic
 * work is done here once — bounds and overflow checks, alignment padding
 * with read-modify-write, splitting at the driver's max transfer, serialising
 * overlapping requests, FUA emulation, flush bookkeeping, BLKDBG event
 * delivery — so drivers never repeat it.
 *
 * The file is longer than the house ~500 lines on purpose: every operation
 * shares the node's private state (limits, request tracker, write
 * generations, listeners), and splitting the class would mean exposing it.
 * Request records and node types live in `request.ts`, range serialisation
 * in `_tracker.ts`.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { BlkdebugEvent } from "./events.ts";
import { MAX_LENGTH, newRequest, type NodeConfigOf, type NodeEventOf, type NodeListenerOf, roundUp, SECTOR_SIZE } from "./request.ts";
import type { NodeStats } from "./request.ts";
import { RequestTracker } from "./_tracker.ts";
import type {
  AmendOptions,
  BlockDriverOf,
  BlockLimits,
  BlockStatusOf,
  CheckOptions,
  CheckResult,
  ChildRole,
  CreateContextOf,
  DriverInstanceOf,
  FilterCall,
  FormatOptions,
  MeasureInputOf,
  MetadataExtent,
  OpenContextOf,
  RequestInfo,
  RequestOp,
  RequestOptions,
  SnapshotInfo,
  SyncIo,
  TruncateOptions,
  WriteOptions,
  WriteZeroesOptions,
} from "./types.ts";

/** Driver callbacks as the driver sees them (mirror of the node's operations); see `DriverInstanceOf` in `core/types.ts`. */
export type DriverInstance = DriverInstanceOf<BlockNode>;
/** A block driver: a name, a kind, and how to open (and create) nodes. */
export type BlockDriver = BlockDriverOf<BlockNode>;
/** Everything a driver's `open` gets. */
export type OpenContext = OpenContextOf<BlockNode>;
/** Everything a driver's `create` gets. */
export type CreateContext = CreateContextOf<BlockNode>;
/** Allocation state of a range, as `blockStatus` reports it. */
export type BlockStatus = BlockStatusOf<BlockNode>;
/** What `BlockDriver.measure` is asked about. */
export type MeasureInput = MeasureInputOf<BlockNode>;
/** What a node listener receives. */
export type NodeEvent = NodeEventOf<BlockNode>;
/** Receives node events; see {@linkcode BlockNode.addListener}. */
export type NodeListener = NodeListenerOf<BlockNode>;
/** How a node was configured; fixed at open. */
export type NodeConfig = NodeConfigOf<BlockNode>;

const ZERO_CHUNK = 1 << 20;

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
  readonly children: Map<ChildRole, BlockNode> = new Map();
  /** Counters for benchmarks and tests. */
  readonly stats: NodeStats = {
    reads: 0,
    writes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    writeZeroes: 0,
    discards: 0,
    flushRequests: 0,
    flushes: 0,
    flushesSkipped: 0,
  };
  /** The format of this node was guessed from the image's first bytes (QEMU's `bs->probed`). */
  readonly probed: boolean;
  /**
   * Requests made on this node directly may go past its end, so a protocol
   * node grows when written past it (QEMU's `blk_set_allow_write_beyond_eof`;
   * `createImage` sets it while it writes a new image). Off by default:
   * reading or writing past the end of the node you hold is EIO, as through
   * QEMU's BlockBackend; parents' requests keep QEMU's internal zero-fill.
   */
  allowBeyondEof = false;

  #inst: DriverInstance = {};
  #readOnly: boolean;
  #noFlush: boolean;
  #writeThrough: boolean;
  #limits: BlockLimits = defaultLimits();
  #tracker: RequestTracker = new RequestTracker();
  #writeGen = 0;
  #flushedGen = 0;
  #driverFlushes = 0;
  #parents = 0;
  #flushing: Promise<void> | null = null;
  #listeners: NodeListener[] = [];
  #closed = false;
  #onClose: (() => void)[] = [];

  /** Creates an unopened node; the core attaches the driver instance. */
  constructor(config: NodeConfig) {
    this.name = config.name;
    this.driver = config.driver;
    this.options = config.options;
    this.#readOnly = config.readOnly;
    this.#noFlush = config.noFlush ?? false;
    this.#writeThrough = config.writeThrough ?? false;
    this.probed = config.probed ?? false;
  }

  /** Attaches the driver instance (done once by the opener). */
  attach(inst: DriverInstance): void {
    this.#inst = inst;
    this.refreshLimits();
  }

  /** Attaches `child` under `role` (done by the opener); the child then serves a parent. */
  attachChild(role: ChildRole, child: BlockNode): void {
    const old = this.children.get(role);
    if (old) old.#parents--;
    this.children.set(role, child);
    child.#parents++;
  }

  /** Another node holds this one as a child. */
  get hasParents(): boolean {
    return this.#parents > 0;
  }

  /** The driver instance serving this node. */
  get instance(): DriverInstance {
    return this.#inst;
  }

  /** Re-reads the driver's limits (after it changes them). */
  refreshLimits(): void {
    const l = { ...defaultLimits(), ...this.#inst.limits };
    if (!Number.isInteger(l.requestAlignment) || l.requestAlignment < 1 || (l.requestAlignment & (l.requestAlignment - 1)) !== 0) {
      throw new BlockError("EINVAL", `Node '${this.name}': request alignment ${l.requestAlignment} is not a power of two`, {
        node: this.name,
      });
    }
    this.#limits = l;
  }

  /** The limits in force (after defaults). */
  get limits(): Readonly<BlockLimits> {
    return this.#limits;
  }

  /** The node refuses writes. */
  get readOnly(): boolean {
    return this.#readOnly;
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
    return this.children.get(this.driver.primaryChildRole ?? "file");
  }

  /** Writes that grow the node are allowed and reads past the end give zeros. */
  get growable(): boolean {
    if (this.driver.kind === "protocol") return true;
    if (this.driver.kind === "filter") return this.primaryChild?.growable ?? false;
    return false;
  }

  /** Current length in bytes. */
  get length(): number {
    if (this.#inst.getLength) return this.#inst.getLength();
    const child = this.primaryChild;
    if (child) return child.length;
    return 0;
  }

  /**
   * Unwritten ranges of a new image read as zeros (QEMU's
   * `bdrv_has_zero_init`): the driver's `zeroInit`, through filters, true
   * by default.
   */
  get hasZeroInit(): boolean {
    if (this.#inst.zeroInit !== undefined) return this.#inst.zeroInit;
    if (this.driver.kind === "filter") return this.primaryChild?.hasZeroInit ?? true;
    return true;
  }

  /** Whether the node has been closed. */
  get closed(): boolean {
    return this.#closed;
  }

  // ---- listeners and events -------------------------------------------

  /**
   * Calls `fn` for every BLKDBG event this node raises, every disk flush
   * its flush requests cause at or below it (the `node` field names the node
   * whose driver flushed), the begin and end of every request it serves, and
   * its filter's own events (throttle waits, injected errors).
   */
  addListener(fn: NodeListener): () => void {
    this.#listeners = [...this.#listeners, fn];
    return () => this.removeListener(fn);
  }

  /** Stops calling `fn`. */
  removeListener(fn: NodeListener): void {
    this.#listeners = this.#listeners.filter((l) => l !== fn);
  }

  /**
   * Raises a BLKDBG event, as QEMU's `BLKDBG_EVENT(bs->file, ev)`: listeners
   * of this node see it, and it is delivered to the `file` child (or the first
   * node below it whose driver handles events, such as blkdebug).
   */
  event(event: BlkdebugEvent, req?: RequestInfo): Promise<void> | void {
    if (this.#listeners.length) this.#notify({ kind: "blkdbg", event, node: this, time: performance.now(), req });
    const file = this.children.get("file");
    if (file) return file.debugEvent(event, req);
  }

  /**
   * Delivers an event to this node (QEMU's `bdrv_debug_event(bs, ev)`): the
   * first node from here down the primary-child chain that handles events
   * gets it.
   */
  debugEvent(event: BlkdebugEvent, req?: RequestInfo): Promise<void> | void {
    // deno-lint-ignore no-this-alias
    let n: BlockNode | undefined = this;
    while (n && !n.#inst.debugEvent) n = n.primaryChild;
    if (n) return n.#inst.debugEvent!(event, req);
  }

  /**
   * Raises a request-path event (pwritev*, flush_to_*) on this node's own
   * driver only, as QEMU's `bdrv_debug_event(bs, ev)`: a blkdebug node sees
   * the events of its own requests once, not again from every node above it.
   */
  #ownEvent(event: BlkdebugEvent, req: RequestInfo): Promise<void> | void {
    const inst = this.#inst;
    if (inst.debugEvent) return inst.debugEvent(event, req);
  }

  #notify(e: NodeEvent): void {
    for (const l of this.#listeners) l(e);
  }

  /** Some listener is attached: a filter tests this before it builds an event for {@linkcode BlockNode.emit}. */
  get listening(): boolean {
    return this.#listeners.length > 0;
  }

  /** Reports a filter's own event (a throttle wait, an injected error) to this node's listeners. */
  emit(e: NodeEvent): void {
    this.#notify(e);
  }

  /** Reports a request's begin and end to the listeners; called only when there are some. */
  async #span<T>(op: RequestOp, offset: number, length: number, opts: WriteOptions, run: (o: WriteOptions) => Promise<T>): Promise<T> {
    const req = opts.req ?? newRequest(this.name, op, offset, length);
    const base = { kind: "request", op, offset, length, node: this, req } as const;
    this.#notify({ ...base, phase: "begin", time: performance.now(), fua: opts.fua || undefined });
    try {
      const r = await run(opts.req ? opts : { ...opts, req });
      this.#notify({ ...base, phase: "end", time: performance.now() });
      return r;
    } catch (error) {
      this.#notify({ ...base, phase: "end", time: performance.now(), error });
      throw error;
    }
  }

  // ---- checks -----------------------------------------------------------

  #fail(code: "EIO" | "EINVAL" | "EROFS" | "ENOSPC", what: string, offset: number, length: number, why: string): never {
    throw new BlockError(code, `Cannot ${what} ${length} bytes at offset ${offset} on node '${this.name}': ${why}`, {
      node: this.name,
      offset,
      length,
    });
  }

  /**
   * Validates a request. On a node no parent holds (the node a user holds,
   * QEMU's BlockBackend), a request may not go past the end even of a
   * growable node, unless `allowBeyondEof` is set; under a parent, a
   * protocol node keeps QEMU's internal zero-fill and growth.
   */
  #check(what: string, offset: number, length: number, write: boolean): void {
    if (this.#closed) this.#fail("EIO", what, offset, length, "node is closed");
    if (!Number.isSafeInteger(offset) || offset < 0) this.#fail("EINVAL", what, offset, length, "offset must be a non-negative integer");
    if (!Number.isSafeInteger(length) || length < 0) this.#fail("EINVAL", what, offset, length, "length must be a non-negative integer");
    if (offset > MAX_LENGTH || length > MAX_LENGTH - offset) {
      this.#fail("EINVAL", what, offset, length, "request exceeds the maximum image size");
    }
    if (write && this.#readOnly) this.#fail("EROFS", what, offset, length, "node is read-only");
    if ((!this.growable || (this.#parents === 0 && !this.allowBeyondEof)) && !this.#inst.checksBounds) {
      const len = this.length;
      if (offset + length > len) this.#fail("EIO", what, offset, length, `request goes past the end of the image (length ${len})`);
    }
  }

  // ---- read ---------------------------------------------------------------

  /** Reads `buf.length` bytes at `offset` into `buf`. */
  pread(offset: number, buf: Uint8Array, opts: RequestOptions = {}): Promise<void> {
    if (this.#listeners.length) return this.#span("read", offset, buf.length, opts, (o) => this.#pread(offset, buf, o));
    return this.#pread(offset, buf, opts);
  }

  async #pread(offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
    const length = buf.length;
    this.#check("read", offset, length, false);
    if (length === 0) return;
    const req = opts.req ?? newRequest(this.name, "read", offset, length);
    const align = this.#limits.requestAlignment;
    const start = offset - (offset % align);
    const end = roundUp(offset + length, align);
    let t = this.#tracker.track(start, end, false);
    if (t instanceof Promise) t = await t;
    try {
      if (start === offset && end === offset + length) {
        await this.#readAligned(offset, buf, req);
      } else {
        const bounce = new Uint8Array(end - start);
        await this.#readAligned(start, bounce, req);
        buf.set(bounce.subarray(offset - start, offset - start + length));
      }
    } finally {
      this.#tracker.untrack(t);
    }
    this.stats.reads++;
    this.stats.bytesRead += length;
  }

  async #readAligned(offset: number, buf: Uint8Array, req: RequestInfo): Promise<void> {
    // Reads past the end of a growable node read zeros (QEMU's bdrv_aligned_preadv).
    let n = buf.length;
    if (this.growable) {
      const len = this.length;
      const avail = Math.max(0, Math.min(n, len - offset));
      if (avail < n) {
        buf.fill(0, avail);
        if (avail === 0) return;
        n = Math.min(n, roundUp(avail, this.#limits.requestAlignment));
        if (n < buf.length) buf = buf.subarray(0, n);
      }
    }
    const max = this.#limits.maxTransfer;
    if (!max || n <= max) return this.#readOne(offset, buf, req);
    for (let done = 0; done < n; done += max) {
      await this.#readOne(offset + done, buf.subarray(done, Math.min(n, done + max)), req);
    }
  }

  #readOne(offset: number, buf: Uint8Array, req: RequestInfo): Promise<void> | void {
    const inst = this.#inst;
    if (inst.pread) return inst.pread(offset, buf, { req });
    const child = this.#passThrough("read", offset, buf.length);
    if (inst.intercept) return inst.intercept({ op: "read", offset, length: buf.length, req }, () => child.pread(offset, buf, { req }));
    return child.pread(offset, buf, { req });
  }

  /** Passes a request to the primary child through the filter's `intercept` hook, if it has one. */
  #forward<T>(call: FilterCall, next: () => Promise<T>): Promise<T> {
    const inst = this.#inst;
    return inst.intercept ? inst.intercept(call, next) : next();
  }

  #passThrough(what: string, offset: number, length: number): BlockNode {
    const child = this.driver.kind === "filter" ? this.primaryChild : undefined;
    if (!child) {
      throw new BlockError(
        "ENOTSUP",
        `Cannot ${what} ${length} bytes at offset ${offset} on node '${this.name}': driver '${this.driver.name}' does not support it`,
        {
          node: this.name,
          offset,
          length,
        },
      );
    }
    return child;
  }

  /** Reads `buf.length / 512` sectors starting at `sector`. */
  async read(sector: number, buf: Uint8Array, opts: RequestOptions = {}): Promise<void> {
    return await this.pread(sectorOffset(sector, buf.length, "read"), buf, opts);
  }

  // ---- write --------------------------------------------------------------

  /** Writes `data` at `offset`. */
  pwrite(offset: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    if (this.#listeners.length) return this.#span("write", offset, data.length, opts, (o) => this.#pwrite(offset, data, o));
    return this.#pwrite(offset, data, opts);
  }

  async #pwrite(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const length = data.length;
    this.#check("write", offset, length, true);
    if (length === 0) return;
    const req = opts.req ?? newRequest(this.name, "write", offset, length);
    if (opts.compressed) return this.#writeCompressed(offset, data, req);
    const fua = (opts.fua ?? false) || this.#writeThrough;
    const align = this.#limits.requestAlignment;
    const start = offset - (offset % align);
    const end = roundUp(offset + length, align);
    let t = this.#tracker.track(start, end, true);
    if (t instanceof Promise) t = await t;
    try {
      if (start === offset && end === offset + length) {
        await this.#writeAligned(offset, data, fua, req);
      } else {
        await this.#writePadded(offset, data, start, end, fua, req);
      }
    } finally {
      this.#tracker.untrack(t);
    }
    this.stats.writes++;
    this.stats.bytesWritten += length;
  }

  async #writePadded(offset: number, data: Uint8Array, start: number, end: number, fua: boolean, req: RequestInfo): Promise<void> {
    const align = this.#limits.requestAlignment;
    const bounce = new Uint8Array(end - start);
    const headLen = offset - start;
    const tailStart = offset + data.length;
    if (headLen) {
      await this.#ownEvent("pwritev_rmw_head", req);
      await this.#readAligned(start, bounce.subarray(0, align), req);
      await this.#ownEvent("pwritev_rmw_after_head", req);
    }
    if (tailStart < end && (end - align >= start + align || !headLen)) {
      await this.#ownEvent("pwritev_rmw_tail", req);
      await this.#readAligned(end - align, bounce.subarray(bounce.length - align), req);
      await this.#ownEvent("pwritev_rmw_after_tail", req);
    }
    bounce.set(data, headLen);
    await this.#writeAligned(start, bounce, fua, req);
  }

  async #writeAligned(offset: number, data: Uint8Array, fua: boolean, req: RequestInfo): Promise<void> {
    await this.#ownEvent("pwritev", req);
    const max = this.#limits.maxTransfer;
    const nativeFua = fua && (this.#inst.supportsFua ?? false);
    if (!max || data.length <= max) {
      await this.#writeOne(offset, data, nativeFua, req);
    } else {
      for (let done = 0; done < data.length; done += max) {
        await this.#writeOne(offset + done, data.subarray(done, Math.min(data.length, done + max)), nativeFua, req);
      }
    }
    this.#writeGen++;
    await this.#ownEvent("pwritev_done", req);
    if (fua && !nativeFua) await this.flush({ req });
  }

  async #writeCompressed(offset: number, data: Uint8Array, req: RequestInfo): Promise<void> {
    const inst = this.#inst;
    const child = this.driver.kind === "filter" ? this.primaryChild : undefined;
    if (!inst.pwriteCompressed && !child) {
      throw new BlockError(
        "ENOTSUP",
        `Cannot write ${data.length} compressed bytes at offset ${offset} on node '${this.name}': compression not supported by driver '${this.driver.name}'`,
        { node: this.name, offset, length: data.length },
      );
    }
    let t = this.#tracker.track(offset, offset + data.length, true);
    if (t instanceof Promise) t = await t;
    try {
      await this.#ownEvent("pwritev", req);
      const o = { req, compressed: true };
      if (inst.pwriteCompressed) await inst.pwriteCompressed(offset, data, o);
      else if (inst.pwrite) await inst.pwrite(offset, data, o); // a filter forwards the flag
      else {await this.#forward({ op: "write", offset, length: data.length, data, compressed: true, req }, () =>
          child!.pwrite(offset, data, o));}
      this.#writeGen++;
      await this.#ownEvent("pwritev_done", req);
    } finally {
      this.#tracker.untrack(t);
    }
    this.stats.writes++;
    this.stats.bytesWritten += data.length;
  }

  #writeOne(offset: number, data: Uint8Array, fua: boolean, req: RequestInfo): Promise<void> | void {
    const inst = this.#inst;
    if (inst.pwrite) return inst.pwrite(offset, data, { fua, req });
    const child = this.#passThrough("write", offset, data.length);
    return this.#forward({ op: "write", offset, length: data.length, data, fua, req }, () => child.pwrite(offset, data, { fua, req }));
  }

  /** Writes whole 512-byte sectors starting at `sector`. */
  async write(sector: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    return await this.pwrite(sectorOffset(sector, data.length, "write"), data, opts);
  }

  /** Writes `data` at `offset`, then flushes; resolves when both are done. */
  async pwriteSync(offset: number, data: Uint8Array, opts: RequestOptions = {}): Promise<void> {
    await this.pwrite(offset, data, opts);
    await this.flush(opts);
  }

  // ---- write zeroes and discard ----------------------------------------

  /** Makes `[offset, offset+length)` read as zeros. */
  pwriteZeroes(offset: number, length: number, opts: WriteZeroesOptions = {}): Promise<void> {
    if (this.#listeners.length) return this.#span("write-zeroes", offset, length, opts, (o) => this.#pwriteZeroes(offset, length, o));
    return this.#pwriteZeroes(offset, length, opts);
  }

  async #pwriteZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    this.#check("write zeroes to", offset, length, true);
    if (length === 0) return;
    const req = opts.req ?? newRequest(this.name, "write-zeroes", offset, length);
    const fua = (opts.fua ?? false) || this.#writeThrough;
    let t = this.#tracker.track(offset, offset + length, true);
    if (t instanceof Promise) t = await t;
    try {
      await this.#ownEvent("pwritev_zero", req);
      await this.#zeroes(offset, length, { ...opts, fua: fua && (this.#inst.supportsFua ?? false), req });
      this.#writeGen++;
    } finally {
      this.#tracker.untrack(t);
    }
    this.stats.writeZeroes++;
    if (fua && !this.#inst.supportsFua) await this.flush({ req });
  }

  async #zeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    const inst = this.#inst;
    if (inst.pwriteZeroes) {
      // QEMU's bdrv_co_do_pwrite_zeroes: the driver gets the bulk aligned to its write-zeroes
      // granularity (the end of the node counts as aligned); an unaligned head and tail, and
      // whatever the driver answers ENOTSUP for, are written as zero buffers (unless noFallback).
      const zalign = Math.max(this.#limits.requestAlignment, this.#limits.optWriteZero || 1);
      const end = offset + length;
      const s = Math.min(roundUp(offset, zalign), end);
      const e = Math.max(s, end >= this.length ? end : end - (end % zalign));
      const maxZ = this.#limits.maxWriteZero;
      const max = maxZ ? Math.max(zalign, maxZ - (maxZ % zalign)) : Number.MAX_SAFE_INTEGER;
      if (s > offset) await this.#zeroPart(offset, s - offset, opts);
      for (let o = s; o < e; o += max) {
        const n = Math.min(max, e - o);
        try {
          await inst.pwriteZeroes(o, n, opts);
        } catch (err) {
          if (!(err instanceof BlockError && err.code === "ENOTSUP") || opts.noFallback) throw err;
          await this.#zeroBuffers(o, n, opts);
        }
      }
      if (end > e) await this.#zeroPart(e, end - e, opts);
      return;
    }
    const child = this.driver.kind === "filter" ? this.primaryChild : undefined;
    if (child) {
      return this.#forward(
        { op: "write-zeroes", offset, length, fua: opts.fua, req: opts.req },
        () => child.pwriteZeroes(offset, length, opts),
      );
    }
    if (opts.noFallback) {
      throw new BlockError(
        "ENOTSUP",
        `Cannot write zeroes to ${length} bytes at offset ${offset} on node '${this.name}': no fast path and fallback disallowed`,
        {
          node: this.name,
          offset,
          length,
        },
      );
    }
    await this.#zeroBuffers(offset, length, opts);
  }

  /**
   * Zeroes the grown part `[old, old + n)` a longer backing file would show
   * through in: an unaligned head as zero buffers (QEMU's qcow2_co_truncate
   * writes explicit zeros there), the rest, up to the next alignment
   * boundary or the new end, only through the driver's zero writes (no
   * fallback to buffers).
   */
  async #zeroGrown(old: number, n: number, length: number, req: RequestInfo): Promise<void> {
    const zalign = Math.max(this.#limits.requestAlignment, this.#limits.optWriteZero || 1);
    const end = Math.min(length, roundUp(old + n, zalign)); // past the backing file reads zeros anyway
    const s = Math.min(roundUp(old, zalign), end);
    if (s > old) await this.#zeroes(old, s - old, { req });
    if (end > s) await this.#zeroes(s, end - s, { req, noFallback: true });
  }

  /** An unaligned piece of a write-zeroes: zero buffers, or ENOTSUP when the caller forbade the fallback. */
  #zeroPart(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    if (opts.noFallback) {
      return Promise.reject(
        new BlockError(
          "ENOTSUP",
          `Cannot write zeroes to ${length} bytes at offset ${offset} on node '${this.name}': not aligned to the driver's zero granularity and fallback disallowed`,
          {
            node: this.name,
            offset,
            length,
          },
        ),
      );
    }
    return this.#zeroBuffers(offset, length, opts);
  }

  async #zeroBuffers(offset: number, length: number, opts: WriteOptions): Promise<void> {
    const align = this.#limits.requestAlignment;
    const zero = new Uint8Array(Math.min(length, ZERO_CHUNK));
    for (let done = 0; done < length;) {
      const n = Math.min(zero.length, length - done);
      const o = offset + done;
      const s = o - (o % align);
      const e = roundUp(o + n, align);
      if (s === o && e === o + n) await this.#writeAligned(o, zero.subarray(0, n), false, opts.req!);
      else await this.#writePadded(o, zero.subarray(0, n), s, e, false, opts.req!);
      done += n;
    }
  }

  /** Discards a range; afterwards its content is unspecified (advisory). */
  pdiscard(offset: number, length: number, opts: RequestOptions = {}): Promise<void> {
    if (this.#listeners.length) return this.#span("discard", offset, length, opts, (o) => this.#pdiscard(offset, length, o));
    return this.#pdiscard(offset, length, opts);
  }

  async #pdiscard(offset: number, length: number, opts: RequestOptions): Promise<void> {
    this.#check("discard", offset, length, true);
    if (length === 0) return;
    const req = opts.req ?? newRequest(this.name, "discard", offset, length);
    let t = this.#tracker.track(offset, offset + length, true);
    if (t instanceof Promise) t = await t;
    try {
      const inst = this.#inst;
      if (inst.pdiscard) {
        // Discard is advisory: only the part aligned to the driver's discard granularity is passed
        // (the end of the node counts as aligned), as QEMU's bdrv_co_pdiscard does.
        const dalign = this.#limits.optDiscard || 1;
        const end = offset + length;
        const s = roundUp(offset, dalign);
        const e = end >= this.length ? end : end - (end % dalign);
        const maxD = this.#limits.maxDiscard;
        const max = maxD ? Math.max(dalign, maxD - (maxD % dalign)) : Number.MAX_SAFE_INTEGER;
        for (let o = s; o < e; o += max) await inst.pdiscard(o, Math.min(max, e - o), { req });
      } else if (this.driver.kind === "filter" && this.primaryChild) {
        const child = this.primaryChild;
        await this.#forward({ op: "discard", offset, length, req }, () => child.pdiscard(offset, length, { req }));
      }
      this.#writeGen++;
    } finally {
      this.#tracker.untrack(t);
    }
    this.stats.discards++;
  }

  // ---- flush ------------------------------------------------------------

  /**
   * Flushes: writes back driver caches (flush_to_os), makes this node's
   * writes durable (flush_to_disk, skipped when nothing was written since the
   * last flush), then flushes the writable children.
   */
  flush(opts: RequestOptions = {}): Promise<void> {
    if (this.#listeners.length) return this.#span("flush", 0, 0, opts, (o) => this.#flush(o));
    return this.#flush(opts);
  }

  #flush(opts: RequestOptions): Promise<void> {
    if (this.#closed) {
      return Promise.reject(new BlockError("EIO", `Cannot flush node '${this.name}': node is closed`, { node: this.name }));
    }
    // Flushes of one node run one at a time; a flush that arrives while one
    // runs waits for it and then runs itself (it may cover newer writes).
    const prev = this.#flushing;
    const run = prev ? prev.catch(() => {}).then(() => this.#flushNow(opts)) : this.#flushNow(opts);
    const mine = run.finally(() => {
      if (this.#flushing === mine) this.#flushing = null;
    });
    this.#flushing = mine;
    return mine;
  }

  async #flushNow(opts: RequestOptions): Promise<void> {
    const req = opts.req ?? newRequest(this.name, "flush", 0, 0);
    this.stats.flushRequests++;
    // The nodes flushing on behalf of `req`: each counts (and its listeners
    // see) the disk flushes its flush causes at or below it.
    let chain = flushChains.get(req);
    if (!chain) flushChains.set(req, chain = []);
    chain.push(this);
    try {
      await this.#flushSteps(req, chain);
    } finally {
      chain.splice(chain.lastIndexOf(this), 1);
    }
  }

  async #flushSteps(req: RequestInfo, chain: BlockNode[]): Promise<void> {
    const inst = this.#inst;
    // flush_to_os is raised on every flush, as QEMU raises BLKDBG_FLUSH_TO_OS whether or not the driver writes anything back.
    const ev = this.#ownEvent("flush_to_os", req);
    if (ev) await ev;
    if (inst.flushToOs) await inst.flushToOs({ req });
    const gen = this.#writeGen;
    if (inst.flush) {
      if (this.#noFlush || gen === this.#flushedGen) {
        this.stats.flushesSkipped++;
      } else {
        await this.#ownEvent("flush_to_disk", req);
        // Each listener once, though the same one may listen on several nodes of the chain (a trace of the graph).
        let fns: Set<NodeListener> | undefined;
        for (const n of chain) for (const l of n.#listeners) (fns ??= new Set()).add(l);
        if (fns) {
          const e: NodeEvent = { kind: "flush", node: this, time: performance.now(), req };
          for (const l of fns) l(e);
        }
        await inst.flush({ req });
        this.#driverFlushes++;
        for (const n of chain) n.stats.flushes++;
      }
    }
    const flushChildren = async () => {
      for (const [role, child] of this.children) {
        if (role === "backing" || child.readOnly) continue;
        await child.flush({ req });
      }
    };
    // A filter's intercept sees a flush as QEMU's filters see flush_to_disk: only
    // when it can reach a disk (not cache.no-flush) and something was written since the last one.
    if (this.driver.kind === "filter" && !this.#noFlush && gen !== this.#flushedGen) {
      await this.#forward({ op: "flush", offset: 0, length: 0, req }, flushChildren);
    } else await flushChildren();
    this.#flushedGen = gen;
  }

  /** Number of flushes that reached a driver on this node and every node below it, whatever caused them. */
  get flushCount(): number {
    let n = this.#driverFlushes;
    for (const c of new Set(this.children.values())) n += c.flushCount;
    return n;
  }

  // ---- status, length, truncate, close ----------------------------------

  /**
   * Reports the allocation state of the extent starting at `offset` (at most
   * `length` bytes; the result's `length` says how far the state holds).
   */
  blockStatus(offset: number, length: number, opts: RequestOptions = {}): Promise<BlockStatus> {
    if (this.#listeners.length) return this.#span("block-status", offset, length, opts, (o) => this.#blockStatus(offset, length, o));
    return this.#blockStatus(offset, length, opts);
  }

  async #blockStatus(offset: number, length: number, opts: RequestOptions): Promise<BlockStatus> {
    this.#check("query block status of", offset, length, false);
    const end = this.length;
    if (offset >= end || length === 0) {
      return { offset, length: 0, data: false, zero: true, allocated: false, present: false, depth: 0 };
    }
    length = Math.min(length, end - offset);
    const req = opts.req ?? newRequest(this.name, "block-status", offset, length);
    const inst = this.#inst;
    if (inst.blockStatus) {
      const st = await inst.blockStatus(offset, length, { req });
      return { ...st, offset, length: Math.max(1, Math.min(st.length, length)) };
    }
    const child = this.driver.kind === "filter" ? this.primaryChild : undefined;
    if (child) return this.#forward({ op: "block-status", offset, length, req }, () => child.blockStatus(offset, length, { req }));
    return { offset, length, data: true, zero: false, allocated: true, present: true, depth: 0, hostOffset: offset, file: this };
  }

  /** Length in bytes. */
  getLength(): Promise<number> {
    return Promise.resolve(this.length);
  }

  /** Changes the length of the node. */
  truncate(length: number, opts: TruncateOptions = {}): Promise<void> {
    if (this.#listeners.length) return this.#span("truncate", length, 0, opts, (o) => this.#truncate(length, o));
    return this.#truncate(length, opts);
  }

  async #truncate(length: number, opts: TruncateOptions): Promise<void> {
    if (!Number.isSafeInteger(length) || length < 0 || length > MAX_LENGTH) {
      throw new BlockError(
        "EINVAL",
        `Cannot resize node '${this.name}' to ${length} bytes: size must be a non-negative integer below ${MAX_LENGTH}`,
        {
          node: this.name,
        },
      );
    }
    if (this.#readOnly) {
      throw new BlockError("EROFS", `Cannot resize node '${this.name}' to ${length} bytes: node is read-only`, { node: this.name });
    }
    const req = opts.req ?? newRequest(this.name, "truncate", length, 0);
    const inst = this.#inst;
    let t = this.#tracker.track(0, MAX_LENGTH, true);
    if (t instanceof Promise) t = await t;
    try {
      const old = this.length;
      if (inst.truncate) {
        // QEMU's bdrv_co_truncate: a backing file longer than the old size would show
        // through in the new area, so that part must read as zeros (BDRV_REQ_ZERO_WRITE).
        const backing = this.backing;
        const zeroFill = length > old && backing && backing.length > old ? Math.min(length, backing.length) - old : 0;
        await inst.truncate(length, { ...opts, req, ...(zeroFill ? { zeroFill } : {}) });
        if (zeroFill) await this.#zeroGrown(old, zeroFill, length, req);
      } else if (this.driver.kind === "filter" && this.primaryChild) {
        const child = this.primaryChild;
        await this.#forward({ op: "truncate", offset: length, length: 0, req }, () => child.truncate(length, { ...opts, req }));
      } else {
        throw new BlockError("ENOTSUP", `Cannot resize node '${this.name}': driver '${this.driver.name}' does not support resizing`, {
          node: this.name,
        });
      }
      this.#writeGen++;
    } finally {
      this.#tracker.untrack(t);
    }
  }

  // ---- image operations (qemu-img verbs) -------------------------------

  /**
   * The node that serves image operation `key`: this node or the first one
   * down through filters whose driver implements it (a format node under a
   * throttle or blkdebug filter serves `makeEmpty`, `amend`, ...).
   */
  #implementer(key: keyof DriverInstance): BlockNode | undefined {
    // deno-lint-ignore no-this-alias
    let n: BlockNode | undefined = this;
    while (n && n.#inst[key] === undefined) n = n.driver.kind === "filter" ? n.primaryChild : undefined;
    return n;
  }

  async #imageOp<T>(key: keyof DriverInstance, what: string, write: boolean, fn: (inst: DriverInstance) => Promise<T> | T): Promise<T> {
    const n = this.#implementer(key);
    if (!n) {
      throw new BlockError("ENOTSUP", `Cannot ${what} node '${this.name}': driver '${this.formatName}' does not support it`, {
        node: this.name,
      });
    }
    if (n.#closed) throw new BlockError("EIO", `Cannot ${what} node '${n.name}': node is closed`, { node: n.name });
    if (write && n.#readOnly) throw new BlockError("EROFS", `Cannot ${what} node '${n.name}': node is read-only`, { node: n.name });
    let t = n.#tracker.track(0, MAX_LENGTH, true);
    if (t instanceof Promise) t = await t;
    try {
      const r = await fn(n.#inst);
      if (write) n.#writeGen++;
      return r;
    } finally {
      n.#tracker.untrack(t);
    }
  }

  /** Drops all data of the image's top layer so it reads from its backing file (or as zeros); `commit` uses it. */
  makeEmpty(opts: RequestOptions = {}): Promise<void> {
    const req = opts.req ?? newRequest(this.name, "discard", 0, this.length);
    return this.#imageOp("makeEmpty", "empty", true, (i) => i.makeEmpty!({ req }));
  }

  /** Changes format options of the open image in place (qemu-img amend). */
  amend(options: FormatOptions, opts: AmendOptions = {}): Promise<void> {
    return this.#imageOp("amend", "amend", true, (i) => i.amend!(options, opts));
  }

  /** Records a new backing file name and format in the image; `undefined` removes it (qemu-img rebase -u). */
  changeBackingFile(name: string | undefined, format: string | undefined): Promise<void> {
    return this.#imageOp("changeBackingFile", "change the backing file of", true, (i) => i.changeBackingFile!(name, format));
  }

  /**
   * Checks the image's metadata through the graph as opened (filters below
   * the format node see the check's I/O), optionally repairing it.
   */
  check(opts: CheckOptions = {}): Promise<CheckResult> {
    if (!this.#implementer("check")) {
      return Promise.reject(new BlockError("ENOTSUP", "This image format does not support checks", { node: this.name }));
    }
    return this.#imageOp("check", "check", opts.repair !== undefined, (i) => i.check!(opts));
  }

  // ---- internal snapshots (QEMU's bdrv_snapshot_*) ----------------------

  /**
   * The node serving snapshot operations (QEMU's bdrv_snapshot_fallback):
   * this node when its driver has any snapshot callback, else the same
   * search on its primary child — raw and filters pass them to their file,
   * an rbd node serves them — as long as no other child holds data (a
   * `data-file` child stops the search, as QEMU refuses that fallback).
   * A node with some of the callbacks serves all four: a qcow2 node that
   * lists its snapshots but cannot create one refuses, rather than letting
   * the request reach the protocol node below it.
   */
  snapshotNode(): BlockNode | undefined {
    // deno-lint-ignore no-this-alias
    let n: BlockNode | undefined = this;
    while (n) {
      const i: DriverInstance = n.#inst;
      if (i.snapshotList || i.snapshotCreate || i.snapshotDelete || i.snapshotGoto) return n;
      const child: BlockNode | undefined = n.primaryChild;
      if (!child) return undefined;
      for (const [role, c] of n.children) if (c !== child && role !== "backing") return undefined;
      n = child;
    }
    return undefined;
  }

  /** The image's internal snapshots (empty when its format has none). */
  async snapshotList(): Promise<SnapshotInfo[]> {
    const n = this.snapshotNode();
    return n && n.#inst.snapshotList ? await n.#inst.snapshotList() : [];
  }

  async #snapshotOp(key: "snapshotCreate" | "snapshotDelete" | "snapshotGoto", what: string, arg: SnapshotInfo | string): Promise<void> {
    const n = this.snapshotNode();
    if (!n || !n.#inst[key]) {
      const why = n
        ? `node '${n.name}' (driver '${n.driver.name}') has snapshots but cannot ${what.replace(/ a snapshot$/, "")} them`
        : `format '${this.formatName}' has no internal snapshots`;
      throw new BlockError("ENOTSUP", `Cannot ${what} on node '${this.name}': ${why}`, { node: this.name });
    }
    await n.#imageOp(key, what, true, (i) => (i[key] as (a: SnapshotInfo | string) => Promise<void> | void)(arg));
  }

  /** Creates an internal snapshot (qemu-img snapshot -c); what was written before is flushed first, so the snapshot holds it. */
  async snapshotCreate(info: SnapshotInfo): Promise<void> {
    const n = this.snapshotNode();
    if (n && n.#inst.snapshotCreate && !this.#readOnly) await this.flush();
    return await this.#snapshotOp("snapshotCreate", "create a snapshot", info);
  }

  /** Deletes an internal snapshot by ID or name (qemu-img snapshot -d). */
  snapshotDelete(idOrName: string): Promise<void> {
    return this.#snapshotOp("snapshotDelete", "delete a snapshot", idOrName);
  }

  /** Reverts the image to an internal snapshot by ID or name (qemu-img snapshot -a). */
  snapshotGoto(idOrName: string): Promise<void> {
    return this.#snapshotOp("snapshotGoto", "apply a snapshot", idOrName);
  }

  // ---- VM state (QEMU's bdrv_load_vmstate / bdrv_save_vmstate) --------

  /**
   * Reads `buf.length` bytes of saved VM state at `pos` (qemu-io `read -b`):
   * the VM state area of the first node down the primary-child chain whose
   * driver has one (qcow2 keeps it after the guest data).
   */
  loadVmstate(pos: number, buf: Uint8Array): Promise<void> {
    return this.#vmstateOp("loadVmstate", "read the VM state of", false, pos, buf.length, (i) => i.loadVmstate!(pos, buf));
  }

  /** Writes VM state at `pos` (qemu-io `write -b`); see {@linkcode BlockNode.loadVmstate}. */
  saveVmstate(pos: number, data: Uint8Array): Promise<void> {
    return this.#vmstateOp("saveVmstate", "write the VM state of", true, pos, data.length, (i) => i.saveVmstate!(pos, data));
  }

  async #vmstateOp(
    key: "loadVmstate" | "saveVmstate",
    what: string,
    write: boolean,
    pos: number,
    length: number,
    fn: (inst: DriverInstance) => Promise<void> | void,
  ): Promise<void> {
    if (!Number.isSafeInteger(pos) || pos < 0 || pos + length > MAX_LENGTH) {
      throw new BlockError("EINVAL", `Cannot ${what} node '${this.name}' at offset ${pos}: invalid offset`, { node: this.name });
    }
    // deno-lint-ignore no-this-alias
    let n: BlockNode | undefined = this;
    while (n && !n.#inst[key]) n = n.primaryChild;
    if (!n) {
      throw new BlockError("ENOTSUP", `Cannot ${what} node '${this.name}': format '${this.formatName}' has no VM state area`, {
        node: this.name,
      });
    }
    await n.#imageOp(key, what, write, fn);
  }

  // ---- breakpoints (QEMU's bdrv_debug_breakpoint & co.) -----------------

  /** The first node down the primary-child chain whose driver offers breakpoints (QEMU's bdrv_find_debug_node). */
  #debugNode(): DriverInstance {
    // deno-lint-ignore no-this-alias
    let n: BlockNode | undefined = this;
    while (n && !n.#inst.debugBreakpoint) n = n.primaryChild;
    if (!n) {
      throw new BlockError("ENOTSUP", `No node at or below '${this.name}' supports breakpoints (add a blkdebug node)`, { node: this.name });
    }
    return n.#inst;
  }

  /** Suspends the next request that raises `event` below this node, tagging it `tag` (qemu-io `break`). */
  debugBreak(event: string, tag: string): void {
    this.#debugNode().debugBreakpoint!(event, tag);
  }

  /** Removes breakpoint `tag` and resumes requests held there (qemu-io `remove_break`). */
  debugRemoveBreak(tag: string): void {
    this.#debugNode().debugRemoveBreakpoint!(tag);
  }

  /** Resumes the request suspended at `tag` (qemu-io `resume`). */
  debugResume(tag: string): void {
    this.#debugNode().debugResume!(tag);
  }

  /** Whether a request is suspended at `tag`. */
  debugIsSuspended(tag: string): boolean {
    return this.#debugNode().debugIsSuspended!(tag);
  }

  /** Resolves when a request is suspended at `tag` (qemu-io `wait_break`). */
  debugWaitBreak(tag: string): Promise<void> {
    return this.#debugNode().debugWaitBreak!(tag);
  }

  /**
   * Where the format keeps its metadata in its file (qcow2: header, L1 and
   * L2 tables, refcount table and blocks, snapshots, bitmaps), sorted by
   * offset; from this node or the first one below its filters that has it.
   */
  metadataExtents(): Promise<MetadataExtent[]> {
    return this.#imageOp("metadataExtents", "list the metadata of", false, (i) => i.metadataExtents!());
  }

  /** Synchronous I/O of a protocol node whose driver offers it (for the exit write-back); undefined otherwise. */
  get syncIo(): SyncIo | undefined {
    return this.driver.kind === "protocol" && !this.#closed ? this.#inst.syncIo : undefined;
  }

  /**
   * The last-chance write-back at `Deno.exit()` with the node still open
   * (the `unload` event runs no async code): the driver writes back what it
   * caches synchronously, and a protocol node makes its writes durable.
   * Returns false when that could not be done safely.
   */
  exitSync(): boolean {
    if (this.#closed || this.#readOnly) return true;
    const ok = this.#inst.exitSync?.() ?? true;
    const io = this.syncIo;
    if (io && this.#writeGen !== this.#flushedGen && !this.#noFlush) {
      io.flush();
      this.#flushedGen = this.#writeGen;
    }
    return ok;
  }

  /** Driver-specific information (for `info`), from this node or the first one below its filters that has some. */
  async info(): Promise<Record<string, unknown>> {
    const n = this.#implementer("info");
    return n ? await n.#inst.info!() : {};
  }

  /** A compressed write (`{ compressed: true }`) on this node reaches a driver that supports it. */
  get supportsCompressedWrites(): boolean {
    return this.#implementer("pwriteCompressed") !== undefined;
  }

  /** The name of the format driver a user thinks of: this node's, or the first one's below its filters. */
  get formatName(): string {
    return this.formatNode.driver.name;
  }

  /** The node a user thinks of as the image: this node, or the first one below its filters. */
  get formatNode(): BlockNode {
    // deno-lint-ignore no-this-alias
    let n: BlockNode = this;
    while (n.driver.kind === "filter" && n.primaryChild) n = n.primaryChild;
    return n;
  }

  /** Registers a callback run when the node closes (used by the graph registry). */
  onClose(fn: () => void): void {
    this.#onClose.push(fn);
  }

  /**
   * Closes the node: waits for requests in flight, flushes what was written
   * since the last flush (ignoring a flush error, as QEMU does), closes the
   * driver, then closes the children. The first error of a driver's close is
   * thrown after everything is closed.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#tracker.drain();
    if (this.#flushing) await this.#flushing.catch(() => {});
    let error: unknown;
    // Like QEMU's bdrv_close: what was written is flushed before the driver
    // lets go (its own close may write more; each child flushes on its
    // close). As in QEMU, a failing flush does not stop the close: callers
    // who need to know flush before closing.
    if (!this.#readOnly && this.#writeGen !== this.#flushedGen) await this.flush().catch(() => {});
    try {
      await this.#inst.close?.();
    } catch (e) {
      error ??= e;
    }
    this.#closed = true;
    for (const fn of this.#onClose) fn();
    for (const child of new Set(this.children.values())) {
      try {
        await child.close();
      } catch (e) {
        error ??= e;
      }
    }
    if (error) throw error;
  }

  /** Closes the node (`await using`). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** For each flush request, the nodes flushing on its behalf right now (outermost first). */
const flushChains = new WeakMap<RequestInfo, BlockNode[]>();

function defaultLimits(): BlockLimits {
  return { requestAlignment: 1, maxTransfer: 0, optWriteZero: 0, maxWriteZero: 0, optDiscard: 0, maxDiscard: 0 };
}

function sectorOffset(sector: number, bytes: number, what: string): number {
  if (!Number.isSafeInteger(sector) || sector < 0) {
    throw new BlockError("EINVAL", `Cannot ${what} at sector ${sector}: sector must be a non-negative integer`);
  }
  if (bytes % SECTOR_SIZE !== 0) {
    throw new BlockError("EINVAL", `Cannot ${what} ${bytes} bytes at sector ${sector}: length must be a multiple of ${SECTOR_SIZE}`);
  }
  return sector * SECTOR_SIZE;
}
