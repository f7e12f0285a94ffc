/**
 * The NBD server's per-connection buffer pool: read replies and write
 * payloads reuse buffers of their size class, so a stream of requests
 * allocates (and zeroes) nothing.
 *
 * @module
 */

/** Buffers kept per size class for reuse: a client's whole queue (nbdcopy keeps 64). */
const POOL_PER_CLASS = 64;
/** Largest pooled buffer. */
const POOL_MAX = 4 << 20;
/** Bytes one connection's pool may hold. */
const POOL_BYTES = 64 << 20;
/** Size classes are multiples of this: a 256 KiB read reply takes 260 KiB, not 512. */
const POOL_GRAIN = 4096;

/** Buffers by size class (multiples of 4 KiB up to 4 MiB), at most 64 MiB in all. */
export class BufferPool {
  #pool = new Map<number, Uint8Array[]>();
  #pooledBytes = 0;

  /** A buffer of at least `n` bytes (contents undefined: the caller writes every byte it sends). */
  acquire(n: number): Uint8Array {
    if (n > POOL_MAX) return new Uint8Array(n);
    const cap = Math.ceil(n / POOL_GRAIN) * POOL_GRAIN;
    const b = this.#pool.get(cap)?.pop();
    if (!b) return new Uint8Array(cap);
    this.#pooledBytes -= cap;
    return b;
  }

  /** Returns a buffer from {@linkcode BufferPool.acquire}; only once nothing holds it any more. */
  release(b: Uint8Array): void {
    if (b.length > POOL_MAX || this.#pooledBytes + b.length > POOL_BYTES) return;
    let list = this.#pool.get(b.length);
    if (!list) this.#pool.set(b.length, list = []);
    if (list.length < POOL_PER_CLASS) {
      list.push(b);
      this.#pooledBytes += b.length;
    }
  }
}
