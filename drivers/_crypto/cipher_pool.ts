/**
 * Sector encryption on worker threads (`node:worker_threads`), for the
 * requests where a second core pays. A request of at least
 * {@linkcode POOL_SPLIT_MIN} bytes is cut into pieces; the calling thread
 * claims pieces from the front and encrypts them in place, the workers claim
 * pieces from the back half (copied into a shared buffer) — claims are one
 * compare-and-swap on a shared word, so nobody waits for a thread the
 * scheduler has not run yet: on a busy machine the calling thread simply
 * does more of the pieces itself. Smaller requests, and requests that arrive
 * while the shared buffer is in use, run on the calling thread.
 *
 * Each worker has its own {@linkcode SectorCipher}; the key is sent once and
 * zeroed on both sides.
 *
 * @module
 */

import { Worker } from "node:worker_threads";
import { BlockError } from "../../core/errors.ts";
import type { CipherSpec } from "./algorithms.ts";
import { type CipherWorkerInit, CTL, CTL_BYTES } from "./_cipher_worker.ts";
import { LUKS_SECTOR_SIZE, SectorCipher } from "./sector_cipher.ts";

/** Requests at least this long are shared with the workers. */
export const POOL_SPLIT_MIN = 64 * 1024;
/** Largest window of a request shared in one go (its back half fits the shared buffer). */
const WINDOW = 2 << 20;
/** Smallest piece. */
const MIN_PIECE = 16 * 1024;

let threads: number | undefined;

/**
 * Sets how many worker threads new pools start (0 = none, every request on
 * the calling thread). Default: one fewer than the CPUs, at most 2.
 */
export function setCryptoThreads(n: number | undefined): void {
  if (n !== undefined && (!Number.isInteger(n) || n < 0 || n > 16)) {
    throw new BlockError("EINVAL", `Invalid crypto thread count ${n}: expected 0 to 16`);
  }
  threads = n;
}

function wantedThreads(): number {
  if (threads !== undefined) return threads;
  const cpus = globalThis.navigator?.hardwareConcurrency ?? 1;
  return Math.max(0, Math.min(2, cpus - 1));
}

/**
 * A {@linkcode SectorCipher} on the calling thread plus workers that share
 * large requests.
 *
 * @example
 * ```ts
 * import { CipherPool } from "./cipher_pool.ts";
 * const key = crypto.getRandomValues(new Uint8Array(64));
 * const pool = new CipherPool({ alg: "aes-256", mode: "xts", ivgen: "plain64" }, key, { threads: 1 });
 * key.fill(0);
 * const data = new Uint8Array(1 << 20).fill(3);
 * await pool.encrypt(data, 0);
 * await pool.decrypt(data, 0);
 * console.log(data[0], data[data.length - 1]); // 3 3
 * await pool.close();
 * ```
 */
export class CipherPool {
  #local: SectorCipher;
  #spec: CipherSpec;
  #key: Uint8Array | undefined;
  #threads: number;
  #workers: Worker[] = [];
  #shared: SharedArrayBuffer | undefined;
  #ctl: Int32Array | undefined;
  #data: Uint8Array | undefined;
  #gen = 0;
  #busy = false;
  #closed = false;

  /**
   * A pool for `spec` with `key` (copied) and `threads` workers (default
   * {@linkcode setCryptoThreads}'s). The workers start with the first
   * request large enough to share, so an image that only ever sees small
   * requests never pays for them.
   */
  constructor(spec: CipherSpec, key: Uint8Array, opts: { threads?: number } = {}) {
    this.#local = new SectorCipher(spec, key);
    this.#spec = { ...spec };
    this.#threads = opts.threads ?? wantedThreads();
    // Kept (and zeroed on close) only until the workers have their own copies.
    if (this.#threads > 0) this.#key = key.slice();
  }

  /** Worker threads the pool uses (started on first need). */
  get threads(): number {
    return this.#threads;
  }

  #start(): void {
    const key = this.#key!;
    this.#shared = new SharedArrayBuffer(CTL_BYTES + WINDOW / 2 + MIN_PIECE);
    this.#ctl = new Int32Array(this.#shared, 0, CTL_BYTES / 4);
    this.#data = new Uint8Array(this.#shared, CTL_BYTES);
    for (let i = 0; i < this.#threads; i++) {
      const worker = new Worker(new URL("./_cipher_worker.ts", import.meta.url));
      const copy = key.slice();
      worker.postMessage({ spec: this.#spec, key: copy, buffer: this.#shared } satisfies CipherWorkerInit);
      copy.fill(0); // postMessage cloned it; the worker zeroes its clone

      worker.unref();
      this.#workers.push(worker);
    }
    key.fill(0);
    this.#key = undefined;
  }

  /** Encrypts whole sectors in place (the first one numbered `sector`). */
  encrypt(data: Uint8Array, sector: number): Promise<void> {
    return this.#run(data, sector, true);
  }

  /** Decrypts whole sectors in place (the first one numbered `sector`). */
  decrypt(data: Uint8Array, sector: number): Promise<void> {
    return this.#run(data, sector, false);
  }

  async #run(data: Uint8Array, sector: number, encrypt: boolean): Promise<void> {
    if (this.#closed) throw new BlockError("EIO", "The cipher pool is closed (image closed)");
    if (data.length < POOL_SPLIT_MIN || this.#threads === 0 || this.#busy) {
      this.#local[encrypt ? "encrypt" : "decrypt"](data, sector);
      return;
    }
    this.#busy = true;
    if (this.#key) this.#start();
    // Atomics.waitAsync alone does not keep the event loop alive: referenced workers do, while a job runs.
    for (const w of this.#workers) w.ref();
    try {
      for (let off = 0; off < data.length; off += WINDOW) {
        await this.#window(data.subarray(off, Math.min(data.length, off + WINDOW)), sector + off / LUKS_SECTOR_SIZE, encrypt);
      }
    } finally {
      for (const w of this.#workers) w.unref();
      this.#busy = false;
    }
  }

  /** One window: the calling thread takes pieces from the front, the workers from the back half. */
  async #window(data: Uint8Array, sector: number, encrypt: boolean): Promise<void> {
    const ctl = this.#ctl!;
    const piece = Math.max(MIN_PIECE, Math.ceil(data.length / 32 / LUKS_SECTOR_SIZE) * LUKS_SECTOR_SIZE);
    const n = Math.ceil(data.length / piece);
    const split = n >> 1;
    this.#data!.set(data.subarray(split * piece));
    ctl[CTL.SECTOR_LO] = sector % 0x1_0000_0000;
    ctl[CTL.SECTOR_HI] = Math.floor(sector / 0x1_0000_0000);
    ctl[CTL.LENGTH] = data.length;
    ctl[CTL.SPLIT] = split;
    ctl[CTL.PIECE_BYTES] = piece;
    ctl[CTL.ENCRYPT] = encrypt ? 1 : 0;
    Atomics.store(ctl, CTL.DONE, 0);
    this.#gen = (this.#gen + 1) & 0xffff;
    Atomics.store(ctl, CTL.CLAIM, (this.#gen << 16) | (n << 8));
    Atomics.notify(ctl, CTL.CLAIM);
    for (;;) {
      const v = Atomics.load(ctl, CTL.CLAIM);
      const front = v & 0xff;
      if (front >= ((v >>> 8) & 0xff)) break;
      if (Atomics.compareExchange(ctl, CTL.CLAIM, v, v + 1) !== v) continue;
      const p = data.subarray(front * piece, Math.min(data.length, (front + 1) * piece));
      this.#local[encrypt ? "encrypt" : "decrypt"](p, sector + (front * piece) / LUKS_SECTOR_SIZE);
    }
    const back = (Atomics.load(ctl, CTL.CLAIM) >>> 8) & 0xff;
    const theirs = n - back;
    for (let done = Atomics.load(ctl, CTL.DONE); done < theirs; done = Atomics.load(ctl, CTL.DONE)) {
      const w = Atomics.waitAsync(ctl, CTL.DONE, done);
      if (w.async) await w.value;
    }
    if (theirs) data.set(this.#data!.subarray((back - split) * piece, data.length - split * piece), back * piece);
  }

  /** Stops the workers and zeroes the buffers; waits until they are gone. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#local.destroy();
    this.#key?.fill(0);
    this.#key = undefined;
    if (this.#ctl) {
      Atomics.store(this.#ctl, CTL.STOP, 1);
      Atomics.add(this.#ctl, CTL.CLAIM, 1 << 16);
      Atomics.notify(this.#ctl, CTL.CLAIM);
    }
    for (const w of this.#workers) await w.terminate();
    this.#workers = [];
    this.#data?.fill(0);
  }
}
