/**
 * Block status and resize on a node: block status is clipped to the node's
 * end and passed through filters; truncate holds the whole node (no request
 * runs meanwhile) and, as QEMU's bdrv_co_truncate, zeroes the part of the
 * grown area a longer backing file would otherwise show through.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import { MAX_LENGTH, newRequest, roundUp } from "./request.ts";
import type { BlockStatusOf, RequestInfo, RequestOptions, TruncateOptions } from "./types.ts";
import type { CoreNode, NodeCore } from "./_node_core.ts";
import { zeroes } from "./_zero_discard.ts";

/** `BlockNode.blockStatus`. */
export function statusRequest<N extends CoreNode<N>>(
  c: NodeCore<N>,
  offset: number,
  length: number,
  opts: RequestOptions,
): Promise<BlockStatusOf<N>> {
  if (c.listeners.length) return c.span("block-status", offset, length, opts, (o) => blockStatus(c, offset, length, o));
  return blockStatus(c, offset, length, opts);
}

async function blockStatus<N extends CoreNode<N>>(
  c: NodeCore<N>,
  offset: number,
  length: number,
  opts: RequestOptions,
): Promise<BlockStatusOf<N>> {
  c.check("query block status of", offset, length, false);
  // A node with a request alignment answers for whole blocks: the last one covers the partial tail of its length too
  // (QEMU's node lengths are whole sectors and its block status aligns queries to request_alignment).
  const align = c.limits.requestAlignment;
  const end = align > 1 ? roundUp(c.length, align) : c.length;
  if (offset >= end || length === 0) {
    return { offset, length: 0, data: false, zero: true, allocated: false, present: false, depth: 0 };
  }
  length = Math.min(length, end - offset);
  const req = opts.req ?? newRequest(c.name, "block-status", offset, length);
  const inst = c.inst;
  if (inst.blockStatus) {
    const st = await inst.blockStatus(offset, length, { req });
    const out = { ...st, offset, length: Math.max(1, Math.min(st.length, length)) };
    if (st.recurse) {
      delete out.recurse;
      if (out.data && !out.zero && out.hostOffset !== undefined && out.file && out.file !== c.node) await recurse(out, req);
    }
    return out;
  }
  const child = c.node.driver.kind === "filter" ? c.primaryChild : undefined;
  if (child) return await c.forward({ op: "block-status", offset, length, req }, () => child.blockStatus(offset, length, { req }));
  return { offset, length, data: true, zero: false, allocated: true, present: true, depth: 0, hostOffset: offset, file: c.node };
}

/**
 * QEMU's BDRV_BLOCK_RECURSE in bdrv_co_block_status: data the driver maps to
 * `st.file` at `st.hostOffset` is zero where that file reads as zeros (a
 * hole, or past its end); the extent is cut where the file's answer ends.
 * The file's answer only adds information: an error asking it is ignored.
 */
async function recurse<N extends CoreNode<N>>(st: BlockStatusOf<N>, req: RequestInfo): Promise<void> {
  const file = st.file!;
  let f: BlockStatusOf<N>;
  try {
    f = await file.blockStatus(st.hostOffset!, st.length, { req });
  } catch {
    return;
  }
  if (f.length === 0 || (f.zero && st.hostOffset! + f.length >= file.length)) {
    // Past the end of the file, or a hole up to it: reads as zeros, however far the extent goes.
    st.zero = true;
    return;
  }
  st.length = Math.min(st.length, f.length);
  if (f.zero) st.zero = true;
}

/** `BlockNode.truncate`. */
export function truncateRequest<N extends CoreNode<N>>(c: NodeCore<N>, length: number, opts: TruncateOptions): Promise<void> {
  if (c.listeners.length) return c.span("truncate", length, 0, opts, (o) => truncate(c, length, o));
  return truncate(c, length, opts);
}

async function truncate<N extends CoreNode<N>>(c: NodeCore<N>, length: number, opts: TruncateOptions): Promise<void> {
  if (!Number.isSafeInteger(length) || length < 0 || length > MAX_LENGTH) {
    throw new BlockError(
      "EINVAL",
      `Cannot resize node '${c.name}' to ${length} bytes: size must be a non-negative integer below ${MAX_LENGTH}`,
      { node: c.name },
    );
  }
  if (c.readOnly) throw new BlockError("EROFS", `Cannot resize node '${c.name}' to ${length} bytes: node is read-only`, { node: c.name });
  const req = opts.req ?? newRequest(c.name, "truncate", length, 0);
  const inst = c.inst;
  let t = c.tracker.track(0, MAX_LENGTH, true);
  if (typeof t !== "number") t = await t;
  try {
    const old = c.length;
    if (inst.truncate) {
      // A backing file longer than the old size would show through in the new area, so that part must read as zeros.
      const backing = c.node.children.get("backing");
      // As QEMU's bdrv_co_truncate and qcow2_co_truncate, the whole grown part is then zeroed (zero clusters past the backing file too).
      const zeroFill = length > old && backing && backing.length > old ? length - old : 0;
      const done = await inst.truncate(length, { ...opts, req, ...(zeroFill ? { zeroFill } : {}) });
      if (zeroFill && !done?.zeroFilled) await zeroGrown(c, old, length, req);
    } else if (c.node.driver.kind === "filter" && c.primaryChild) {
      const child = c.primaryChild;
      await c.forward({ op: "truncate", offset: length, length: 0, req }, () => child.truncate(length, { ...opts, req }));
    } else {
      throw new BlockError("ENOTSUP", `Cannot resize node '${c.name}': driver '${c.node.driver.name}' does not support resizing`, {
        node: c.name,
      });
    }
    c.writeGen++;
  } finally {
    c.tracker.untrack(t);
  }
}

function zeroAlign<N extends CoreNode<N>>(c: NodeCore<N>): number {
  return Math.max(c.limits.requestAlignment, c.limits.optWriteZero || 1);
}

/**
 * Zeroes the grown part `[old, end)` a longer backing file would show
 * through in: an unaligned head as zero buffers (QEMU's qcow2_co_truncate
 * writes explicit zeros there), the rest up to the new end only through
 * the driver's zero writes, without the fallback to buffers.
 */
async function zeroGrown<N extends CoreNode<N>>(c: NodeCore<N>, old: number, end: number, req: RequestInfo): Promise<void> {
  const s = Math.min(roundUp(old, zeroAlign(c)), end);
  if (s > old) await zeroes(c, old, s - old, { req });
  if (end > s) await zeroes(c, s, end - s, { req, noFallback: true });
}
