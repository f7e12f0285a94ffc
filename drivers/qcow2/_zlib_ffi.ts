/**
 * Raw deflate through the system's zlib (`libz.so.1`, the library qemu-img
 * links), so compressed clusters come out byte for byte as QEMU's
 * `qcow2_compress` makes them: level Z_DEFAULT_COMPRESSION, a 4 KiB window,
 * memLevel 9, output at most one byte short of a cluster. `node:zlib`'s
 * deflate makes streams about 5 % larger on mixed data; it is the fallback
 * where FFI is not permitted or the library is absent.
 *
 * @module
 */

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
} as const;

interface Deflater {
  /** The z_stream; its own ArrayBuffer, so it never moves (zlib keeps a pointer to it). */
  strm: Uint8Array;
  view: DataView;
  fns: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
}

let deflater: Deflater | null | undefined;

function load(): Deflater | null {
  if (deflater !== undefined) return deflater;
  deflater = null;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
    const lib = Deno.dlopen("libz.so.1", SYMBOLS);
    const strm = new Uint8Array(new ArrayBuffer(Z_STREAM_BYTES));
    const rc = lib.symbols.deflateInit2_(
      strm,
      Z_DEFAULT_COMPRESSION,
      Z_DEFLATED,
      -12,
      9,
      Z_DEFAULT_STRATEGY,
      lib.symbols.zlibVersion(),
      Z_STREAM_BYTES,
    );
    if (rc !== Z_OK) return null;
    deflater = { strm, view: new DataView(strm.buffer), fns: lib.symbols };
  } catch {
    deflater = null;
  }
  return deflater;
}

function addr(b: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b as Uint8Array<ArrayBuffer>)));
}

/**
 * Raw-deflates `data` as QEMU does; returns the compressed bytes, `null`
 * when they would not be smaller than `data`, or `undefined` when the
 * system zlib cannot be used (the caller falls back to `node:zlib`).
 */
export function systemDeflate(data: Uint8Array): Uint8Array | null | undefined {
  const d = load();
  if (!d || data.length < 2) return undefined;
  const out = new Uint8Array(new ArrayBuffer(data.length - 1));
  const v = d.view;
  if (d.fns.deflateReset(d.strm) !== Z_OK) return undefined;
  v.setBigUint64(0, addr(data), true); // next_in
  v.setUint32(8, data.length, true); // avail_in
  v.setBigUint64(24, addr(out), true); // next_out
  v.setUint32(32, out.length, true); // avail_out
  const rc = d.fns.deflate(d.strm, Z_FINISH);
  const left = v.getUint32(32, true);
  v.setBigUint64(0, 0n, true);
  v.setBigUint64(24, 0n, true);
  if (rc !== Z_STREAM_END) return null;
  return out.subarray(0, out.length - left);
}
