/**
 * Compressed cluster codecs: raw deflate (compression type 0, QEMU's zlib
 * with a 4 KiB window) and zstd (type 1). Deflate compression goes through
 * the system zlib when it can (`_zlib_ffi.ts`: QEMU's bytes exactly), zstd
 * through the system libzstd (`_zstd_ffi.ts`), else `node:zlib`; qcow2's
 * compressed writes run them on threads (`_compress_pool.ts`); decompression through
 * the system's zlib and libzstd, as QEMU links them (`_decompress_ffi.ts`),
 * with `node:zlib` as the fallback.
 *
 * A compressed cluster on disk is followed by padding up to a sector
 * boundary; both decoders stop once the cluster is full (with the
 * `node:zlib` fallback the zstd frames are measured from their headers so
 * that padding is never fed to the decoder).
 *
 * @module
 */

import { constants, deflateRawSync, inflateRawSync, zstdCompressSync, zstdDecompressSync } from "node:zlib";
import { BlockError } from "../../core/errors.ts";
import { loadZlib, loadZstd } from "./_decompress_ffi.ts";
import { systemDeflate } from "./_zlib_ffi.ts";
import { COMPRESSION_NAMES, COMPRESSION_ZSTD } from "./_compression_types.ts";
import { systemZstd } from "./_zstd_ffi.ts";

export { COMPRESSION_NAMES, COMPRESSION_ZLIB, COMPRESSION_ZSTD } from "./_compression_types.ts";

/**
 * Decompresses one cluster (`clusterSize` bytes) from `input`, which may
 * carry trailing padding, as QEMU does: through the system's libzstd and
 * zlib when they can be loaded (`_decompress_ffi.ts`), else `node:zlib`;
 * never more than one cluster is produced, whatever the data claims. Bad
 * data is an EIO {@linkcode BlockError} — a read error, not a corruption
 * of the image's metadata (QEMU returns EIO and leaves the image writable).
 *
 * @example
 * ```ts
 * import { compressCluster, decompressCluster } from "@blkgraph/blkgraph/drivers/qcow2";
 * const c = compressCluster(new Uint8Array(4096).fill(1), 0)!;
 * console.log(decompressCluster(c, 4096, 0)[0]); // 1
 * ```
 */
export function decompressCluster(input: Uint8Array, clusterSize: number, type: number): Uint8Array {
  const name = COMPRESSION_NAMES[type] ?? String(type);
  const ffi = type === COMPRESSION_ZSTD ? loadZstd() : loadZlib();
  let out: Uint8Array | string;
  if (ffi) out = ffi.decompress(input, clusterSize);
  else {
    try {
      out = type === COMPRESSION_ZSTD ? zstdFrames(input, clusterSize) : new Uint8Array(
        inflateRawSync(input, { windowBits: 12, maxOutputLength: clusterSize, finishFlush: constants.Z_SYNC_FLUSH }),
      );
    } catch (e) {
      out = (e as Error).message;
    }
    if (typeof out !== "string" && out.length !== clusterSize) out = `the data decompresses to ${out.length} bytes, not ${clusterSize}`;
  }
  if (typeof out === "string") {
    throw new BlockError("EIO", `Cannot decompress a ${name} compressed cluster (${input.length} bytes): ${out}`);
  }
  return out;
}

/**
 * Compresses one cluster; returns undefined when the result would not be
 * smaller than the cluster (QEMU then writes it uncompressed). The returned
 * bytes may be a view into a larger buffer.
 */
export function compressCluster(data: Uint8Array, type: number): Uint8Array | undefined {
  const sys = type === COMPRESSION_ZSTD ? systemZstd(data) : systemDeflate(data);
  if (sys !== undefined) return sys ?? undefined;
  const out = type === COMPRESSION_ZSTD ? zstdCompressSync(data) : deflateRawSync(data, { windowBits: 12, memLevel: 9 });
  const bytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  return bytes.length < data.length ? bytes : undefined;
}

/** Decodes zstd frames one by one until `want` bytes are produced, never more (`node:zlib` fallback). */
function zstdFrames(input: Uint8Array, want: number): Uint8Array {
  const parts: Uint8Array[] = [];
  let total = 0;
  let at = 0;
  while (total < want) {
    const end = zstdFrameEnd(input, at);
    const part = zstdDecompressSync(input.subarray(at, end), { maxOutputLength: want - total });
    parts.push(part);
    total += part.length;
    at = end;
  }
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Returns the offset just past the zstd frame starting at `at`. */
function zstdFrameEnd(buf: Uint8Array, at: number): number {
  const need = (n: number) => {
    if (n > buf.length) throw new Error(`zstd frame at ${at} is truncated`);
  };
  need(at + 5);
  const magic = buf[at] | (buf[at + 1] << 8) | (buf[at + 2] << 16) | (buf[at + 3] << 24);
  if (magic >>> 0 !== 0xfd2fb528) throw new Error(`bad zstd frame magic 0x${(magic >>> 0).toString(16)}`);
  const fhd = buf[at + 4];
  const single = (fhd >> 5) & 1;
  const dictBytes = [0, 1, 2, 4][fhd & 3];
  const fcsFlag = fhd >> 6;
  const fcsBytes = fcsFlag === 0 ? single : [1, 2, 4, 8][fcsFlag];
  let p = at + 5 + (single ? 0 : 1) + dictBytes + fcsBytes;
  for (;;) {
    need(p + 3);
    const bh = buf[p] | (buf[p + 1] << 8) | (buf[p + 2] << 16);
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >> 3;
    p += 3 + (type === 1 ? 1 : size);
    need(p);
    if (last) break;
  }
  if ((fhd >> 2) & 1) p += 4;
  need(p);
  return p;
}
