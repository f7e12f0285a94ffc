/**
 * zstd compression through the system's libzstd (`libzstd.so.1`, the
 * library qemu-img links), driven as QEMU's `qcow2_zstd_compress` drives it
 * (block/qcow2-threads.c): one `ZSTD_compressStream2(ZSTD_e_end)` call at
 * the default level (3) into a buffer one byte short of a cluster; when
 * that does not finish the frame, the cluster is stored uncompressed. The
 * context is reused (`ZSTD_CCtx_reset`, session only: the parameters stay
 * the defaults QEMU's fresh context has), which does not change the bytes.
 *
 * @module
 */

const SYMBOLS = {
  ZSTD_createCCtx: { parameters: [], result: "pointer" },
  ZSTD_CCtx_reset: { parameters: ["pointer", "i32"], result: "usize" },
  ZSTD_compressStream2: { parameters: ["pointer", "buffer", "buffer", "i32"], result: "usize" },
  ZSTD_isError: { parameters: ["usize"], result: "u32" },
} as const;

/** ZSTD_e_end and ZSTD_reset_session_only. */
const E_END = 2;
const RESET_SESSION = 1;

interface Compressor {
  fns: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
  cctx: Deno.PointerObject;
  /** ZSTD_outBuffer and ZSTD_inBuffer: { void *ptr; size_t size; size_t pos; } each (little-endian 64-bit). */
  outBuf: Uint8Array<ArrayBuffer>;
  inBuf: Uint8Array<ArrayBuffer>;
}

let compressor: Compressor | null | undefined;

function load(): Compressor | null {
  if (compressor !== undefined) return compressor;
  compressor = null;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
    const fns = Deno.dlopen("libzstd.so.1", SYMBOLS).symbols;
    const cctx = fns.ZSTD_createCCtx();
    if (!cctx) return null;
    compressor = { fns, cctx, outBuf: new Uint8Array(24), inBuf: new Uint8Array(24) };
  } catch {
    compressor = null;
  }
  return compressor;
}

function addr(b: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b as Uint8Array<ArrayBuffer>)));
}

/**
 * zstd-compresses `data` as QEMU does; returns the frame, `null` when it
 * would not be smaller than `data`, or `undefined` when the system libzstd
 * cannot be used (no FFI permission, or no library).
 */
export function systemZstd(data: Uint8Array): Uint8Array | null | undefined {
  const c = load();
  if (!c || data.length < 2) return undefined;
  const out = new Uint8Array(new ArrayBuffer(data.length - 1));
  const ov = new DataView(c.outBuf.buffer);
  const iv = new DataView(c.inBuf.buffer);
  ov.setBigUint64(0, addr(out), true);
  ov.setBigUint64(8, BigInt(out.length), true);
  ov.setBigUint64(16, 0n, true);
  iv.setBigUint64(0, addr(data), true);
  iv.setBigUint64(8, BigInt(data.length), true);
  iv.setBigUint64(16, 0n, true);
  if (c.fns.ZSTD_isError(BigInt(c.fns.ZSTD_CCtx_reset(c.cctx, RESET_SESSION)))) return undefined;
  const ret = BigInt(c.fns.ZSTD_compressStream2(c.cctx, c.outBuf, c.inBuf, E_END));
  const pos = Number(ov.getBigUint64(16, true));
  ov.setBigUint64(0, 0n, true);
  iv.setBigUint64(0, 0n, true);
  // An error (dstSize_tooSmall) or a frame not finished (ret > 0): QEMU stores the cluster uncompressed.
  if (c.fns.ZSTD_isError(ret) || ret !== 0n) return null;
  return out.subarray(0, pos);
}
