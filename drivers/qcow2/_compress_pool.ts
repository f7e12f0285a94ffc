/**
 * A pool of Web Workers that compress qcow2 clusters off the main thread
 * (QEMU compresses on a pool of 4 threads, block/qcow2-threads.c): each
 * job goes to the worker with the fewest jobs, workers start on demand up
 * to the pool's size, the buffers travel transferred both ways, and the
 * workers stop when the pool closes or has been idle a while (a worker
 * keeps the process alive).
 *
 * The workers compress through FFI (the system's zlib and libzstd, QEMU's
 * exact bytes). Without the FFI permission, or where workers cannot start,
 * the pool compresses on the main thread (`compressCluster`, which then
 * uses `node:zlib`) and says so once on stderr. The default size comes
 * from `BLKGRAPH_COMPRESS_THREADS` (where it may be read), else 4. A job that fails in a
 * worker, or a worker that dies, rejects with an EIO {@linkcode BlockError}.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { loadCodecs } from "./_codecs.ts";

/** Options of {@linkcode CompressPool}. */
export interface CompressPoolOptions {
  /** Workers at most (default: the environment variable `BLKGRAPH_COMPRESS_THREADS`, else 4, QEMU's QCOW2_MAX_THREADS). */
  size?: number;
  /** Stop the workers after this many milliseconds without a job (default 1000). */
  idleMs?: number;
}

/** What the pool did so far. */
export interface CompressPoolStats {
  /** Clusters compressed by workers. */
  workers: number;
  /** Clusters compressed on the main thread. */
  mainThread: number;
  /** Workers started. */
  started: number;
  /** Why the pool compresses on the main thread, if it does. */
  fallback?: string;
}

interface Pending {
  resolve: (out: Uint8Array | undefined) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  pending: Map<number, Pending>;
}

const DEFAULT_WORKER = new URL("./_compress_worker.ts", import.meta.url);
let workerUrl = DEFAULT_WORKER;
let warned = false;

/**
 * Makes new pools start their workers from `url` instead of
 * `_compress_worker.ts` (undefined: back to it). For tests that need a
 * worker that fails, or answers out of order; the module must speak the
 * protocol of `_compress_worker.ts`.
 */
export function setCompressWorkerUrl(url: URL | undefined): void {
  workerUrl = url ?? DEFAULT_WORKER;
}

/** `BLKGRAPH_COMPRESS_THREADS`, where it is set and may be read. */
function envSize(): number | undefined {
  const name = "BLKGRAPH_COMPRESS_THREADS";
  try {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") return undefined;
    const v = Deno.env.get(name);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v)) throw new BlockError("EINVAL", `Invalid ${name} '${v}': an integer from 0 to 64`);
    return Number(v);
  } catch (e) {
    if (e instanceof BlockError) throw e;
    return undefined;
  }
}

function fallbackReason(): string | undefined {
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return "no FFI permission for the compression workers";
  } catch (e) {
    return `cannot query the FFI permission: ${(e as Error).message}`;
  }
  if (typeof Worker !== "function") return "Web Workers are not available";
  return undefined;
}

/**
 * A pool of compression workers (see the module documentation). Each qcow2
 * image has one for its compressed writes (`Qcow2Instance.compressPool`,
 * size from the open option `compress-threads`).
 *
 * @example
 * ```ts
 * import { CompressPool } from "@blkgraph/blkgraph/drivers/qcow2";
 * const pool = new CompressPool({ size: 2 });
 * const out = await pool.compress(new Uint8Array(65536).fill(1), 0);
 * console.log(out!.length < 100, pool.stats.workers); // true 1
 * pool.close();
 * ```
 */
export class CompressPool {
  /** Workers at most. */
  readonly size: number;
  #idleMs: number;
  #url = workerUrl;
  #slots: Slot[] = [];
  #nextId = 1;
  #idle: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #stats: CompressPoolStats = { workers: 0, mainThread: 0, started: 0 };

  /** A pool of up to `opts.size` workers; none start before the first job. */
  constructor(opts: CompressPoolOptions = {}) {
    const size = opts.size ?? envSize() ?? 4;
    if (!Number.isInteger(size) || size < 0 || size > 64) {
      throw new BlockError("EINVAL", `Invalid compression pool size ${size}: an integer from 0 to 64 (0 = the main thread)`);
    }
    this.size = size;
    this.#idleMs = opts.idleMs ?? 1000;
    const why = size === 0 ? "a pool of 0 workers" : fallbackReason();
    if (why) this.#stats.fallback = why;
  }

  /** Counters of the jobs done so far, and the fallback reason. */
  get stats(): Readonly<CompressPoolStats> {
    return { ...this.#stats };
  }

  /**
   * Compresses one cluster with compression type `type` (0 zlib, 1 zstd);
   * resolves to the compressed bytes, or undefined when they would not be
   * smaller. `data` is transferred to the worker: it must own its whole
   * buffer, and is unusable (detached) afterwards.
   */
  compress(data: Uint8Array<ArrayBuffer>, type: number): Promise<Uint8Array | undefined> {
    if (this.#closed) return Promise.reject(new BlockError("EIO", "Cannot compress a cluster: the compression pool is closed"));
    if (this.#stats.fallback) return this.#onMainThread(data, type);
    if (data.byteOffset !== 0 || data.byteLength !== data.buffer.byteLength) data = data.slice();
    const slot = this.#pick();
    const id = this.#nextId++;
    clearTimeout(this.#idle);
    this.#idle = undefined;
    return new Promise((resolve, reject) => {
      slot.pending.set(id, { resolve, reject });
      slot.worker.postMessage({ id, type, data }, [data.buffer]);
    });
  }

  /** Stops the workers; jobs still in flight reject. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#idle);
    for (const s of [...this.#slots]) this.#drop(s, "the compression pool was closed");
  }

  #onMainThread(data: Uint8Array, type: number): Promise<Uint8Array | undefined> {
    if (!warned) {
      warned = true;
      console.warn(`blkgraph: compressing on the main thread: ${this.#stats.fallback}`);
    }
    this.#stats.mainThread++;
    // The codecs (and node:zlib) load on first use, not at start-up.
    return loadCodecs().then(({ compressCluster }) => compressCluster(data, type));
  }

  /** The worker with the fewest jobs; a new one while all are busy and the pool is not full. */
  #pick(): Slot {
    let best: Slot | undefined;
    for (const s of this.#slots) if (!best || s.pending.size < best.pending.size) best = s;
    if (best && (best.pending.size === 0 || this.#slots.length >= this.size)) return best;
    const worker = new Worker(this.#url, { type: "module" });
    const slot: Slot = { worker, pending: new Map() };
    worker.onmessage = (e: MessageEvent<{ id: number; out?: Uint8Array | null; error?: string }>) => {
      const p = slot.pending.get(e.data.id);
      if (!p) return;
      slot.pending.delete(e.data.id);
      if (e.data.error !== undefined) p.reject(new BlockError("EIO", `Cannot compress a cluster in a worker: ${e.data.error}`));
      else {
        this.#stats.workers++;
        p.resolve(e.data.out ?? undefined);
      }
      this.#maybeIdle();
    };
    worker.onerror = (e: ErrorEvent) => {
      // Handled here: unhandled, a worker's error would end the process.
      e.preventDefault();
      this.#drop(slot, `the compression worker failed: ${e.message}`);
      this.#maybeIdle();
    };
    this.#slots.push(slot);
    this.#stats.started++;
    return slot;
  }

  /** Terminates the worker of `slot`; its jobs reject with `why`. */
  #drop(slot: Slot, why: string): void {
    slot.worker.terminate();
    this.#slots = this.#slots.filter((s) => s !== slot);
    for (const p of slot.pending.values()) p.reject(new BlockError("EIO", `Cannot compress a cluster: ${why}`));
    slot.pending.clear();
  }

  #maybeIdle(): void {
    if (this.#closed || this.#slots.some((s) => s.pending.size > 0)) return;
    clearTimeout(this.#idle);
    this.#idle = setTimeout(() => {
      this.#idle = undefined;
      for (const s of [...this.#slots]) this.#drop(s, "idle");
    }, this.#idleMs);
  }
}
