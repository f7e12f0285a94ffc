/**
 * The qcow2 format driver: read and write qcow2 images (versions 2 and 3,
 * cluster sizes 512 B to 2 MiB, refcount widths 1 to 64 bits, backing
 * chains, compressed clusters, zero clusters, extended L2 entries, external
 * data files, lazy refcounts), crash-consistent metadata updates.
 *
 * @example
 * ```ts
 * import { open } from "../../mod.ts";
 * import type { Qcow2Instance } from "./mod.ts";
 * const node = await open("disk.qcow2", { readOnly: true });
 * console.log((node.instance as Qcow2Instance).header.clusterBits);
 * await node.close();
 * ```
 *
 * @module
 */

export { qcow2Driver, Qcow2Instance } from "./qcow2.ts";
export * from "./header.ts";
export { encodeFields, serializeFeatureTable, serializeHeader, writeHeaderFields } from "./_header_write.ts";
export { compressCluster, COMPRESSION_NAMES, decompressCluster } from "./compress.ts";
export type { MetadataMode, WrongOrder } from "./_state.ts";
