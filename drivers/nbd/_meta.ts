/**
 * NBD metadata contexts on the server side. Each context is a small
 * provider — a name and a function answering extents for a range — so
 * `base:allocation`, `qemu:allocation-depth` and `qemu:dirty-bitmap:NAME`
 * plug into the server the same way.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import { STATE_DIRTY, STATE_HOLE, STATE_ZERO } from "./_protocol.ts";

/** One extent of a block-status answer. */
export interface MetaExtent {
  /** Length in bytes (non-zero). */
  length: number;
  /** Status flags as the context defines them. */
  flags: number;
}

/** A metadata context the server can offer. */
export interface MetaContextProvider {
  /** Full context name (`base:allocation`, `qemu:allocation-depth`). */
  readonly name: string;
  /**
   * Extents from `offset` covering at most `length` bytes (at least one; the
   * server merges neighbours with equal flags and caps their count).
   */
  extents(offset: number, length: number, maxExtents: number): Promise<MetaExtent[]>;
}

/** Most extents one block-status answer carries per context (the spec asks for at most 2^20). */
export const MAX_EXTENTS = 1 << 16;

/** Walks `[offset, offset+length)` with `step`, merging neighbours with equal flags, up to MAX_EXTENTS. */
async function collect(
  offset: number,
  length: number,
  max: number,
  step: (offset: number, length: number) => Promise<MetaExtent>,
): Promise<MetaExtent[]> {
  const out: MetaExtent[] = [];
  const end = offset + length;
  for (let at = offset; at < end;) {
    const e = await step(at, end - at);
    const n = Math.max(1, Math.min(e.length, end - at));
    const last = out[out.length - 1];
    if (last && last.flags === e.flags) last.length += n;
    else {
      if (out.length >= Math.min(max, MAX_EXTENTS)) break;
      out.push({ length: n, flags: e.flags });
    }
    at += n;
  }
  return out;
}

/** `base:allocation`: NBD_STATE_HOLE where no layer holds data, NBD_STATE_ZERO where the range reads as zeros. */
export function baseAllocation(node: BlockNode): MetaContextProvider {
  return {
    name: "base:allocation",
    extents: (offset, length, max) =>
      collect(offset, length, max, async (o, l) => {
        const st = await node.blockStatus(o, l);
        return { length: st.length, flags: (st.data ? 0 : STATE_HOLE) | (st.zero ? STATE_ZERO : 0) };
      }),
  };
}

function formatNode(n: BlockNode): BlockNode {
  let cur: BlockNode | undefined = n;
  while (cur && cur.driver.kind === "filter") cur = cur.primaryChild;
  return cur ?? n;
}

/**
 * `qemu:allocation-depth` (qemu-nbd `-A`): 0 where no layer of the backing
 * chain allocates the range, 1 where the top image does, 2 for its backing
 * file, and so on.
 */
export function allocationDepth(node: BlockNode): MetaContextProvider {
  return {
    name: "qemu:allocation-depth",
    extents: (offset, length, max) =>
      collect(offset, length, max, async (o, l) => {
        let n = formatNode(node);
        for (let depth = 1;; depth++) {
          const st = await n.blockStatus(o, l);
          if (st.allocated) return { length: st.length, flags: depth };
          const backing = n.backing;
          if (!backing || o >= backing.length) return { length: st.length, flags: 0 };
          l = Math.min(st.length, backing.length - o);
          n = formatNode(backing);
        }
      }),
  };
}

/**
 * `qemu:dirty-bitmap:NAME` (qemu-nbd `-B NAME`): NBD_STATE_DIRTY where the
 * node's dirty bitmap `name` is dirty, 0 where it is clean.
 *
 * @example
 * ```ts
 * import { createImage, open } from "../../mod.ts";
 * import { dirtyBitmap } from "./_meta.ts";
 * const path = await Deno.makeTempFile({ suffix: ".qcow2" });
 * await createImage(path, "qcow2", 1 << 20);
 * await using img = await open(path);
 * await img.bitmaps.add("b0");
 * await img.pwrite(65536, new Uint8Array(512));
 * console.log(await dirtyBitmap(img, "b0").extents(0, 1 << 20, 16));
 * // [ { length: 65536, flags: 0 }, { length: 65536, flags: 1 }, { length: 917504, flags: 0 } ]
 * await Deno.remove(path);
 * ```
 */
export function dirtyBitmap(node: BlockNode, name: string): MetaContextProvider {
  return {
    name: `qemu:dirty-bitmap:${name}`,
    extents: (offset, length, max) =>
      collect(offset, length, max, async (o, l) => {
        const e = await node.bitmaps.extent(name, o, l);
        return { length: e.length, flags: e.dirty ? STATE_DIRTY : 0 };
      }),
  };
}

/** Contexts matching a `NBD_OPT_LIST_META_CONTEXT` query: a name ending in ':' is a prefix, others match exactly. */
export function matchList(providers: readonly MetaContextProvider[], queries: readonly string[]): MetaContextProvider[] {
  if (queries.length === 0) return [...providers];
  return providers.filter((p) => queries.some((q) => (q.endsWith(":") ? p.name.startsWith(q) : p.name === q)));
}

/** Contexts a `NBD_OPT_SET_META_CONTEXT` selects: exact names only, each once. */
export function matchSet(providers: readonly MetaContextProvider[], queries: readonly string[]): MetaContextProvider[] {
  return providers.filter((p) => queries.includes(p.name));
}
