/**
 * The qcow2 format driver: read and write qcow2 images (versions 2 and 3,
 * cluster sizes 512 B to 2 MiB, refcount widths 1 to 64 bits, backing
 * chains, compressed clusters, zero clusters, extended L2 entries, external
 * data files, lazy refcounts), crash-consistent metadata updates.
 *
 * @example
 * ```ts
 * import { createImage, open } from "@blkgraph/blkgraph";
 * const path = await Deno.makeTempFile({ suffix: ".qcow2" });
 * await createImage(path, "qcow2", 1 << 20, { options: { cluster_size: 4096 } });
 * {
 *   await using node = await open(path, { readOnly: true });
 *   console.log(node.formatName, (await node.info())["cluster-size"]); // qcow2 4096
 * }
 * await Deno.remove(path);
 * ```
 *
 * @module
 */

export { qcow2Driver, Qcow2Instance } from "./qcow2.ts";
export * from "./header.ts";
export { encodeFields, serialiseFeatureTable, serialiseHeader, writeHeaderFields } from "./_header_write.ts";
export { compressCluster, COMPRESSION_NAMES, decompressCluster } from "./compress.ts";
export { CompressPool, type CompressPoolOptions, type CompressPoolStats } from "./_compress_pool.ts";
export type { MetadataMode, WrongOrder } from "./_state.ts";
