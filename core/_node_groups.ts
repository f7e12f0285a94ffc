/**
 * The core's implementation of `node.snapshots`, `node.bitmaps` and
 * `node.debug` (the interfaces in `node_groups.ts`): thin facades over the
 * dispatch in `_image_ops.ts` and `_bitmap_ops.ts`.
 *
 * @module
 */

import type { BitmapAddOptions, BitmapInfo, DirtyExtent, SnapshotInfo } from "./types.ts";
import { type CoreNode, coreOf, type NodeCore } from "./_node_core.ts";
import * as ops from "./_image_ops.ts";
import * as bitmaps from "./_bitmap_ops.ts";
import type { NodeBitmaps, NodeDebug, NodeSnapshots } from "./node_groups.ts";

/** `node.snapshots`. */
export class Snapshots<N extends CoreNode<N>> implements NodeSnapshots<N> {
  #c: NodeCore<N>;

  /** The snapshots of the node whose core is `core` (the node builds this). */
  constructor(core: NodeCore<N>) {
    this.#c = core;
  }

  /** See {@linkcode NodeSnapshots.node}. */
  node(): N | undefined {
    return ops.snapshotCore(this.#c)?.node;
  }

  /** The image's internal snapshots (empty when its format has none). */
  list(): Promise<SnapshotInfo[]> {
    return ops.snapshotList(this.#c);
  }

  /** Creates an internal snapshot (qemu-img snapshot -c); what was written before is flushed first, so the snapshot holds it. */
  create(info: SnapshotInfo): Promise<void> {
    return ops.snapshotCreate(this.#c, info);
  }

  /** Deletes an internal snapshot by ID or name (qemu-img snapshot -d). */
  delete(idOrName: string): Promise<void> {
    return ops.snapshotOp(this.#c, "snapshotDelete", "delete a snapshot", idOrName);
  }

  /** Reverts the image to an internal snapshot by ID or name (qemu-img snapshot -a). */
  goto(idOrName: string): Promise<void> {
    return ops.snapshotOp(this.#c, "snapshotGoto", "apply a snapshot", idOrName);
  }
}

/** `node.bitmaps`. */
export class Bitmaps<N extends CoreNode<N>> implements NodeBitmaps<N> {
  #c: NodeCore<N>;

  /** The bitmaps of the node whose core is `core` (the node builds this). */
  constructor(core: NodeCore<N>) {
    this.#c = core;
  }

  /** The image's dirty bitmaps (empty when it has none). */
  async list(): Promise<BitmapInfo[]> {
    const n = ops.implementer(this.#c, "bitmapList");
    return n ? await n.inst.bitmapList!() : [];
  }

  /** The image can store persistent dirty bitmaps (qcow2 version 3). */
  get persistent(): boolean {
    const n = ops.implementer(this.#c, "persistentBitmaps");
    return n !== undefined && n.inst.persistentBitmaps === true;
  }

  /** Adds a persistent dirty bitmap that records writes from now on (qemu-img bitmap --add). */
  add(name: string, opts: BitmapAddOptions = {}): Promise<void> {
    return bitmaps.bitmapAdd(this.#c, name, opts);
  }

  /** Removes a dirty bitmap from the image (--remove). */
  remove(name: string): Promise<void> {
    return bitmaps.bitmapRemoveOrClear(this.#c, "bitmapRemove", name, "remove");
  }

  /** Marks a dirty bitmap all clean (--clear). */
  clear(name: string): Promise<void> {
    return bitmaps.bitmapRemoveOrClear(this.#c, "bitmapClear", name, "clear");
  }

  /** Makes a dirty bitmap record writes (--enable); `false` stops it (--disable). */
  enable(name: string, enabled = true): Promise<void> {
    return bitmaps.bitmapEnable(this.#c, name, enabled);
  }

  /** Stops a dirty bitmap recording writes (--disable). */
  disable(name: string): Promise<void> {
    return this.enable(name, false);
  }

  /**
   * Marks dirty in bitmap `name` everything bitmap `source.name` has dirty
   * (--merge), from this image or from `source.node`, which must have the
   * same size (qemu-img bitmap --merge SOURCE [-b FILE]).
   */
  merge(name: string, source: { name: string; node?: N }): Promise<void> {
    return bitmaps.bitmapMerge(this.#c, name, source.node ? coreOf(source.node) : this.#c, source.name);
  }

  /**
   * The run of equal state in bitmap `name` that starts at `offset` (at most
   * `length` bytes, never past the end): whether it is dirty and how far.
   */
  extent(name: string, offset: number, length: number): Promise<DirtyExtent> {
    return bitmaps.bitmapExtent(this.#c, name, offset, length);
  }

  /** The dirty runs of bitmap `name` in `[offset, offset + length)`, in order (what an incremental backup copies). */
  dirtyRanges(name: string, offset = 0, length = Infinity): AsyncGenerator<DirtyExtent> {
    return bitmaps.bitmapDirtyRanges(this.#c, name, offset, length);
  }
}

/** `node.debug`. */
export class Debug<N extends CoreNode<N>> implements NodeDebug {
  #c: NodeCore<N>;

  /** The breakpoints below the node whose core is `core` (the node builds this). */
  constructor(core: NodeCore<N>) {
    this.#c = core;
  }

  /** Suspends the next request that raises `event` below this node, tagging it `tag` (qemu-io `break`). */
  break(event: string, tag: string): void {
    ops.debugInstance(this.#c).debugBreakpoint!(event, tag);
  }

  /** Removes breakpoint `tag` and resumes requests held there (qemu-io `remove_break`). */
  removeBreak(tag: string): void {
    ops.debugInstance(this.#c).debugRemoveBreakpoint!(tag);
  }

  /** Resumes the request suspended at `tag` (qemu-io `resume`). */
  resume(tag: string): void {
    ops.debugInstance(this.#c).debugResume!(tag);
  }

  /** Whether a request is suspended at `tag`. */
  isSuspended(tag: string): boolean {
    return ops.debugInstance(this.#c).debugIsSuspended!(tag);
  }

  /** Resolves when a request is suspended at `tag` (qemu-io `wait_break`). */
  waitBreak(tag: string): Promise<void> {
    return ops.debugInstance(this.#c).debugWaitBreak!(tag);
  }
}
