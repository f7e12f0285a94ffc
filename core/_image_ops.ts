/**
 * Dispatch of image operations (qemu-img verbs, snapshots, breakpoints) to
 * the node whose driver implements them: the node itself or the first one
 * down through its filters (QEMU's `bdrv_find_debug_node`, the snapshot
 * fallback). An image operation holds the whole node, as a resize does.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import { flushRequest } from "./_flush.ts";
import { MAX_LENGTH } from "./request.ts";
import type { CheckOptions, CheckResult, DriverInstanceOf, SnapshotInfo } from "./types.ts";
import { type CoreNode, coreOf, type NodeCore } from "./_node_core.ts";

/** The core whose driver implements `key`: `c` or the first one down through filters. */
export function implementer<N extends CoreNode<N>>(c: NodeCore<N>, key: keyof DriverInstanceOf<N>): NodeCore<N> | undefined {
  let n: NodeCore<N> | undefined = c;
  while (n && n.inst[key] === undefined) {
    const child: N | undefined = n.node.driver.kind === "filter" ? n.primaryChild : undefined;
    n = child ? coreOf(child) : undefined;
  }
  return n;
}

/** The core of the node a user thinks of as the image: `c`, or the first one below its filters. */
export function formatCore<N extends CoreNode<N>>(c: NodeCore<N>): NodeCore<N> {
  let n = c;
  for (let child = n.primaryChild; n.node.driver.kind === "filter" && child; child = n.primaryChild) n = coreOf(child);
  return n;
}

/** The name of the format driver a user thinks of (the first non-filter node). */
export function formatName<N extends CoreNode<N>>(c: NodeCore<N>): string {
  return formatCore(c).node.driver.name;
}

/** QEMU's `bdrv_has_zero_init`: the driver's `zeroInit`, through filters; true by default. */
export function hasZeroInit<N extends CoreNode<N>>(c: NodeCore<N>): boolean {
  for (let n: NodeCore<N> | undefined = c; n;) {
    if (n.inst.zeroInit !== undefined) return n.inst.zeroInit;
    const child: N | undefined = n.node.driver.kind === "filter" ? n.primaryChild : undefined;
    if (!child) return true;
    n = coreOf(child);
  }
  return true;
}

/**
 * Runs image operation `key` on the node that implements it, holding that
 * node whole (no request runs meanwhile); a write bumps its write generation.
 */
export async function imageOp<N extends CoreNode<N>, T>(
  c: NodeCore<N>,
  key: keyof DriverInstanceOf<N>,
  what: string,
  write: boolean,
  fn: (inst: DriverInstanceOf<N>) => Promise<T> | T,
): Promise<T> {
  const n = implementer(c, key);
  if (!n) {
    throw new BlockError("ENOTSUP", `Cannot ${what} node '${c.name}': driver '${formatName(c)}' does not support it`, { node: c.name });
  }
  return await holdWhole(n, what, write, fn);
}

/** Runs `fn` on `n`'s driver with the whole node held. */
export async function holdWhole<N extends CoreNode<N>, T>(
  n: NodeCore<N>,
  what: string,
  write: boolean,
  fn: (inst: DriverInstanceOf<N>) => Promise<T> | T,
): Promise<T> {
  if (n.closed) throw new BlockError("EIO", `Cannot ${what} node '${n.name}': node is closed`, { node: n.name });
  if (write && n.readOnly) throw new BlockError("EROFS", `Cannot ${what} node '${n.name}': node is read-only`, { node: n.name });
  let t = n.tracker.track(0, MAX_LENGTH, true);
  if (typeof t !== "number") t = await t;
  try {
    const r = await fn(n.inst);
    if (write) n.writeGen++;
    return r;
  } finally {
    n.tracker.untrack(t);
  }
}

/** Checks (and with `repair` repairs) the image's metadata (`BlockNode.check`): ENOTSUP when no node below can. */
export function checkImage<N extends CoreNode<N>>(c: NodeCore<N>, opts: CheckOptions): Promise<CheckResult> {
  if (!implementer(c, "check")) {
    return Promise.reject(new BlockError("ENOTSUP", "This image format does not support checks", { node: c.name }));
  }
  return imageOp(c, "check", "check", opts.repair !== undefined, (i) => i.check!(opts));
}

/**
 * The core serving snapshot operations (QEMU's bdrv_snapshot_fallback):
 * this node when its driver has any snapshot callback, else the same search
 * on its primary child, as long as no other child holds data.
 */
export function snapshotCore<N extends CoreNode<N>>(c: NodeCore<N>): NodeCore<N> | undefined {
  let n: NodeCore<N> | undefined = c;
  while (n) {
    const i = n.inst;
    if (i.snapshotList || i.snapshotCreate || i.snapshotDelete || i.snapshotGoto) return n;
    const child: N | undefined = n.primaryChild;
    if (!child) return undefined;
    for (const [role, x] of n.node.children) if (x !== child && role !== "backing") return undefined;
    n = coreOf(child);
  }
  return undefined;
}

/** The image's internal snapshots (`BlockNode.snapshots.list`): empty when its format has none. */
export async function snapshotList<N extends CoreNode<N>>(c: NodeCore<N>): Promise<SnapshotInfo[]> {
  const n = snapshotCore(c);
  return n && n.inst.snapshotList ? await n.inst.snapshotList() : [];
}

/** Creates an internal snapshot (`BlockNode.snapshots.create`), flushing first what was written so the snapshot holds it. */
export async function snapshotCreate<N extends CoreNode<N>>(c: NodeCore<N>, info: SnapshotInfo): Promise<void> {
  const n = snapshotCore(c);
  if (n && n.inst.snapshotCreate && !c.readOnly) await c.node.flush();
  return await snapshotOp(c, "snapshotCreate", "create a snapshot", info);
}

/** Creates, deletes or applies a snapshot on the node serving snapshots. */
export async function snapshotOp<N extends CoreNode<N>>(
  c: NodeCore<N>,
  key: "snapshotCreate" | "snapshotDelete" | "snapshotGoto",
  what: string,
  arg: SnapshotInfo | string,
): Promise<void> {
  const n = snapshotCore(c);
  if (!n || !n.inst[key]) {
    const why = n
      ? `node '${n.name}' (driver '${n.node.driver.name}') has snapshots but cannot ${what.replace(/ a snapshot$/, "")} them`
      : `format '${formatName(c)}' has no internal snapshots`;
    throw new BlockError("ENOTSUP", `Cannot ${what} on node '${c.name}': ${why}`, { node: c.name });
  }
  await holdWhole(n, what, true, (i) => (i[key] as (a: SnapshotInfo | string) => Promise<void> | void)(arg));
}

/**
 * Reads or writes VM state (QEMU's bdrv_load_vmstate / bdrv_save_vmstate) on
 * the first node down the primary-child chain whose driver has a VM state area.
 */
export async function vmstateOp<N extends CoreNode<N>>(
  c: NodeCore<N>,
  key: "loadVmstate" | "saveVmstate",
  what: string,
  write: boolean,
  pos: number,
  length: number,
  fn: (inst: DriverInstanceOf<N>) => Promise<void> | void,
): Promise<void> {
  if (!Number.isSafeInteger(pos) || pos < 0 || pos + length > MAX_LENGTH) {
    throw new BlockError("EINVAL", `Cannot ${what} node '${c.name}' at offset ${pos}: invalid offset`, { node: c.name });
  }
  let n: NodeCore<N> | undefined = c;
  while (n && !n.inst[key]) {
    const child: N | undefined = n.primaryChild;
    n = child ? coreOf(child) : undefined;
  }
  if (!n) {
    throw new BlockError("ENOTSUP", `Cannot ${what} node '${c.name}': format '${formatName(c)}' has no VM state area`, { node: c.name });
  }
  await holdWhole(n, what, write, fn);
  // As QEMU's blk_save_vmstate: with the write cache off (cache=writethrough), the saved state is flushed before the save completes.
  if (write && c.writeThrough) await flushRequest(c, {});
}

/** The first driver down the primary-child chain that offers breakpoints (QEMU's bdrv_find_debug_node). */
export function debugInstance<N extends CoreNode<N>>(c: NodeCore<N>): DriverInstanceOf<N> {
  let n: NodeCore<N> | undefined = c;
  while (n && !n.inst.debugBreakpoint) {
    const child: N | undefined = n.primaryChild;
    n = child ? coreOf(child) : undefined;
  }
  if (!n) {
    throw new BlockError("ENOTSUP", `No node at or below '${c.name}' supports breakpoints (add a blkdebug node)`, { node: c.name });
  }
  return n.inst;
}

/**
 * `BlockNode.exitSync`: the driver writes back what it caches
 * synchronously, and a protocol node makes its writes durable.
 */
export function exitSync<N extends CoreNode<N>>(c: NodeCore<N>): boolean {
  if (c.closed || c.readOnly) return true;
  const ok = c.inst.exitSync?.() ?? true;
  const io = c.node.driver.kind === "protocol" ? c.inst.syncIo : undefined;
  if (io && c.writeGen !== c.flushedGen && !c.noFlush) {
    io.flush();
    c.flushedGen = c.writeGen;
  }
  return ok;
}

/**
 * `BlockNode.close`: waits for requests in flight, flushes what was
 * written since the last flush (ignoring a flush error, as QEMU does),
 * closes the driver, then the children; the first error of a driver's
 * close is thrown after everything is closed.
 */
export async function closeNode<N extends CoreNode<N>>(c: NodeCore<N>): Promise<void> {
  if (c.closed) return;
  await c.tracker.drain();
  if (c.flushing) await c.flushing.catch(() => {});
  let error: unknown;
  // Like QEMU's bdrv_close: what was written is flushed before the driver
  // lets go (its own close may write more; each child flushes on its close).
  if (!c.readOnly && c.writeGen !== c.flushedGen) await c.node.flush().catch(() => {});
  try {
    await c.inst.close?.();
  } catch (e) {
    error ??= e;
  }
  c.closed = true;
  for (const fn of c.onClose) fn();
  for (const child of new Set(c.node.children.values())) {
    try {
      await child.close();
    } catch (e) {
      error ??= e;
    }
  }
  if (error) throw error;
}

/**
 * Bytes the node occupies on its storage (QEMU's bdrv_get_allocated_file_size):
 * the driver's answer; else, a protocol node: unknown; a filter: its child's;
 * a format: the sum over its children holding its data and metadata (every
 * child but the backing file), unknown when any of them is.
 */
export async function allocatedSize<N extends CoreNode<N>>(c: NodeCore<N>): Promise<number | undefined> {
  if (c.inst.allocatedSize) return await c.inst.allocatedSize();
  const kind = c.node.driver.kind;
  if (kind === "protocol") return undefined;
  if (kind === "filter") {
    const child = c.primaryChild;
    return child ? await allocatedSize(coreOf(child)) : undefined;
  }
  let sum = 0;
  for (const [role, child] of c.node.children) {
    if (role === "backing") continue;
    const n = await allocatedSize(coreOf(child));
    if (n === undefined) return undefined;
    sum += n;
  }
  return sum;
}
