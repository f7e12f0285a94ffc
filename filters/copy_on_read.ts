/**
 * The `copy-on-read` filter (QEMU's block/copy-on-read.c and the core's
 * copy-on-read path): a read of a range the image beneath it does not
 * allocate itself (it comes from a backing file, or reads as zeros) copies
 * the data into that image, whole clusters at a time, so the next read is
 * served locally. Zero data is copied as a write-zeroes; ranges already
 * allocated are read directly and never rewritten. The copy raises the
 * `cor_write` BLKDBG event on the child (blkdebug sees it). Writes, discards
 * and everything else pass through. The node must be writable ("Block node
 * is read-only" otherwise, as QEMU says). qemu-io's `-C` puts this filter on
 * top of the image ("Can't use copy-on-read on read-only device").
 *
 * @example
 * ```ts
 * import { createImage, open } from "../mod.ts";
 * const dir = await Deno.makeTempDir();
 * await createImage(`${dir}/base.raw`, "raw", 1 << 20);
 * await createImage(`${dir}/top.qcow2`, "qcow2", 1 << 20, { options: { backing_file: `${dir}/base.raw`, backing_fmt: "raw" } });
 * {
 *   await using img = await open({ driver: "copy-on-read", file: { driver: "qcow2", file: { driver: "file", filename: `${dir}/top.qcow2` } } });
 *   console.log((await img.blockStatus(0, 65536)).allocated); // false: top.qcow2 reads through to base.raw
 *   await img.pread(0, new Uint8Array(512));
 *   console.log((await img.blockStatus(0, 65536)).allocated); // true: the read copied the cluster into top.qcow2
 * }
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import type { BlockNode } from "../core/node.ts";
import { checkKnownOptions } from "../core/options.ts";
import { registerDriver } from "../core/registry.ts";
import { isZero } from "../core/_bytes.ts";
import type { RequestOptions } from "../core/types.ts";
import type { BlockDriver, DriverInstance, OpenContext } from "../core/node.ts";
import { ioBuffer } from "../core/_io_buffer.ts";

/** Largest copy done in one step (QEMU's MAX_BOUNCE_BUFFER, 16 MiB). */
const MAX_BOUNCE = 16 << 20;

/** A copy-on-read node's driver instance. */
export class CopyOnReadFilter implements DriverInstance {
  #child: BlockNode;
  #cluster: number;

  /** Copies into `child` at `clusterSize` granularity (0: no rounding). */
  constructor(child: BlockNode, clusterSize: number) {
    this.#child = child;
    this.#cluster = clusterSize;
  }

  /** Reads, copying what the child does not allocate itself into it first. */
  async pread(offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
    const child = this.#child;
    const end = offset + buf.length;
    const cs = this.#cluster;
    const limit = child.length;
    let at = cs ? offset - (offset % cs) : offset;
    const stop = Math.min(limit, cs ? Math.ceil(end / cs) * cs : end);
    let bounce: Uint8Array | undefined;
    while (at < stop) {
      const st = await child.blockStatus(at, Math.min(stop - at, MAX_BOUNCE), opts);
      const n = st.length;
      const from = Math.max(at, offset);
      const to = Math.min(at + n, end);
      if (st.allocated) {
        if (to > from) await child.pread(from, buf.subarray(from - offset, to - offset), opts);
      } else {
        bounce ??= ioBuffer(Math.min(MAX_BOUNCE, stop - at));
        const chunk = bounce.subarray(0, n);
        await child.pread(at, chunk, opts);
        await child.debugEvent("cor_write", opts.req);
        // The copy does not change what the image reads, so no flush is needed (QEMU's WRITE_UNCHANGED).
        if (isZero(chunk)) await child.pwriteZeroes(at, n, { req: opts.req });
        else await child.pwrite(at, chunk, { req: opts.req });
        if (to > from) buf.set(chunk.subarray(from - at, to - at), from - offset);
      }
      at += n;
    }
  }
}

async function openCopyOnRead(ctx: OpenContext): Promise<DriverInstance> {
  checkKnownOptions(ctx.options, [], "copy-on-read");
  // A copy-on-read node writes: QEMU's permission check refuses it read-only.
  if (ctx.readOnly) throw new BlockError("EROFS", "Block node is read-only", { node: ctx.node.name });
  const child = (await ctx.openChild("file"))!;
  const info = await child.info();
  const cs = typeof info["cluster-size"] === "number" ? info["cluster-size"] : 0;
  return new CopyOnReadFilter(child, cs);
}

/** The copy-on-read filter driver. */
export const copyOnReadDriver: BlockDriver = {
  name: "copy-on-read",
  kind: "filter",
  options: [],
  open: openCopyOnRead,
};

registerDriver(copyOnReadDriver);
