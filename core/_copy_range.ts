/**
 * Copy offloading (QEMU's bdrv_co_copy_range, `qemu-img convert -C`): a
 * range of one node is copied into another without passing through memory,
 * by the protocol driver under both (the `file` driver's copy_file_range(2)).
 * The core resolves each side down the graph to a protocol node that offers
 * `copyRange`: a filter to its primary child at the same offset; a source
 * format node through its block status (the host offset of the data, as
 * QEMU's qcow2_co_copy_range_from; a range that reads as zeros becomes a
 * write-zeroes on the target); a target format node only through its
 * `copyRangeTarget` hook (raw: its window), since a format that allocates
 * on write (qcow2) cannot take data behind its back. Anything else fails
 * with ENOTSUP, and the caller copies the ordinary way, as qemu-img does.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import { type CoreNode, coreOf, type NodeCore } from "./_node_core.ts";
import type { RequestOptions } from "./types.ts";

/** Where a range of a node lives on a protocol node that can copy it. */
interface Resolved<N extends CoreNode<N>> {
  /** The protocol node (its driver offers `copyRange`), or undefined: the range reads as zeros. */
  node?: N;
  /** Offset on `node`. */
  offset: number;
  /** Bytes from the requested offset that resolve this way (at most the requested length). */
  length: number;
  /** Every node passed on the way down (their write generations move on a write). */
  path: NodeCore<N>[];
}

function unsupported(what: string, name: string): never {
  throw new BlockError("ENOTSUP", `Cannot copy range ${what} node '${name}': copy offloading is not supported there`, { node: name });
}

async function resolveSource<N extends CoreNode<N>>(node: N, offset: number, length: number, opts: RequestOptions): Promise<Resolved<N>> {
  const path: NodeCore<N>[] = [];
  for (let depth = 0; depth < 64; depth++) {
    const c = coreOf(node);
    c.check("copy range from", offset, length, false);
    path.push(c);
    if (c.inst.copyRange) return { node, offset, length, path };
    if (c.node.driver.kind === "filter" && c.primaryChild) {
      node = c.primaryChild;
      continue;
    }
    const st = await node.blockStatus(offset, length, opts);
    length = st.length;
    if (!st.data && st.zero) return { offset, length, path };
    if (!st.data || st.compressed || st.hostOffset === undefined || !st.file || st.file === node) unsupported("from", node.name);
    node = st.file;
    offset = st.hostOffset;
  }
  unsupported("from", node.name);
}

function resolveTarget<N extends CoreNode<N>>(node: N, offset: number, length: number): Resolved<N> {
  const path: NodeCore<N>[] = [];
  for (let depth = 0; depth < 64; depth++) {
    const c = coreOf(node);
    c.check("copy range to", offset, length, true);
    path.push(c);
    if (c.inst.copyRange) return { node, offset, length, path };
    if (c.node.driver.kind === "filter" && c.primaryChild) {
      node = c.primaryChild;
      continue;
    }
    const to = c.inst.copyRangeTarget?.(offset, length);
    if (!to) unsupported("to", node.name);
    node = to.node;
    offset = to.offset;
  }
  unsupported("to", node.name);
}

/**
 * `BlockNode.copyRange`: copies `length` bytes at `offset` of `src` to
 * `dstOffset` of `dst` through the protocol driver under both, piece by
 * piece as the source's mapping allows; ENOTSUP when either side cannot.
 */
export async function copyRange<N extends CoreNode<N>>(
  src: N,
  offset: number,
  length: number,
  dst: N,
  dstOffset: number,
  opts: RequestOptions = {},
): Promise<void> {
  const top = coreOf(dst);
  top.check("copy range to", dstOffset, length, true);
  for (let done = 0; done < length;) {
    const from = await resolveSource(src, offset + done, length - done, opts);
    const n = from.length;
    const at = dstOffset + done;
    const to = resolveTarget(dst, at, n);
    if (!from.node) await dst.pwriteZeroes(at, n, { mayUnmap: true, req: opts.req });
    else {
      const fc = coreOf(from.node);
      if (!fc.inst.copyRange || !to.node) unsupported("to", dst.name);
      // Serialised with overlapping requests on the target, as a write is.
      let t = top.tracker.track(at, at + n, true);
      if (typeof t !== "number") t = await t;
      try {
        await fc.inst.copyRange(from.offset, n, coreOf(to.node).inst, to.offset, opts);
      } finally {
        top.tracker.untrack(t);
      }
      for (const c of to.path) c.writeGen++;
      top.stats.writes++;
      top.stats.bytesWritten += n;
    }
    done += n;
  }
}
