/**
 * The private state of a block node and the checks, event delivery and
 * listener spans every operation shares. `BlockNode` (core/node.ts) holds one
 * {@linkcode NodeCore} and is a facade over it; the request path
 * (`_read_write.ts`, `_zero_discard.ts`, `_flush.ts`) and the image
 * operations (`_image_ops.ts`) work on cores, so none of this state is
 * reachable from the public API.
 *
 * What depends on the graph's shape (the primary child, whether the node
 * grows, where BLKDBG events go) is resolved once per change of any graph
 * (a process-wide epoch bumped by `attach`/`attachChild`), not per request.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { BlkdebugEvent } from "./events.ts";
import { MAX_LENGTH, newRequest, type NodeEventOf, type NodeListenerOf, type NodeStats } from "./request.ts";
import { RequestTracker } from "./_tracker.ts";
import type {
  BlockDriverOf,
  BlockLimits,
  BlockStatusOf,
  ChildRole,
  DriverInstanceOf,
  FilterCall,
  RequestInfo,
  RequestOp,
  RequestOptions,
  TruncateOptions,
  WriteOptions,
  WriteZeroesOptions,
} from "./types.ts";

/** What the core needs of a node object (`BlockNode` is one). */
export interface CoreNode<N> {
  /** Unique node name. */
  readonly name: string;
  /** The driver serving the node. */
  readonly driver: BlockDriverOf<N>;
  /** Children by role. */
  readonly children: Map<ChildRole, N>;
  /** Counters. */
  readonly stats: NodeStats;
  /** Current length in bytes. */
  readonly length: number;
  /** The node refuses writes. */
  readonly readOnly: boolean;
  /** Reads into `buf`. */
  pread(offset: number, buf: Uint8Array, opts?: RequestOptions): Promise<void>;
  /** Writes `data`. */
  pwrite(offset: number, data: Uint8Array, opts?: WriteOptions): Promise<void>;
  /** Makes a range read as zeros. */
  pwriteZeroes(offset: number, length: number, opts?: WriteZeroesOptions): Promise<void>;
  /** Discards a range. */
  pdiscard(offset: number, length: number, opts?: RequestOptions): Promise<void>;
  /** Flushes. */
  flush(opts?: RequestOptions): Promise<void>;
  /** Block status of an extent. */
  blockStatus(offset: number, length: number, opts?: RequestOptions): Promise<BlockStatusOf<N>>;
  /** Resizes. */
  truncate(length: number, opts?: TruncateOptions): Promise<void>;
  /** Closes. */
  close(): Promise<void>;
}

/** The promise every request that completed synchronously returns: a caller (a parent's driver) may test for it. */
export const DONE: Promise<void> = Promise.resolve();

/** A driver's result means the operation already completed (synchronously, without error). */
export function isDone(p: Promise<void> | void): boolean {
  return p === undefined || p === DONE;
}

let graphEpoch = 0;

/** Tells every core that some graph changed shape (a driver or a child was attached). */
export function graphChanged(): void {
  graphEpoch++;
}

const cores = new WeakMap<object, unknown>();

/** The core of `node`. */
export function coreOf<N extends CoreNode<N>>(node: N): NodeCore<N> {
  return cores.get(node) as NodeCore<N>;
}

/** The limits of a driver that declares none. */
export function defaultLimits(): BlockLimits {
  return { requestAlignment: 1, maxTransfer: 0, optWriteZero: 0, maxWriteZero: 0, optDiscard: 0, maxDiscard: 0 };
}

/** How a core is configured (from `NodeConfig`). */
export interface CoreConfig {
  readonly readOnly: boolean;
  readonly noFlush?: boolean;
  readonly writeThrough?: boolean;
}

/** The private state of one node. */
export class NodeCore<N extends CoreNode<N>> {
  /** The node this is the core of. */
  readonly node: N;
  /** The node's name. */
  readonly name: string;
  /** The driver instance (empty until attached). */
  inst: DriverInstanceOf<N> = {};
  /** Read-only node. */
  readonly readOnly: boolean;
  /** Flushes never reach the driver. */
  readonly noFlush: boolean;
  /** Every write is FUA. */
  readonly writeThrough: boolean;
  /** Limits in force. */
  limits: BlockLimits = defaultLimits();
  /** Requests in flight. */
  readonly tracker: RequestTracker = new RequestTracker();
  /** Bumped by every completed change; a flush makes what it saw durable. */
  writeGen = 0;
  /** `writeGen` at the last completed flush. */
  flushedGen = 0;
  /** Flushes that reached this node's driver. */
  driverFlushes = 0;
  /** Parents holding this node as a child. */
  parents = 0;
  /** The flush running now (flushes of one node run one at a time). */
  flushing: Promise<void> | null = null;
  /** Listeners (copy on change). */
  listeners: NodeListenerOf<N>[] = [];
  /** The node was closed. */
  closed = false;
  /** The node or one below it has no medium (`DriverInstance.inserted` false): every request fails with ENOMEDIUM. */
  noMedium = false;
  /** Callbacks run at close. */
  readonly onClose: (() => void)[] = [];
  /** Requests on the node itself may go past its end (BlockNode.allowBeyondEof). */
  allowBeyondEof = false;
  #epoch = -1;
  #primary: N | undefined;
  #growable = false;
  #sink: DriverInstanceOf<N> | null = null;

  /** Makes the core of `node` and registers it (see {@linkcode coreOf}). */
  constructor(node: N, config: CoreConfig) {
    this.node = node;
    this.name = node.name;
    this.readOnly = config.readOnly;
    this.noFlush = config.noFlush ?? false;
    this.writeThrough = config.writeThrough ?? false;
    cores.set(node, this);
  }

  /** Attaches the driver instance (`BlockNode.attach`) and takes its limits. */
  attach(inst: DriverInstanceOf<N>): void {
    this.inst = inst;
    this.noMedium = inst.inserted === false || [...this.node.children.values()].some((ch) => coreOf(ch).noMedium);
    this.refreshLimits();
    graphChanged();
  }

  /** Attaches `child` under `role` (`BlockNode.attachChild`); the child then serves a parent. */
  attachChild(role: ChildRole, child: N): void {
    const children = this.node.children;
    const old = children.get(role);
    if (old) coreOf(old).parents--;
    children.set(role, child);
    coreOf(child).parents++;
    graphChanged();
  }

  /** Takes the driver's limits (after defaults), checking that the request alignment is a power of two. */
  refreshLimits(): void {
    const l = { ...defaultLimits(), ...this.inst.limits };
    if (!Number.isInteger(l.requestAlignment) || l.requestAlignment < 1 || (l.requestAlignment & (l.requestAlignment - 1)) !== 0) {
      throw new BlockError("EINVAL", `Node '${this.name}': request alignment ${l.requestAlignment} is not a power of two`, {
        node: this.name,
      });
    }
    this.limits = l;
  }

  /** Node counters. */
  get stats(): NodeStats {
    return this.node.stats;
  }

  #resolve(): void {
    const node = this.node;
    this.#epoch = graphEpoch;
    const primary = node.children.get(node.driver.primaryChildRole ?? "file");
    this.#primary = primary;
    const kind = node.driver.kind;
    this.#growable = kind === "protocol" || (kind === "filter" && primary !== undefined && coreOf(primary).growable);
    // QEMU's BLKDBG_EVENT(bs->file, ev): the file child, or the first node below it whose driver handles events.
    let n = node.children.get("file");
    let sink: DriverInstanceOf<N> | null = null;
    while (n) {
      const c: NodeCore<N> = coreOf(n);
      if (c.inst.debugEvent) {
        sink = c.inst;
        break;
      }
      n = c.primaryChild;
    }
    this.#sink = sink;
  }

  /** The child requests pass to and events walk down to. */
  get primaryChild(): N | undefined {
    if (this.#epoch !== graphEpoch) this.#resolve();
    return this.#primary;
  }

  /** Writes that grow the node are allowed and reads past the end give zeros. */
  get growable(): boolean {
    if (this.#epoch !== graphEpoch) this.#resolve();
    return this.#growable;
  }

  /** The driver instance that receives this node's BLKDBG events, or null. */
  get eventSink(): DriverInstanceOf<N> | null {
    if (this.#epoch !== graphEpoch) this.#resolve();
    return this.#sink;
  }

  /** Current length in bytes. */
  get length(): number {
    const inst = this.inst;
    if (inst.getLength) return inst.getLength();
    const child = this.primaryChild;
    return child ? child.length : 0;
  }

  // ---- events and listeners ---------------------------------------------

  /** Raises a BLKDBG event (see `BlockNode.event`). */
  event(event: BlkdebugEvent, req: RequestInfo | undefined): Promise<void> | void {
    if (this.listeners.length) this.notify({ kind: "blkdbg", event, node: this.node, time: performance.now(), req });
    const sink = this.eventSink;
    if (sink) return sink.debugEvent!(event, req);
  }

  /** Delivers an event to this node: the first driver from here down the primary-child chain that handles events (`BlockNode.debugEvent`). */
  debugEvent(event: BlkdebugEvent, req: RequestInfo | undefined): Promise<void> | void {
    if (this.inst.debugEvent) return this.inst.debugEvent(event, req);
    const child = this.primaryChild;
    if (child) return coreOf(child).debugEvent(event, req);
  }

  /** Raises a request-path event on this node's own driver only (QEMU's `bdrv_debug_event(bs, ev)`). */
  ownEvent(event: BlkdebugEvent, req: RequestInfo): Promise<void> | void {
    const inst = this.inst;
    if (inst.debugEvent) return inst.debugEvent(event, req);
  }

  /** Calls every listener. */
  notify(e: NodeEventOf<N>): void {
    for (const l of this.listeners) l(e);
  }

  /** Reports a request's begin and end to the listeners; called only when there are some. */
  async span<T, O extends RequestOptions & { fua?: boolean }>(
    op: RequestOp,
    offset: number,
    length: number,
    opts: O,
    run: (o: O) => Promise<T>,
  ): Promise<T> {
    const req = opts.req ?? newRequest(this.name, op, offset, length);
    const node = this.node;
    const base = { kind: "request", op, offset, length, node, req } as const;
    this.notify({ ...base, phase: "begin", time: performance.now(), fua: opts.fua || undefined });
    try {
      const r = await run(opts.req ? opts : { ...opts, req });
      this.notify({ ...base, phase: "end", time: performance.now() });
      return r;
    } catch (error) {
      this.notify({ ...base, phase: "end", time: performance.now(), error });
      throw error;
    }
  }

  // ---- checks -----------------------------------------------------------

  /** Throws the request-path error for `what` of `length` bytes at `offset`. */
  fail(
    code: "EIO" | "EINVAL" | "EROFS" | "ENOSPC" | "ENOTSUP" | "ENOMEDIUM",
    what: string,
    offset: number,
    length: number,
    why: string,
  ): never {
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
  check(what: string, offset: number, length: number, write: boolean): void {
    if (this.closed) this.fail("EIO", what, offset, length, "node is closed");
    if (this.noMedium) this.fail("ENOMEDIUM", what, offset, length, "no medium in the drive");
    if (!Number.isSafeInteger(offset) || offset < 0) this.fail("EINVAL", what, offset, length, "offset must be a non-negative integer");
    if (!Number.isSafeInteger(length) || length < 0) this.fail("EINVAL", what, offset, length, "length must be a non-negative integer");
    if (offset > MAX_LENGTH || length > MAX_LENGTH - offset) {
      this.fail("EINVAL", what, offset, length, "request exceeds the maximum image size");
    }
    if (write && this.readOnly) this.fail("EROFS", what, offset, length, "node is read-only");
    if ((!this.growable || (this.parents === 0 && !this.allowBeyondEof)) && !this.inst.checksBounds) {
      const len = this.length;
      if (offset + length > len) this.fail("EIO", what, offset, length, `request goes past the end of the image (length ${len})`);
    }
  }

  /** Passes a request to the primary child through the filter's `intercept` hook, if it has one. */
  forward<T>(call: FilterCall, next: () => Promise<T>): Promise<T> {
    const inst = this.inst;
    return inst.intercept ? inst.intercept(call, next) : next();
  }

  /** The primary child of a filter, for an operation its driver does not implement; ENOTSUP otherwise. */
  passThrough(what: string, offset: number, length: number): N {
    const child = this.node.driver.kind === "filter" ? this.primaryChild : undefined;
    if (!child) this.fail("ENOTSUP", what, offset, length, `driver '${this.node.driver.name}' does not support it`);
    return child;
  }
}
