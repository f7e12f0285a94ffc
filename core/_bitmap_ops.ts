/**
 * Dispatch of the dirty bitmap operations (QEMU's block-dirty-bitmap-*,
 * qemu-img bitmap) to the node that keeps the bitmaps: this node or the
 * first one below its filters. `BlockNode.bitmaps` is a facade over
 * these; each change holds that node whole, as every image operation does.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { BitmapAddOptions, DirtyExtent } from "./types.ts";
import type { CoreNode, NodeCore } from "./_node_core.ts";
import { formatName, imageOp, implementer } from "./_image_ops.ts";

/** The error for a bitmap the image does not have. */
export function bitmapNotFound(node: string, name: string): BlockError {
  return new BlockError("ENOENT", `Dirty bitmap '${name}' not found`, { node });
}

/** Adds a persistent dirty bitmap (`BlockNode.bitmaps.add`); ENOTSUP when no node below has bitmaps. */
export function bitmapAdd<N extends CoreNode<N>>(c: NodeCore<N>, name: string, opts: BitmapAddOptions): Promise<void> {
  if (!implementer(c, "bitmapAdd")) {
    return Promise.reject(
      new BlockError("ENOTSUP", `Can't store persistent bitmaps to '${c.name}': format '${formatName(c)}' has no bitmaps`, {
        node: c.name,
      }),
    );
  }
  return imageOp(c, "bitmapAdd", `add bitmap '${name}' to`, true, (i) => i.bitmapAdd!(name, opts));
}

/** Removes or clears bitmap `name` (`BlockNode.bitmaps.remove`, `clear`). */
export function bitmapRemoveOrClear<N extends CoreNode<N>>(
  c: NodeCore<N>,
  key: "bitmapRemove" | "bitmapClear",
  name: string,
  what: string,
): Promise<void> {
  if (!implementer(c, key)) return Promise.reject(bitmapNotFound(c.name, name));
  return imageOp(c, key, `${what} bitmap '${name}' of`, true, (i) => i[key]!(name));
}

/** Starts or stops bitmap `name` recording writes (`BlockNode.bitmaps.enable`). */
export function bitmapEnable<N extends CoreNode<N>>(c: NodeCore<N>, name: string, enabled: boolean): Promise<void> {
  if (!implementer(c, "bitmapSetEnabled")) return Promise.reject(bitmapNotFound(c.name, name));
  return imageOp(
    c,
    "bitmapSetEnabled",
    `${enabled ? "enable" : "disable"} bitmap '${name}' of`,
    true,
    (i) => i.bitmapSetEnabled!(name, enabled),
  );
}

/** Marks dirty in bitmap `name` of `c` what bitmap `sourceName` of `src` has dirty (`BlockNode.bitmaps.merge`). */
export async function bitmapMerge<N extends CoreNode<N>>(
  c: NodeCore<N>,
  name: string,
  src: NodeCore<N>,
  sourceName: string,
): Promise<void> {
  // The source answers first, so a missing or inconsistent source fails before the target changes.
  await bitmapExtent(src, sourceName, 0, 0);
  if (src.length !== c.length) {
    throw new BlockError(
      "EINVAL",
      `Bitmaps are of different sizes (destination size is ${c.length}, source size is ${src.length}) and can't be merged`,
      { node: c.name },
    );
  }
  if (!implementer(c, "bitmapMerge")) throw bitmapNotFound(c.name, name);
  await imageOp(c, "bitmapMerge", `merge into bitmap '${name}' of`, true, (i) => i.bitmapMerge!(name, bitmapDirtyRanges(src, sourceName)));
}

/** The run of equal state in bitmap `name` from `offset`, at most `length` bytes and never past the end (`BlockNode.bitmaps.extent`). */
export async function bitmapExtent<N extends CoreNode<N>>(
  c: NodeCore<N>,
  name: string,
  offset: number,
  length: number,
): Promise<DirtyExtent> {
  const n = implementer(c, "bitmapExtent");
  if (!n) throw bitmapNotFound(c.name, name);
  c.check("query bitmap of", offset, length, false);
  const end = Math.min(c.length, offset + length);
  const e = await n.inst.bitmapExtent!(name, offset, Math.max(0, end - offset));
  if (offset >= end) return { offset, length: 0, dirty: false };
  return { offset, length: Math.max(1, Math.min(e.length, end - offset)), dirty: e.dirty };
}

/** The dirty runs of bitmap `name` in `[offset, offset + length)`, in order (`BlockNode.bitmaps.dirtyRanges`). */
export async function* bitmapDirtyRanges<N extends CoreNode<N>>(
  c: NodeCore<N>,
  name: string,
  offset = 0,
  length = Infinity,
): AsyncGenerator<DirtyExtent> {
  const end = Math.min(c.length, offset + length);
  if (offset >= end) {
    await bitmapExtent(c, name, offset, 0);
    return;
  }
  for (let at = offset; at < end;) {
    const e = await bitmapExtent(c, name, at, end - at);
    if (e.dirty) yield e;
    at += e.length;
  }
}
