/**
 * qcow2's compression types (the header's `compression_type`), apart from
 * the codecs in `compress.ts`: opening and describing an image needs the
 * names, only a compressed cluster needs `node:zlib` and the FFI codecs
 * (which `_codecs.ts` imports on first use).
 *
 * @module
 */

/** Compression type 0: raw deflate. */
export const COMPRESSION_ZLIB = 0;
/** Compression type 1: zstd. */
export const COMPRESSION_ZSTD = 1;

/** Names of the compression types, as `qemu-img info` prints them. */
export const COMPRESSION_NAMES: readonly string[] = ["zlib", "zstd"];
