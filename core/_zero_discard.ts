/**
 * Write-zeroes and discard on a node (QEMU's bdrv_co_do_pwrite_zeroes and
 * bdrv_co_pdiscard): the driver gets the part aligned to its declared
 * granularity, split at its declared maximum. An unaligned head and tail of
 * a write-zeroes go to the driver as requests of their own, each within one
 * granule (QEMU's way: a driver may zero the whole granule when the rest of
 * it already reads as zeros); whatever the driver refuses with ENOTSUP is
 * written as zero buffers (unless the caller forbids the fallback). A
 * discard is advisory: only its aligned part is passed on.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import { newRequest, roundUp } from "./request.ts";
import type { BlockLimits, RequestOptions, WriteOptions, WriteZeroesOptions } from "./types.ts";
import type { CoreNode, NodeCore } from "./_node_core.ts";
import { writeAligned, writePadded } from "./_read_write.ts";
import { flushRequest } from "./_flush.ts";

const ZERO_CHUNK = 1 << 20;

/** `BlockNode.pwriteZeroes`. */
export function zeroesRequest<N extends CoreNode<N>>(
  c: NodeCore<N>,
  offset: number,
  length: number,
  opts: WriteZeroesOptions,
): Promise<void> {
  if (c.listeners.length) return c.span("write-zeroes", offset, length, opts, (o) => writeZeroes(c, offset, length, o));
  return writeZeroes(c, offset, length, opts);
}

async function writeZeroes<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
  c.check("write zeroes to", offset, length, true);
  if (length === 0) return;
  const req = opts.req ?? newRequest(c.name, "write-zeroes", offset, length);
  const fua = (opts.fua ?? false) || c.writeThrough;
  let t = c.tracker.track(offset, offset + length, true);
  if (typeof t !== "number") t = await t;
  try {
    const e1 = c.ownEvent("pwritev_zero", req);
    if (e1) await e1;
    await zeroes(c, offset, length, { ...opts, fua: fua && (c.inst.supportsFua ?? false), req });
    c.writeGen++;
  } finally {
    c.tracker.untrack(t);
  }
  c.stats.writeZeroes++;
  if (fua && !c.inst.supportsFua) await flushRequest(c, { req });
}

/** Makes `[offset, offset + length)` read as zeros (the request is tracked by the caller). */
export async function zeroes<N extends CoreNode<N>>(
  c: NodeCore<N>,
  offset: number,
  length: number,
  opts: WriteZeroesOptions,
): Promise<void> {
  const inst = c.inst;
  if (inst.pwriteZeroes) {
    const zalign = Math.max(c.limits.requestAlignment, c.limits.optWriteZero || 1);
    const end = offset + length;
    const s = Math.min(roundUp(offset, zalign), end);
    // As QEMU's bdrv_co_do_pwrite_zeroes: an unaligned tail goes on its own, at the end of the node too (the
    // driver then sees where the node ends inside its granule: qcow2 zeroes only the subclusters up to there).
    const e = Math.max(s, end - (end % zalign));
    const maxZ = c.limits.maxWriteZero;
    const max = maxZ ? Math.max(zalign, maxZ - (maxZ % zalign)) : Number.MAX_SAFE_INTEGER;
    if (s > offset) await zeroPart(c, offset, s - offset, opts);
    for (let o = s; o < e; o += max) {
      const n = Math.min(max, e - o);
      try {
        await inst.pwriteZeroes(o, n, opts);
      } catch (err) {
        if (!(err instanceof BlockError && err.code === "ENOTSUP") || opts.noFallback) throw err;
        await zeroBuffers(c, o, n, opts);
      }
    }
    if (end > e) await zeroPart(c, e, end - e, opts);
    return;
  }
  const child = c.node.driver.kind === "filter" ? c.primaryChild : undefined;
  if (child) {
    return await c.forward(
      { op: "write-zeroes", offset, length, fua: opts.fua, req: opts.req },
      () => child.pwriteZeroes(offset, length, opts),
    );
  }
  if (opts.noFallback) {
    c.fail("ENOTSUP", "write zeroes to", offset, length, "no fast path and fallback disallowed");
  }
  await zeroBuffers(c, offset, length, opts);
}

/**
 * An unaligned piece of a write-zeroes, within one granule: the driver's, if
 * it is request-aligned and the driver takes it; else zero buffers, or
 * ENOTSUP when the caller forbade the fallback.
 */
async function zeroPart<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
  const a = c.limits.requestAlignment;
  if (c.inst.pwriteZeroes && offset % a === 0 && (length % a === 0 || offset + length === c.length)) {
    try {
      return await c.inst.pwriteZeroes(offset, length, opts);
    } catch (err) {
      if (!(err instanceof BlockError && err.code === "ENOTSUP")) throw err;
    }
  }
  if (opts.noFallback) {
    throw new BlockError(
      "ENOTSUP",
      `Cannot write zeroes to ${length} bytes at offset ${offset} on node '${c.name}': not aligned to the driver's zero granularity and fallback disallowed`,
      { node: c.name, offset, length },
    );
  }
  return await zeroBuffers(c, offset, length, opts);
}

async function zeroBuffers<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, length: number, opts: WriteOptions): Promise<void> {
  const align = c.limits.requestAlignment;
  const zero = new Uint8Array(Math.min(length, ZERO_CHUNK));
  for (let done = 0; done < length;) {
    const n = Math.min(zero.length, length - done);
    const o = offset + done;
    const s = o - (o % align);
    const e = roundUp(o + n, align);
    if (s === o && e === o + n) await writeAligned(c, o, zero.subarray(0, n), false, opts.req!);
    else await writePadded(c, o, zero.subarray(0, n), s, e, false, opts.req!);
    done += n;
  }
}

/** `BlockNode.pdiscard`. */
export function discardRequest<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, length: number, opts: RequestOptions): Promise<void> {
  if (c.listeners.length) return c.span("discard", offset, length, opts, (o) => discard(c, offset, length, o));
  return discard(c, offset, length, opts);
}

async function discard<N extends CoreNode<N>>(c: NodeCore<N>, offset: number, length: number, opts: RequestOptions): Promise<void> {
  c.check("discard", offset, length, true);
  if (length === 0) return;
  const req = opts.req ?? newRequest(c.name, "discard", offset, length);
  let t = c.tracker.track(offset, offset + length, true);
  if (typeof t !== "number") t = await t;
  try {
    const inst = c.inst;
    if (inst.pdiscard) {
      // Only the part aligned to the driver's discard granularity is passed (the end of the node counts as aligned).
      const dalign = c.limits.optDiscard || 1;
      const end = offset + length;
      const s = roundUp(offset, dalign);
      const e = end >= c.length ? end : end - (end % dalign);
      const maxD = c.limits.maxDiscard;
      const max = maxD ? Math.max(dalign, maxD - (maxD % dalign)) : Number.MAX_SAFE_INTEGER;
      for (let o = s; o < e; o += max) await inst.pdiscard(o, Math.min(max, e - o), { req });
    } else if (c.node.driver.kind === "filter" && c.primaryChild) {
      // A filter's own discard limits (blkdebug's opt-discard, max-discard) cut the request too, as in QEMU.
      const child = c.primaryChild;
      for (const [o, n] of discardPieces(offset, length, c.limits)) {
        await c.forward({ op: "discard", offset: o, length: n, req }, () => child.pdiscard(o, n, { req }));
      }
    }
    c.writeGen++;
  } finally {
    c.tracker.untrack(t);
  }
  c.stats.discards++;
}

/**
 * How QEMU's bdrv_co_pdiscard cuts a discard for a driver: a head piece up
 * to the discard alignment (`optDiscard`, at least the request alignment),
 * whole aligned pieces of at most `maxDiscard`, and the tail; so a driver
 * that only drops whole clusters sees piece boundaries on the alignment, not
 * wherever a maximum-sized chunk from an unaligned start happens to end.
 */
function discardPieces(offset: number, length: number, l: BlockLimits): [number, number][] {
  const ra = l.requestAlignment;
  const align = Math.max(l.optDiscard, ra);
  const max = l.maxDiscard || Number.MAX_SAFE_INTEGER;
  let head = offset % align;
  let tail = (offset + length) % align;
  const pieces: [number, number][] = [];
  for (let o = offset, left = length; left > 0;) {
    let num = left;
    if (head) {
      num = Math.min(left, align - head);
      if (num % ra) num %= ra;
      head = (head + num) % align;
    } else if (tail) {
      if (num > align) num -= tail;
      else if (tail % ra && tail > ra) {
        tail %= ra;
        num -= tail;
      }
    }
    if (num > max) num = max;
    pieces.push([o, num]);
    o += num;
    left -= num;
  }
  return pieces;
}
