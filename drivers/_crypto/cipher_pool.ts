/**
 * Sector encryption on worker threads (`node:worker_threads`), for the
 * requests where a second core pays: a request of at least
 * {@linkcode POOL_SPLIT_MIN} bytes is cut at a sector boundary, idle workers
 * take parts while the calling thread does its own part, and the request
 * completes when all parts are done. Smaller requests, and requests that
 * find every worker busy, run on the calling thread: a round trip to a
 * worker costs tens of microseconds, as much as encrypting 16 KiB.
 *
 * Each worker has its own {@linkcode SectorCipher} (the key is sent once
 * and zeroed on both sides) and a shared buffer the data is copied through.
 *
 * @module
 */

import { Worker } from "node:worker_threads";
import { BlockError } from "../../core/errors.ts";
import type { CipherSpec } from "./algorithms.ts";
import type { CipherWorkerReply, CipherWorkerRequest } from "./_cipher_worker.ts";
import { LUKS_SECTOR_SIZE, SectorCipher } from "./sector_cipher.ts";

/** Requests at least this long are shared with idle workers. */
export const POOL_SPLIT_MIN = 128 * 1024;
/** Largest part a worker takes in one job (its shared buffer). */
const JOB_MAX = 1 << 20;

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

interface Slot {
  worker: Worker;
  shared: Uint8Array;
  busy: boolean;
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
  #slots: Slot[] = [];
  #waiting = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  #nextId = 0;
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
    for (let i = 0; i < this.#threads; i++) {
      const worker = new Worker(new URL("./_cipher_worker.ts", import.meta.url));
      const buffer = new SharedArrayBuffer(JOB_MAX);
      worker.postMessage({ type: "init", spec: this.#spec, key: key.slice(), buffer } satisfies CipherWorkerRequest);
      worker.on("message", (m: CipherWorkerReply) => this.#done(m));
      worker.on("error", (e: Error) => this.#failAll(e));
      worker.unref();
      this.#slots.push({ worker, shared: new Uint8Array(buffer), busy: false });
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
    if (data.length >= POOL_SPLIT_MIN && this.#key) this.#start();
    const idle = data.length >= POOL_SPLIT_MIN ? this.#slots.filter((s) => !s.busy) : [];
    if (!idle.length) {
      this.#local[encrypt ? "encrypt" : "decrypt"](data, sector);
      return;
    }
    const sectors = data.length / LUKS_SECTOR_SIZE;
    const per = Math.min(JOB_MAX / LUKS_SECTOR_SIZE, Math.ceil(sectors / (idle.length + 1)));
    const jobs: Promise<void>[] = [];
    let at = 0;
    for (const slot of idle) {
      const n = Math.min(per, sectors - at);
      if (n <= 0) break;
      jobs.push(this.#job(slot, data.subarray(at * LUKS_SECTOR_SIZE, (at + n) * LUKS_SECTOR_SIZE), sector + at, encrypt));
      at += n;
    }
    // The calling thread does the rest meanwhile.
    if (at < sectors) this.#local[encrypt ? "encrypt" : "decrypt"](data.subarray(at * LUKS_SECTOR_SIZE), sector + at);
    await Promise.all(jobs);
  }

  async #job(slot: Slot, part: Uint8Array, sector: number, encrypt: boolean): Promise<void> {
    slot.busy = true;
    slot.worker.ref();
    slot.shared.set(part);
    const id = ++this.#nextId;
    try {
      await new Promise<void>((resolve, reject) => {
        this.#waiting.set(id, { resolve, reject });
        slot.worker.postMessage({ type: "job", id, length: part.length, sector, encrypt } satisfies CipherWorkerRequest);
      });
      part.set(slot.shared.subarray(0, part.length));
    } finally {
      slot.shared.fill(0, 0, part.length);
      slot.busy = false;
      slot.worker.unref();
    }
  }

  #done(m: CipherWorkerReply): void {
    const w = this.#waiting.get(m.id);
    if (!w) return;
    this.#waiting.delete(m.id);
    if (m.error) w.reject(new BlockError("EIO", `Sector encryption failed on a worker thread: ${m.error}`));
    else w.resolve();
  }

  #failAll(e: Error): void {
    for (const w of this.#waiting.values()) w.reject(new BlockError("EIO", `A crypto worker thread failed: ${e.message}`));
    this.#waiting.clear();
  }

  /** Stops the workers and zeroes the buffers; waits until they are gone. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#local.destroy();
    this.#key?.fill(0);
    this.#key = undefined;
    for (const s of this.#slots) {
      s.shared.fill(0);
      s.worker.postMessage({ type: "stop" } satisfies CipherWorkerRequest);
      await s.worker.terminate();
    }
    this.#slots = [];
  }
}
