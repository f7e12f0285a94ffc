/**
 * The image operations a `BlockNode` groups by subject, as qemu-img groups
 * them by verb: `node.snapshots` (qemu-img snapshot, QEMU's
 * bdrv_snapshot_*), `node.bitmaps` (qemu-img bitmap, QEMU's
 * block-dirty-bitmap-*) and `node.debug` (qemu-io's break/resume, QEMU's
 * bdrv_debug_*). The core implements them (`_node_groups.ts`): each finds
 * the node that serves the operation (this one or one below its filters)
 * and holds it whole while the operation runs.
 *
 * @module
 */

import type { BitmapAddOptions, BitmapInfo, DirtyExtent, SnapshotInfo } from "./types.ts";

/**
 * A node's internal snapshots (`node.snapshots`).
 *
 * @example
 * ```ts
 * import { createImage, open } from "@blkgraph/blkgraph";
 * const path = await Deno.makeTempFile({ suffix: ".qcow2" });
 * await createImage(path, "qcow2", 1 << 20);
 * await using img = await open(path);
 * await img.pwrite(0, new Uint8Array(512).fill(1));
 * await img.snapshots.create({ id: "", name: "before", vmStateSize: 0, dateSec: 0, dateNsec: 0, vmClockNsec: 0 });
 * await img.pwrite(0, new Uint8Array(512).fill(2));
 * await img.snapshots.goto("before");
 * const buf = new Uint8Array(1);
 * await img.pread(0, buf);
 * console.log((await img.snapshots.list()).map((s) => s.name), buf[0]); // [ "before" ] 1
 * await Deno.remove(path);
 * ```
 */
export interface NodeSnapshots<N> {
  /**
   * The node serving snapshot operations (QEMU's bdrv_snapshot_fallback):
   * this node when its driver has any snapshot callback, else the same
   * search on its primary child — raw and filters pass them to their file,
   * an rbd node serves them — as long as no other child holds data (a
   * `data-file` child stops the search, as QEMU refuses that fallback).
   * A node with some of the callbacks serves all four: a qcow2 node that
   * lists its snapshots but cannot create one refuses, rather than letting
   * the request reach the protocol node below it.
   */
  node(): N | undefined;

  /** The image's internal snapshots (empty when its format has none). */
  list(): Promise<SnapshotInfo[]>;

  /** Creates an internal snapshot (qemu-img snapshot -c); what was written before is flushed first, so the snapshot holds it. */
  create(info: SnapshotInfo): Promise<void>;

  /** Deletes an internal snapshot by ID or name (qemu-img snapshot -d). */
  delete(idOrName: string): Promise<void>;

  /** Reverts the image to an internal snapshot by ID or name (qemu-img snapshot -a). */
  goto(idOrName: string): Promise<void>;
}

/**
 * A node's dirty bitmaps (`node.bitmaps`), from this node or the first one
 * below its filters that has them.
 *
 * @example
 * ```ts
 * import { createImage, open } from "@blkgraph/blkgraph";
 * const path = await Deno.makeTempFile({ suffix: ".qcow2" });
 * await createImage(path, "qcow2", 1 << 20);
 * await using img = await open(path);
 * await img.bitmaps.add("backup", { granularity: 65536 });
 * await img.pwrite(70000, new Uint8Array(10));
 * for await (const e of img.bitmaps.dirtyRanges("backup")) console.log(e); // { offset: 65536, length: 65536, dirty: true }
 * await Deno.remove(path);
 * ```
 */
export interface NodeBitmaps<N> {
  /** The image's dirty bitmaps (empty when it has none). */
  list(): Promise<BitmapInfo[]>;

  /** The image can store persistent dirty bitmaps (qcow2 version 3). */
  readonly persistent: boolean;

  /** Adds a persistent dirty bitmap that records writes from now on (qemu-img bitmap --add). */
  add(name: string, opts?: BitmapAddOptions): Promise<void>;

  /** Removes a dirty bitmap from the image (--remove). */
  remove(name: string): Promise<void>;

  /** Marks a dirty bitmap all clean (--clear). */
  clear(name: string): Promise<void>;

  /** Makes a dirty bitmap record writes (--enable); `false` stops it (--disable). */
  enable(name: string, enabled?: boolean): Promise<void>;

  /** Stops a dirty bitmap recording writes (--disable). */
  disable(name: string): Promise<void>;

  /**
   * Marks dirty in bitmap `name` everything bitmap `source.name` has dirty
   * (--merge), from this image or from `source.node`, which must have the
   * same size (qemu-img bitmap --merge SOURCE [-b FILE]).
   */
  merge(name: string, source: { name: string; node?: N }): Promise<void>;

  /**
   * The run of equal state in bitmap `name` that starts at `offset` (at most
   * `length` bytes, never past the end): whether it is dirty and how far.
   */
  extent(name: string, offset: number, length: number): Promise<DirtyExtent>;

  /** The dirty runs of bitmap `name` in `[offset, offset + length)`, in order (what an incremental backup copies). */
  dirtyRanges(name: string, offset?: number, length?: number): AsyncGenerator<DirtyExtent>;
}

/**
 * Breakpoints on a node's BLKDBG events (`node.debug`), served by the first
 * node down the primary-child chain that offers them (a `blkdebug` filter;
 * QEMU's bdrv_find_debug_node); ENOTSUP when there is none.
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * await using img = await open({ driver: "raw", file: { driver: "blkdebug", image: { driver: "memory", size: 4096 } } });
 * img.debug.break("pwritev", "A");
 * const write = img.pwrite(0, new Uint8Array(512));
 * await img.debug.waitBreak("A");
 * console.log(img.debug.isSuspended("A")); // true
 * img.debug.resume("A");
 * await write;
 * ```
 */
export interface NodeDebug {
  /** Suspends the next request that raises `event` below this node, tagging it `tag` (qemu-io `break`). */
  break(event: string, tag: string): void;

  /** Removes breakpoint `tag` and resumes requests held there (qemu-io `remove_break`). */
  removeBreak(tag: string): void;

  /** Resumes the request suspended at `tag` (qemu-io `resume`). */
  resume(tag: string): void;

  /** Whether a request is suspended at `tag`. */
  isSuspended(tag: string): boolean;

  /** Resolves when a request is suspended at `tag` (qemu-io `wait_break`). */
  waitBreak(tag: string): Promise<void>;
}
