/**
 * Raw deflate through the system's zlib (`libz.so.1`, the library qemu-img
 * links), so compressed clusters come out byte for byte as QEMU's
 * `qcow2_compress` makes them: level Z_DEFAULT_COMPRESSION, a 4 KiB window,
 * memLevel 9, output at most one byte short of a cluster. `node:zlib`'s
 * deflate makes streams about 5 % larger on mixed data; it is the fallback
 * where FFI is not permitted or the library is absent.
 *
 * A {@linkcode Deflater} owns one z_stream; its `deflateAsync` runs zlib on
 * one of Deno's blocking threads (a `nonblocking` FFI call), so several
 * deflaters compress in parallel off the event loop, as QEMU's thread pool.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { addressOf, openLibrary } from "./_ffi_lib.ts";

const Z_OK = 0;
const Z_STREAM_END = 1;
const Z_FINISH = 4;
const Z_DEFLATED = 8;
const Z_DEFAULT_COMPRESSION = -1;
const Z_DEFAULT_STRATEGY = 0;
/** sizeof(z_stream) on LP64. */
const Z_STREAM_BYTES = 112;

const SYMBOLS = {
  zlibVersion: { parameters: [], result: "pointer" },
  deflateInit2_: { parameters: ["buffer", "i32", "i32", "i32", "i32", "i32", "pointer", "i32"], result: "i32" },
  deflateReset: { parameters: ["buffer"], result: "i32" },
  deflate: { parameters: ["buffer", "i32"], result: "i32" },
  deflateOffThread: { name: "deflate", parameters: ["buffer", "i32"], result: "i32", nonblocking: true },
  deflateEnd: { parameters: ["buffer"], result: "i32" },
} as const;

type Fns = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

let lib: Fns | null | undefined;

function symbols(): Fns | null {
  if (lib === undefined) lib = openLibrary("libz.so.1", SYMBOLS);
  return lib;
}

/**
 * One raw-deflate stream of the system zlib, set up as QEMU's. Not for
 * concurrent use: one call at a time per deflater.
 */
export class Deflater {
  /** The z_stream; its own ArrayBuffer, so it never moves (zlib keeps a pointer to it). */
  #strm = new Uint8Array(new ArrayBuffer(Z_STREAM_BYTES));
  #view = new DataView(this.#strm.buffer);
  #fns: Fns;
  #open = true;
  #out = new Uint8Array(0);

  private constructor(fns: Fns) {
    this.#fns = fns;
  }

  /** A new deflater, or undefined when the system zlib cannot be used (no FFI permission, no library). */
  static open(): Deflater | undefined {
    const fns = symbols();
    if (!fns) return undefined;
    const d = new Deflater(fns);
    const rc = fns.deflateInit2_(d.#strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY, fns.zlibVersion(), Z_STREAM_BYTES);
    return rc === Z_OK ? d : undefined;
  }

  /** Raw-deflates `data` on this thread: the bytes, or null when they would not be smaller than `data`. */
  deflate(data: Uint8Array): Uint8Array | null {
    const out = this.#start(data);
    return out && this.#finish(out, this.#fns.deflate(this.#strm, Z_FINISH));
  }

  /**
   * Raw-deflates `data` on one of Deno's blocking threads; neither `data`
   * nor this deflater may be used until the promise settles.
   */
  async deflateAsync(data: Uint8Array): Promise<Uint8Array | null> {
    const out = this.#start(data);
    return out && this.#finish(out, await this.#fns.deflateOffThread(this.#strm, Z_FINISH));
  }

  /** Frees zlib's state; the deflater cannot be used afterwards. */
  close(): void {
    if (this.#open) this.#fns.deflateEnd(this.#strm);
    this.#open = false;
  }

  #start(data: Uint8Array): Uint8Array | null {
    if (!this.#open) throw new BlockError("EIO", "Cannot deflate a cluster: the deflater is closed");
    if (data.length < 2) return null;
    // One output buffer per compressor, reused: the result is copied out of it, so a copy of a whole image allocates only what it keeps.
    if (this.#out.length !== data.length - 1) this.#out = new Uint8Array(new ArrayBuffer(data.length - 1));
    const out = this.#out;
    if (this.#fns.deflateReset(this.#strm) !== Z_OK) throw new BlockError("EIO", "Cannot deflate a cluster: deflateReset failed");
    const v = this.#view;
    v.setBigUint64(0, addressOf(data), true); // next_in
    v.setUint32(8, data.length, true); // avail_in
    v.setBigUint64(24, addressOf(out), true); // next_out
    v.setUint32(32, out.length, true); // avail_out
    return out;
  }

  #finish(out: Uint8Array, rc: number): Uint8Array | null {
    const v = this.#view;
    const left = v.getUint32(32, true);
    v.setBigUint64(0, 0n, true);
    v.setBigUint64(24, 0n, true);
    return rc === Z_STREAM_END ? out.slice(0, out.length - left) : null;
  }
}

let shared: Deflater | null | undefined;

/**
 * Raw-deflates `data` as QEMU does, on this thread; returns the compressed
 * bytes, `null` when they would not be smaller than `data`, or `undefined`
 * when the system zlib cannot be used (the caller falls back to `node:zlib`).
 */
export function systemDeflate(data: Uint8Array): Uint8Array | null | undefined {
  if (shared === undefined) shared = Deflater.open() ?? null;
  if (!shared || data.length < 2) return undefined;
  return shared.deflate(data);
}
