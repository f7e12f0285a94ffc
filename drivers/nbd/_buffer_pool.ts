/**
 * The NBD server's per-connection buffer pool: read replies and write
 * payloads reuse buffers of their size class, so a stream of requests
 * allocates (and zeroes) nothing. A buffer's payload starts page-aligned
 * after the header room asked for, so the kernel's copy of a read into it runs
 * at full speed (see `core/_io_buffer.ts`).
 *
 * @module
 */

import { ioBuffer } from "../../core/_io_buffer.ts";

/** Buffers kept per size class for reuse: a client's whole queue (nbdcopy keeps 64). */
const POOL_PER_CLASS = 64;
/** Largest pooled buffer. */
const POOL_MAX = 4 << 20;
/** Bytes one connection's pool may hold. */
const POOL_BYTES = 64 << 20;
/** Size classes are multiples of this: a 256 KiB read reply takes 260 KiB, not 512. */
const POOL_GRAIN = 4096;

/** Buffers by size class (multiples of 4 KiB up to 4 MiB) and header room, at most 64 MiB in all. */
export class BufferPool {
  #pool = new Map<number, Uint8Array[]>();
  #pooledBytes = 0;

  /**
   * A buffer of at least `n` bytes whose byte `header` (less than 4096) is page-aligned (contents undefined: the caller
   * writes every byte it sends).
   */
  acquire(n: number, header = 0): Uint8Array {
    if (n > POOL_MAX) return ioBuffer(n, { offset: header, align: POOL_GRAIN });
    const cap = Math.ceil(n / POOL_GRAIN) * POOL_GRAIN;
    const b = this.#pool.get(cap + header)?.pop();
    if (!b) return ioBuffer(cap, { offset: header, align: POOL_GRAIN });
    this.#pooledBytes -= cap;
    return b;
  }

  /** Returns a buffer from {@linkcode BufferPool.acquire} with the same `header`; only once nothing holds it any more. */
  release(b: Uint8Array, header = 0): void {
    if (b.length > POOL_MAX || this.#pooledBytes + b.length > POOL_BYTES) return;
    const key = b.length + header;
    let list = this.#pool.get(key);
    if (!list) this.#pool.set(key, list = []);
    if (list.length < POOL_PER_CLASS) {
      list.push(b);
      this.#pooledBytes += b.length;
    }
  }
}
