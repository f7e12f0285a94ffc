/**
 * zstd compression through the system's libzstd (`libzstd.so.1`, the
 * library qemu-img links), driven as QEMU's `qcow2_zstd_compress` drives it
 * (block/qcow2-threads.c): one `ZSTD_compressStream2(ZSTD_e_end)` call at
 * the default level (3) into a buffer one byte short of a cluster; when
 * that does not finish the frame, the cluster is stored uncompressed. A
 * context is reused (`ZSTD_CCtx_reset`, session only: the parameters stay
 * the defaults QEMU's fresh context has), which does not change the bytes.
 *
 * A {@linkcode ZstdCompressor} owns one context; its `compressAsync` runs
 * libzstd on one of Deno's blocking threads (a `nonblocking` FFI call), so
 * several compressors work in parallel off the event loop.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { addressOf, openLibrary } from "./_ffi_lib.ts";

const SYMBOLS = {
  ZSTD_createCCtx: { parameters: [], result: "pointer" },
  ZSTD_freeCCtx: { parameters: ["pointer"], result: "usize" },
  ZSTD_CCtx_reset: { parameters: ["pointer", "i32"], result: "usize" },
  ZSTD_compressStream2: { parameters: ["pointer", "buffer", "buffer", "i32"], result: "usize" },
  compressOffThread: {
    name: "ZSTD_compressStream2",
    parameters: ["pointer", "buffer", "buffer", "i32"],
    result: "usize",
    nonblocking: true,
  },
  ZSTD_isError: { parameters: ["usize"], result: "u32" },
} as const;

type Fns = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** ZSTD_e_end and ZSTD_reset_session_only. */
const E_END = 2;
const RESET_SESSION = 1;

let lib: Fns | null | undefined;

function symbols(): Fns | null {
  if (lib === undefined) lib = openLibrary("libzstd.so.1", SYMBOLS);
  return lib;
}

/**
 * One compression context of the system libzstd, used as QEMU uses its
 * own. Not for concurrent use: one call at a time per compressor.
 */
export class ZstdCompressor {
  #fns: Fns;
  #cctx: Deno.PointerObject | null;
  /** ZSTD_outBuffer and ZSTD_inBuffer: { void *ptr; size_t size; size_t pos; } each (little-endian 64-bit), in ArrayBuffers of their own so they never move. */
  #outBuf = new Uint8Array(new ArrayBuffer(24));
  #inBuf = new Uint8Array(new ArrayBuffer(24));
  #out = new Uint8Array(0);

  private constructor(fns: Fns, cctx: Deno.PointerObject) {
    this.#fns = fns;
    this.#cctx = cctx;
  }

  /** A new compressor, or undefined when the system libzstd cannot be used (no FFI permission, no library). */
  static open(): ZstdCompressor | undefined {
    const fns = symbols();
    const cctx = fns?.ZSTD_createCCtx();
    return fns && cctx ? new ZstdCompressor(fns, cctx) : undefined;
  }

  /** Compresses `data` on this thread: the frame, or null when it would not be smaller than `data`. */
  compress(data: Uint8Array): Uint8Array | null {
    const out = this.#start(data);
    return out && this.#finish(out, BigInt(this.#fns.ZSTD_compressStream2(this.#cctx, this.#outBuf, this.#inBuf, E_END)));
  }

  /**
   * Compresses `data` on one of Deno's blocking threads; neither `data` nor
   * this compressor may be used until the promise settles.
   */
  async compressAsync(data: Uint8Array): Promise<Uint8Array | null> {
    const out = this.#start(data);
    return out && this.#finish(out, BigInt(await this.#fns.compressOffThread(this.#cctx, this.#outBuf, this.#inBuf, E_END)));
  }

  /** Frees the context; the compressor cannot be used afterwards. */
  close(): void {
    if (this.#cctx) this.#fns.ZSTD_freeCCtx(this.#cctx);
    this.#cctx = null;
  }

  #start(data: Uint8Array): Uint8Array | null {
    if (!this.#cctx) throw new BlockError("EIO", "Cannot zstd-compress a cluster: the compressor is closed");
    if (data.length < 2) return null;
    // One output buffer per compressor, reused: the result is copied out of it, so a copy of a whole image allocates only what it keeps.
    if (this.#out.length !== data.length - 1) this.#out = new Uint8Array(new ArrayBuffer(data.length - 1));
    const out = this.#out;
    const ov = new DataView(this.#outBuf.buffer);
    const iv = new DataView(this.#inBuf.buffer);
    ov.setBigUint64(0, addressOf(out), true);
    ov.setBigUint64(8, BigInt(out.length), true);
    ov.setBigUint64(16, 0n, true);
    iv.setBigUint64(0, addressOf(data), true);
    iv.setBigUint64(8, BigInt(data.length), true);
    iv.setBigUint64(16, 0n, true);
    if (this.#fns.ZSTD_isError(BigInt(this.#fns.ZSTD_CCtx_reset(this.#cctx, RESET_SESSION)))) {
      throw new BlockError("EIO", "Cannot zstd-compress a cluster: ZSTD_CCtx_reset failed");
    }
    return out;
  }

  #finish(out: Uint8Array, ret: bigint): Uint8Array | null {
    const ov = new DataView(this.#outBuf.buffer);
    const pos = Number(ov.getBigUint64(16, true));
    ov.setBigUint64(0, 0n, true);
    new DataView(this.#inBuf.buffer).setBigUint64(0, 0n, true);
    // An error (dstSize_tooSmall) or a frame not finished (ret > 0): QEMU stores the cluster uncompressed.
    if (this.#fns.ZSTD_isError(ret) || ret !== 0n) return null;
    return out.slice(0, pos);
  }
}

let shared: ZstdCompressor | null | undefined;

/**
 * zstd-compresses `data` as QEMU does, on this thread; returns the frame,
 * `null` when it would not be smaller than `data`, or `undefined` when the
 * system libzstd cannot be used (no FFI permission, or no library).
 */
export function systemZstd(data: Uint8Array): Uint8Array | null | undefined {
  if (shared === undefined) shared = ZstdCompressor.open() ?? null;
  if (!shared || data.length < 2) return undefined;
  return shared.compress(data);
}
