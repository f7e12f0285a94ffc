/**
 * The extents `map` (and its SVG picture) list: block status through the
 * backing chain, merged the way qemu-img map merges them.
 *
 * @module
 */

import type { BlockNode } from "../core/node.ts";

/** One extent of `map` output (qemu-img's MapEntry). */
export interface MapEntry {
  /** Guest offset. */
  start: number;
  /** Length in bytes. */
  length: number;
  /** Backing-chain depth that defines the range (0 = the image itself). */
  depth: number;
  /** Some layer allocates the range. */
  present: boolean;
  /** The range reads as zeros. */
  zero: boolean;
  /** The range holds data. */
  data: boolean;
  /** The range is compressed. */
  compressed: boolean;
  /** Host offset, when known. */
  offset?: number;
  /** Host file name, when known. */
  filename?: string;
}

const CHUNK = 1 << 30;

/** The last image of `top`'s backing chain is a format node (not a protocol node such as nbd). */
function bottomIsFormat(top: BlockNode): boolean {
  let n = top.formatNode;
  while (n.backing) n = n.backing.formatNode;
  return n.driver.kind === "format";
}

/**
 * Block status of `[offset, offset+bytes)` through the backing chain as
 * qemu-img map's get_block_status sees it: the node's block status already
 * walks the chain (depth, present); this adds the host file name.
 */
export async function chainStatus(top: BlockNode, offset: number, bytes: number): Promise<MapEntry> {
  const st = await top.blockStatus(offset, bytes);
  const present = st.present ?? st.allocated;
  // What no layer allocates reads as zeros when the bottom layer is a format (QEMU's bdrv_co_do_block_status adds
  // BDRV_BLOCK_ZERO only for drivers with backing support); a protocol node (nbd with x-dirty-bitmap) says only what it said.
  const zeroBelow = !present && bottomIsFormat(top);
  const e: MapEntry = {
    start: offset,
    length: st.length,
    depth: st.depth ?? 0,
    present,
    zero: st.zero || zeroBelow,
    data: present && st.data,
    compressed: st.compressed ?? false,
  };
  if (st.hostOffset !== undefined && !st.compressed && present) {
    e.offset = st.hostOffset;
    // Below filters (blkdebug, throttle) the host file is further down.
    let host = st.file;
    while (host && typeof host.options.filename !== "string") host = host.primaryChild;
    const f = host?.options.filename;
    // qemu joins a relative backing name to a bare image name without "./".
    if (typeof f === "string") e.filename = f.startsWith("./") ? f.slice(2) : f;
  }
  return e;
}

function mergeable(a: MapEntry, b: MapEntry): boolean {
  return a.present === b.present && a.zero === b.zero && a.data === b.data && a.depth === b.depth &&
    (a.offset === undefined) === (b.offset === undefined) && a.filename === b.filename &&
    (a.offset === undefined || a.offset + a.length === b.offset);
}

/** Lists merged extents of `[start, end)`; `human` coalesces as qemu-img's human format does. */
export async function mapExtents(node: BlockNode, start: number, end: number, human: boolean): Promise<MapEntry[]> {
  const out: MapEntry[] = [];
  let curr: MapEntry | undefined;
  for (let off = start; off < end;) {
    const next = await chainStatus(node, off, Math.min(CHUNK, end - off));
    off += next.length;
    if (human && (!next.data || next.zero)) {
      next.data = false;
      next.zero = true;
    }
    if (curr && mergeable(curr, next)) {
      curr.length += next.length;
      continue;
    }
    if (curr) out.push(curr);
    curr = next;
  }
  if (curr) out.push(curr);
  return out;
}
