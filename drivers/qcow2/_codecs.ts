/**
 * The compressed cluster codecs, imported on first use.
 *
 * @module
 */

let codecs: Promise<typeof import("./compress.ts")> | undefined;

/**
 * Imports the compressed cluster codecs (`compress.ts`) on the first
 * compressed cluster read or written: they pull in `node:zlib`, which would
 * cost every process that opens a qcow2 image over ten milliseconds at
 * start-up.
 *
 * @example
 * ```ts
 * import { loadCodecs } from "./_codecs.ts";
 * const { compressCluster, decompressCluster } = await loadCodecs();
 * console.log(decompressCluster(compressCluster(new Uint8Array(4096).fill(7), 0)!, 4096, 0)[0]); // 7
 * ```
 */
export function loadCodecs(): Promise<typeof import("./compress.ts")> {
  return codecs ??= import("./compress.ts");
}
