/**
 * Decompression of qcow2 clusters through the system's libzstd and zlib
 * (FFI): the libraries QEMU links, driven exactly as QEMU drives them
 * (block/qcow2-threads.c).
 *
 * - zstd (`qcow2_zstd_decompress`): `ZSTD_decompressStream` into an output
 *   buffer of one cluster, frame after frame, until the cluster is full; an
 *   error, a step without progress, or a frame that is not completely
 *   flushed when the cluster is full (it would produce more than a cluster)
 *   is an error.
 * - zlib (`qcow2_zlib_decompress`): raw deflate with a 4 KiB window, one
 *   `inflate(Z_FINISH)` into one cluster; the data is good when the cluster
 *   is full (the stream may end there, or go on: the rest is ignored).
 *
 * Memory is one cluster plus the library's context, whatever the data
 * claims. Why the system libraries and not `node:zlib`: a damaged zstd
 * frame that `zstd -t` accepts decodes to different bytes through Deno's
 * built-in zstd than through libzstd (tests/fuzz/repro has one), and
 * `node:zlib` cannot give the first cluster of a longer deflate stream; an
 * image must read the same in blkgraph as in QEMU, so the decoders QEMU
 * links are the ones trusted. {@linkcode loadZstd} and
 * {@linkcode loadZlib} return undefined without the FFI permission or the
 * library, and `compress.ts` falls back to `node:zlib` with the same bound.
 *
 * @module
 */

const ZSTD_SYMBOLS = {
  ZSTD_createDCtx: { parameters: [], result: "pointer" },
  ZSTD_freeDCtx: { parameters: ["pointer"], result: "usize" },
  ZSTD_decompressStream: { parameters: ["pointer", "buffer", "buffer"], result: "usize" },
  ZSTD_isError: { parameters: ["usize"], result: "u32" },
  ZSTD_getErrorName: { parameters: ["usize"], result: "pointer" },
  ZSTD_versionNumber: { parameters: [], result: "u32" },
} as const;

type Lib = Deno.DynamicLibrary<typeof ZSTD_SYMBOLS>["symbols"];

/** A cluster decompressor, as QEMU drives it. */
export interface ClusterDecoder {
  /** The library's version (libzstd: "1.5.4", zlib: "1.2.13"). */
  readonly version: string;
  /**
   * Decompresses frames from `input` into exactly `size` bytes; returns
   * them, or a message saying why the data is not a cluster.
   */
  decompress(input: Uint8Array, size: number): Uint8Array | string;
}

function ffiGranted(): boolean {
  try {
    return Deno.permissions.querySync({ name: "ffi" }).state === "granted";
  } catch {
    return false;
  }
}

let zstd: ClusterDecoder | null | undefined;

/** The libzstd decoder, or undefined when FFI or the library is unavailable. */
export function loadZstd(): ClusterDecoder | undefined {
  if (zstd !== undefined) return zstd ?? undefined;
  zstd = null;
  if (!ffiGranted()) return undefined;
  let lib: Lib;
  try {
    lib = Deno.dlopen("libzstd.so.1", ZSTD_SYMBOLS).symbols;
  } catch {
    return undefined;
  }
  const v = lib.ZSTD_versionNumber();
  zstd = {
    version: `${Math.floor(v / 10000)}.${Math.floor(v / 100) % 100}.${v % 100}`,
    decompress: (input, size) => decompressZstd(lib, input, size),
  };
  return zstd;
}

function errorName(lib: Lib, code: number | bigint): string {
  const p = lib.ZSTD_getErrorName(BigInt(code));
  return p ? new Deno.UnsafePointerView(p).getCString() : `error ${code}`;
}

function decompressZstd(lib: Lib, input: Uint8Array, size: number): Uint8Array | string {
  const out = new Uint8Array(size);
  // ZSTD_outBuffer { void *dst; size_t size; size_t pos; } and ZSTD_inBuffer alike (little-endian 64-bit).
  const outBuf = new Uint8Array(24);
  const inBuf = new Uint8Array(24);
  const ov = new DataView(outBuf.buffer);
  const iv = new DataView(inBuf.buffer);
  const src = input.length ? input : new Uint8Array(1);
  ov.setBigUint64(0, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(out))), true);
  ov.setBigUint64(8, BigInt(size), true);
  iv.setBigUint64(0, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(src))), true);
  iv.setBigUint64(8, BigInt(input.length), true);
  const dctx = lib.ZSTD_createDCtx();
  if (!dctx) return "ZSTD_createDCtx failed";
  let why: string | undefined;
  let ret: number | bigint = 0;
  try {
    while (Number(ov.getBigUint64(16, true)) < size) {
      const lastIn = iv.getBigUint64(16, true);
      const lastOut = ov.getBigUint64(16, true);
      ret = lib.ZSTD_decompressStream(dctx, outBuf, inBuf);
      if (lib.ZSTD_isError(BigInt(ret))) {
        why = errorName(lib, ret);
        break;
      }
      if (iv.getBigUint64(16, true) <= lastIn && ov.getBigUint64(16, true) <= lastOut) {
        why = `no progress after ${lastOut} bytes (the data ends before the cluster is full)`;
        break;
      }
    }
    // The last frame must be completely decoded when the cluster is full.
    if (!why && BigInt(ret) !== 0n) why = "the data decompresses to more than a cluster";
  } finally {
    lib.ZSTD_freeDCtx(dctx);
  }
  // Keep the buffers alive across the calls above.
  void src;
  return why ?? out;
}

// ---- zlib -------------------------------------------------------------------

const ZLIB_SYMBOLS = {
  zlibVersion: { parameters: [], result: "pointer" },
  inflateInit2_: { parameters: ["buffer", "i32", "pointer", "i32"], result: "i32" },
  inflate: { parameters: ["buffer", "i32"], result: "i32" },
  inflateEnd: { parameters: ["buffer"], result: "i32" },
} as const;

type ZLib = Deno.DynamicLibrary<typeof ZLIB_SYMBOLS>["symbols"];

const Z_FINISH = 4;
const Z_OK = 0;
const Z_STREAM_END = 1;
const Z_BUF_ERROR = -5;
/** sizeof(z_stream) on 64-bit Linux, and the offsets of the fields set here. */
const Z_STREAM_SIZE = 112;
const NEXT_IN = 0, AVAIL_IN = 8, NEXT_OUT = 24, AVAIL_OUT = 32, MSG = 48;

let zlib: ClusterDecoder | null | undefined;

/** The zlib decoder, or undefined when FFI or the library is unavailable (or not a 64-bit Linux). */
export function loadZlib(): ClusterDecoder | undefined {
  if (zlib !== undefined) return zlib ?? undefined;
  zlib = null;
  if (!ffiGranted() || Deno.build.os !== "linux" || !["x86_64", "aarch64"].includes(Deno.build.arch)) return undefined;
  let lib: ZLib;
  try {
    lib = Deno.dlopen("libz.so.1", ZLIB_SYMBOLS).symbols;
  } catch {
    return undefined;
  }
  const versionPtr = lib.zlibVersion();
  if (!versionPtr) return undefined;
  const version = new Deno.UnsafePointerView(versionPtr).getCString();
  zlib = { version, decompress: (input, size) => decompressZlib(lib, versionPtr, input, size) };
  return zlib;
}

function addressOf(buf: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
}

function decompressZlib(lib: ZLib, version: Deno.PointerObject, input: Uint8Array, size: number): Uint8Array | string {
  const out = new Uint8Array(size);
  const src = input.length ? input : new Uint8Array(1);
  const strm = new Uint8Array(Z_STREAM_SIZE);
  const v = new DataView(strm.buffer);
  v.setBigUint64(NEXT_IN, addressOf(src), true);
  v.setUint32(AVAIL_IN, input.length, true);
  v.setBigUint64(NEXT_OUT, addressOf(out), true);
  v.setUint32(AVAIL_OUT, size, true);
  if (lib.inflateInit2_(strm, -12, version, Z_STREAM_SIZE) !== Z_OK) return "inflateInit2 failed";
  let why: string | undefined;
  try {
    const ret = lib.inflate(strm, Z_FINISH);
    const left = v.getUint32(AVAIL_OUT, true);
    if (!((ret === Z_STREAM_END || ret === Z_BUF_ERROR) && left === 0)) {
      const msg = v.getBigUint64(MSG, true);
      const text = msg ? new Deno.UnsafePointerView(Deno.UnsafePointer.create(msg)!).getCString() : undefined;
      why = text ?? (left ? `the data ends ${left} bytes before the cluster is full` : `inflate returned ${ret}`);
    }
  } finally {
    lib.inflateEnd(strm);
  }
  void src;
  return why ?? out;
}
