/**
 * The read and write request path of a node: bounds, alignment padding with
 * read-modify-write, splitting at the driver's max transfer, serialisation
 * of overlapping requests, FUA emulation and compressed writes.
 *
 * The common request — aligned, within one transfer, no conflicting request
 * in flight, no listener — takes a synchronous path: no async frame, no
 * promise of its own. When the driver completes synchronously (returns
 * nothing, or the {@linkcode DONE} promise of a child that did), the node
 * returns `DONE` too, so a chain of synchronous layers (qcow2 → file) costs
 * one promise for the whole request, not one per layer; otherwise the
 * node's bookkeeping runs in one `.then` of the driver's promise. Everything
 * else (padding, splitting, waiting, events that suspend) takes the async
 * path, which does the same steps with `await`.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import { newRequest, roundUp, SECTOR_SIZE } from "./request.ts";
import type { RequestInfo, RequestOptions, WriteOptions } from "./types.ts";
import { type CoreNode, DONE, isDone, type NodeCore } from "./_node_core.ts";
import { flushRequest } from "./_flush.ts";
import { ioBuffer } from "./_io_buffer.ts";

// ---- read -----------------------------------------------------------------

/** `BlockNode.pread`. */
export function readRequest<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
  if (c.listeners.length) return c.span("read", offset, buf.length, opts, (o) => read(c, offset, buf, o));
  return read(c, offset, buf, opts);
}

function read<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
  const length = buf.length;
  try {
    c.check("read", offset, length, false);
  } catch (e) {
    return Promise.reject(e);
  }
  if (length === 0) return DONE;
  const o = opts.req ? opts : { req: newRequest(c.name, "read", offset, length) };
  const { requestAlignment: align, maxTransfer: max } = c.limits;
  const end = offset + length;
  if (offset % align !== 0 || length % align !== 0 || (max && length > max) || (c.growable && end > c.length)) {
    return readAsync(c, offset, buf, o.req!);
  }
  const t = c.tracker.track(offset, end, false);
  if (typeof t !== "number") return readAsync(c, offset, buf, o.req!, t);
  let p: Promise<void> | void;
  try {
    p = readOne(c, offset, buf, o);
  } catch (e) {
    c.tracker.untrack(t);
    return Promise.reject(e);
  }
  if (isDone(p)) {
    c.tracker.untrack(t);
    c.stats.reads++;
    c.stats.bytesRead += length;
    return DONE;
  }
  return (p as Promise<void>).then(() => {
    c.tracker.untrack(t);
    c.stats.reads++;
    c.stats.bytesRead += length;
  }, (e) => {
    c.tracker.untrack(t);
    throw e;
  });
}

async function readAsync<N extends CoreNode<N>>(
  c: NodeCore<N>,
  offset: number,
  buf: Uint8Array,
  req: RequestInfo,
  tracked?: Promise<number>,
): Promise<void> {
  const length = buf.length;
  const align = c.limits.requestAlignment;
  const start = offset - (offset % align);
  const end = roundUp(offset + length, align);
  let t = tracked ?? c.tracker.track(start, end, false);
  if (typeof t !== "number") t = await t;
  try {
    if (start === offset && end === offset + length) {
      await readAligned(c, offset, buf, req);
    } else {
      const bounce = ioBuffer(end - start);
      await readAligned(c, start, bounce, req);
      buf.set(bounce.subarray(offset - start, offset - start + length));
    }
  } finally {
    c.tracker.untrack(t);
  }
  c.stats.reads++;
  c.stats.bytesRead += length;
}

/** Reads an aligned range: zeros past the end of a growable node (QEMU's bdrv_aligned_preadv), split at the max transfer. */
export async function readAligned<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, buf: Uint8Array, req: RequestInfo): Promise<void> {
  let n = buf.length;
  if (c.growable) {
    const len = c.length;
    const avail = Math.max(0, Math.min(n, len - offset));
    if (avail < n) {
      buf.fill(0, avail);
      if (avail === 0) return;
      n = Math.min(n, roundUp(avail, c.limits.requestAlignment));
      if (n < buf.length) buf = buf.subarray(0, n);
    }
  }
  const max = c.limits.maxTransfer;
  const o = { req };
  if (!max || n <= max) return await readOne(c, offset, buf, o);
  for (let done = 0; done < n; done += max) await readOne(c, offset + done, buf.subarray(done, Math.min(n, done + max)), o);
}

function readOne<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, buf: Uint8Array, o: RequestOptions): Promise<void> | void {
  const inst = c.inst;
  if (inst.pread) return inst.pread(offset, buf, o);
  const child = c.passThrough("read", offset, buf.length);
  if (inst.intercept) return inst.intercept({ op: "read", offset, length: buf.length, req: o.req }, () => child.pread(offset, buf, o));
  return child.pread(offset, buf, o);
}

// ---- write ----------------------------------------------------------------

/** `BlockNode.pwrite`. */
export function writeRequest<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
  if (c.listeners.length) return c.span("write", offset, data.length, opts, (o) => write(c, offset, data, o));
  return write(c, offset, data, opts);
}

function write<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
  const length = data.length;
  try {
    c.check("write", offset, length, true);
  } catch (e) {
    return Promise.reject(e);
  }
  if (length === 0) return DONE;
  const req = opts.req ?? newRequest(c.name, "write", offset, length);
  if (opts.compressed) return writeCompressed(c, offset, data, req);
  const fua = (opts.fua ?? false) || c.writeThrough;
  const nativeFua = fua && (c.inst.supportsFua ?? false);
  const { requestAlignment: align, maxTransfer: max } = c.limits;
  const end = offset + length;
  if (offset % align !== 0 || length % align !== 0 || (max && length > max) || fua !== nativeFua) {
    return writeAsync(c, offset, data, fua, req);
  }
  const t = c.tracker.track(offset, end, true);
  if (typeof t !== "number") return writeAsync(c, offset, data, fua, req, t);
  const finish = () => {
    c.tracker.untrack(t);
    c.stats.writes++;
    c.stats.bytesWritten += length;
  };
  const fail = (e: unknown): never => {
    c.tracker.untrack(t);
    throw e;
  };
  // A failed write counts as a write, as in QEMU's bdrv_co_write_req_finish: it may have changed part of the range, so the next flush reaches the disk.
  const failed = (e: unknown): never => {
    c.writeGen++;
    return fail(e);
  };
  let p: Promise<void> | void;
  try {
    const ev = c.ownEvent("pwritev", req);
    if (ev) return writeAligned(c, offset, data, fua, req, ev).then(finish, fail);
    p = writeOne(c, offset, data, nativeFua, req);
  } catch (e) {
    c.writeGen++;
    c.tracker.untrack(t);
    return Promise.reject(e);
  }
  const done = (): Promise<void> | void => {
    c.writeGen++;
    let ev: Promise<void> | void;
    try {
      ev = c.ownEvent("pwritev_done", req);
    } catch (e) {
      return fail(e);
    }
    if (ev) return ev.then(finish, fail);
    finish();
  };
  if (isDone(p)) {
    try {
      return done() ?? DONE;
    } catch (e) {
      return Promise.reject(e);
    }
  }
  return (p as Promise<void>).then(done, failed);
}

async function writeAsync<N extends CoreNode<N>>(
  c: NodeCore<N>,
  offset: number,
  data: Uint8Array,
  fua: boolean,
  req: RequestInfo,
  tracked?: Promise<number>,
): Promise<void> {
  const length = data.length;
  const align = c.limits.requestAlignment;
  const start = offset - (offset % align);
  const end = roundUp(offset + length, align);
  let t = tracked ?? c.tracker.track(start, end, true);
  if (typeof t !== "number") t = await t;
  try {
    if (start === offset && end === offset + length) await writeAligned(c, offset, data, fua, req);
    else await writePadded(c, offset, data, start, end, fua, req);
  } finally {
    c.tracker.untrack(t);
  }
  c.stats.writes++;
  c.stats.bytesWritten += length;
}

/** Writes an unaligned range: reads the partial head and tail blocks, merges, writes the aligned range. */
export async function writePadded<N extends CoreNode<N>>(
  c: NodeCore<N>,
  offset: number,
  data: Uint8Array,
  start: number,
  end: number,
  fua: boolean,
  req: RequestInfo,
): Promise<void> {
  const align = c.limits.requestAlignment;
  const bounce = ioBuffer(end - start);
  const headLen = offset - start;
  const tailStart = offset + data.length;
  if (headLen) {
    const e1 = c.ownEvent("pwritev_rmw_head", req);
    if (e1) await e1;
    await readAligned(c, start, bounce.subarray(0, align), req);
    const e2 = c.ownEvent("pwritev_rmw_after_head", req);
    if (e2) await e2;
  }
  if (tailStart < end && (end - align >= start + align || !headLen)) {
    const e3 = c.ownEvent("pwritev_rmw_tail", req);
    if (e3) await e3;
    await readAligned(c, end - align, bounce.subarray(bounce.length - align), req);
    const e4 = c.ownEvent("pwritev_rmw_after_tail", req);
    if (e4) await e4;
  }
  bounce.set(data, headLen);
  await writeAligned(c, start, bounce, fua, req);
}

/**
 * Writes an aligned range: events, split at the max transfer, FUA natively
 * or by a flush. `pwritev` is the pending `pwritev` event when the caller
 * raised it already.
 */
export async function writeAligned<N extends CoreNode<N>>(
  c: NodeCore<N>,
  offset: number,
  data: Uint8Array,
  fua: boolean,
  req: RequestInfo,
  pwritev?: Promise<void>,
): Promise<void> {
  const ev = pwritev ?? c.ownEvent("pwritev", req);
  if (ev) await ev;
  const max = c.limits.maxTransfer;
  const nativeFua = fua && (c.inst.supportsFua ?? false);
  try {
    if (!max || data.length <= max) {
      await writeOne(c, offset, data, nativeFua, req);
    } else {
      for (let done = 0; done < data.length; done += max) {
        await writeOne(c, offset + done, data.subarray(done, Math.min(data.length, done + max)), nativeFua, req);
      }
    }
  } finally {
    c.writeGen++; // failed or not (see write)
  }
  const e5 = c.ownEvent("pwritev_done", req);
  if (e5) await e5;
  if (fua && !nativeFua) await flushRequest(c, { req });
}

function writeOne<N extends CoreNode<N>>(
  c: NodeCore<N>,
  offset: number,
  data: Uint8Array,
  fua: boolean,
  req: RequestInfo,
): Promise<void> | void {
  const inst = c.inst;
  const o = { fua, req };
  if (inst.pwrite) return inst.pwrite(offset, data, o);
  const child = c.passThrough("write", offset, data.length);
  if (inst.intercept) {
    return inst.intercept({ op: "write", offset, length: data.length, data, fua, req }, () => child.pwrite(offset, data, o));
  }
  return child.pwrite(offset, data, o);
}

async function writeCompressed<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, data: Uint8Array, req: RequestInfo): Promise<void> {
  const inst = c.inst;
  const child = c.node.driver.kind === "filter" ? c.primaryChild : undefined;
  if (!inst.pwriteCompressed && !child) {
    throw new BlockError(
      "ENOTSUP",
      `Cannot write ${data.length} compressed bytes at offset ${offset} on node '${c.name}': compression not supported by driver '${c.node.driver.name}'`,
      { node: c.name, offset, length: data.length },
    );
  }
  let t = c.tracker.track(offset, offset + data.length, true);
  if (typeof t !== "number") t = await t;
  try {
    const e6 = c.ownEvent("pwritev", req);
    if (e6) await e6;
    const o = { req, compressed: true };
    if (inst.pwriteCompressed) await inst.pwriteCompressed(offset, data, o);
    else if (inst.pwrite) await inst.pwrite(offset, data, o); // a filter forwards the flag
    else if (inst.intercept) {
      await inst.intercept({ op: "write", offset, length: data.length, data, compressed: true, req }, () => child!.pwrite(offset, data, o));
    } else await child!.pwrite(offset, data, o);
    c.writeGen++;
    const e7 = c.ownEvent("pwritev_done", req);
    if (e7) await e7;
  } finally {
    c.tracker.untrack(t);
  }
  c.stats.writes++;
  c.stats.bytesWritten += data.length;
}

/** The byte offset of `sector` for a request of `bytes` (whole sectors), or EINVAL. */
export function sectorOffset(sector: number, bytes: number, what: string): number {
  if (!Number.isSafeInteger(sector) || sector < 0) {
    throw new BlockError("EINVAL", `Cannot ${what} at sector ${sector}: sector must be a non-negative integer`);
  }
  if (bytes % SECTOR_SIZE !== 0) {
    throw new BlockError("EINVAL", `Cannot ${what} ${bytes} bytes at sector ${sector}: length must be a multiple of ${SECTOR_SIZE}`);
  }
  return sector * SECTOR_SIZE;
}
