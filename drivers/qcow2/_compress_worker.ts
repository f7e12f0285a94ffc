/**
 * A compression worker of `_compress_pool.ts`: compresses the clusters it
 * is sent with the system's zlib or libzstd (FFI, QEMU's exact bytes) and
 * sends the result back, its buffer transferred. It imports nothing else,
 * so that it starts quickly.
 *
 * Messages in: `{ id, type, data }` (`data` a transferred cluster).
 * Messages out: `{ id, out }` (`out` the compressed bytes, or null when
 * they would not be smaller), or `{ id, error }`.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { systemDeflate } from "./_zlib_ffi.ts";
import { systemZstd } from "./_zstd_ffi.ts";

/** A job of the pool. */
interface Job {
  id: number;
  type: number;
  data: Uint8Array;
}

self.onmessage = (e: MessageEvent<Job>) => {
  const { id, type, data } = e.data;
  let out: Uint8Array | null | undefined;
  try {
    if (type === 0) out = systemDeflate(data);
    else if (type === 1) out = systemZstd(data);
    else throw new Error(`unknown compression type ${type}`);
    if (out === undefined) throw new Error(`the system ${type === 1 ? "libzstd" : "zlib"} cannot be loaded through FFI in the worker`);
  } catch (err) {
    self.postMessage({ id, error: (err as Error).message });
    return;
  }
  if (out === null) self.postMessage({ id, out: null });
  else {
    // Copy out of the cluster-sized buffer only when that saves memory in flight; the buffer is transferred.
    const bytes = out.byteLength * 2 < out.buffer.byteLength ? out.slice() : out;
    self.postMessage({ id, out: bytes }, [bytes.buffer as ArrayBuffer]);
  }
};
