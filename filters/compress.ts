/**
 * The `compress` filter (QEMU's block/filter-compress.c): every write that
 * passes through it reaches its child as a compressed write, one whole
 * cluster at a time. Its request alignment is the child's cluster size, so
 * the core pads a write that does not cover whole clusters with the data
 * already there (read-modify-write) before the filter sees it, as QEMU's
 * request path does. Reads, write-zeroes, discards, block status and
 * flushes pass through unchanged.
 *
 * Its open refuses a child that cannot take compressed writes ("Compression
 * is not supported for underlying format: raw", QEMU's words) and, opened
 * for writing, an image whose length is not a multiple of its cluster size:
 * QEMU's permission check refuses write access without resize in that case
 * ("Cannot get 'write' permission without 'resize': Image size is not a
 * multiple of request alignment").
 *
 * @example
 * ```ts
 * import { createImage, open } from "../mod.ts";
 * const dir = await Deno.makeTempDir();
 * await createImage(`${dir}/a.qcow2`, "qcow2", 1 << 20);
 * {
 *   await using img = await open({ driver: "compress", file: { driver: "qcow2", file: { driver: "file", filename: `${dir}/a.qcow2` } } });
 *   await img.pwrite(1000, new Uint8Array(70000).fill(0xbb)); // clusters 0 and 1, compressed
 *   console.log((await img.formatNode.check()).compressedClusters); // 2
 * }
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import { QCOW2_MAX_WORKERS, runTaskPool } from "../core/_task_pool.ts";
import type { BlockNode } from "../core/node.ts";
import { checkKnownOptions } from "../core/options.ts";
import { registerDriver } from "../core/registry.ts";
import type { BlockLimits, WriteOptions } from "../core/types.ts";
import type { BlockDriver, DriverInstance, OpenContext } from "../core/node.ts";

/** A compress node's driver instance. */
export class CompressFilter implements DriverInstance {
  #child: BlockNode;
  #cluster: number;
  /** Writes are padded to whole clusters of the child. */
  readonly limits: Partial<BlockLimits>;

  /** Writes to `child` compressed, in clusters of `clusterSize` bytes (0: the child names none; one write each). */
  constructor(child: BlockNode, clusterSize: number) {
    this.#child = child;
    this.#cluster = clusterSize;
    this.limits = clusterSize ? { requestAlignment: clusterSize } : {};
  }

  /** Writes `data` (whole clusters, after the core's padding) as compressed cluster writes. */
  async pwrite(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const child = this.#child;
    const step = this.#cluster || data.length;
    const o = { req: opts.req, compressed: true };
    // QEMU hands the whole request to qcow2, whose task pool runs a cluster per task: the same pool here.
    await runTaskPool(Math.ceil(data.length / step), QCOW2_MAX_WORKERS, (i) => {
      const at = i * step;
      return child.pwrite(offset + at, data.subarray(at, Math.min(at + step, data.length)), o);
    });
  }
}

async function openCompress(ctx: OpenContext): Promise<DriverInstance> {
  checkKnownOptions(ctx.options, [], "compress");
  const child = (await ctx.openChild("file"))!;
  if (!child.supportsCompressedWrites) {
    throw new BlockError("ENOTSUP", `Compression is not supported for underlying format: ${child.driver.name}`, { node: ctx.node.name });
  }
  const info = await child.info();
  const cs = info["cluster-size"];
  const cluster = typeof cs === "number" && cs > 0 && (cs & (cs - 1)) === 0 ? cs : 0;
  if (!ctx.readOnly && cluster && child.length % cluster !== 0) {
    throw new BlockError(
      "EPERM",
      "Cannot get 'write' permission without 'resize': Image size is not a multiple of request alignment",
      { node: ctx.node.name },
    );
  }
  return new CompressFilter(child, cluster);
}

/** The compress filter driver. */
export const compressDriver: BlockDriver = {
  name: "compress",
  kind: "filter",
  options: [],
  open: openCompress,
};

registerDriver(compressDriver);
