/**
 * A pool that compresses qcow2 clusters off the main thread, as QEMU
 * compresses on a pool of 4 threads (block/qcow2-threads.c): up to `size`
 * clusters at once, each in a `nonblocking` FFI call of the system's zlib
 * or libzstd (QEMU's exact bytes) that runs on one of Deno's blocking
 * threads; the jobs beyond that wait their turn in order. Each slot of the
 * pool owns its own z_stream and zstd context, so no two threads share
 * one. No JavaScript runs off the main thread, so the pool costs no
 * JavaScript heap beyond the main one (Web Workers cost ~40 MiB each).
 *
 * Without the FFI permission, or where a library cannot be loaded, the
 * pool compresses on the main thread (`compressCluster`, which then uses
 * `node:zlib`) and says so once on stderr. The default size comes from
 * `BLKGRAPH_COMPRESS_THREADS` (where it may be read), else 4. A job that
 * fails rejects with an EIO {@linkcode BlockError}.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { loadCodecs } from "./_codecs.ts";
import { Deflater } from "./_zlib_ffi.ts";
import { ZstdCompressor } from "./_zstd_ffi.ts";

/** Options of {@linkcode CompressPool}. */
export interface CompressPoolOptions {
  /** Clusters compressed at once at most (default: the environment variable `BLKGRAPH_COMPRESS_THREADS`, else 4, QEMU's QCOW2_MAX_THREADS). */
  size?: number;
}

/** What the pool did so far. */
export interface CompressPoolStats {
  /** Clusters compressed off the main thread. */
  threads: number;
  /** Clusters compressed on the main thread. */
  mainThread: number;
  /** Slots set up (each with its own compression state). */
  started: number;
  /** Why the pool compresses on the main thread, if it does. */
  fallback?: string;
}

/**
 * How one slot compresses one cluster off the main thread: the bytes, null
 * when they would not be smaller, undefined when the codec cannot be
 * loaded. The default calls the system zlib or libzstd through
 * `nonblocking` FFI; tests substitute one ({@linkcode setCompressCodec}).
 */
export type CompressCodec = (slot: CodecSlot, data: Uint8Array, type: number) => Promise<Uint8Array | null | undefined>;

/** The compression state one slot of a pool owns. */
export interface CodecSlot {
  /** The slot's zlib stream, opened on its first zlib job. */
  deflater?: Deflater;
  /** The slot's zstd context, opened on its first zstd job. */
  zstd?: ZstdCompressor;
}

/** The default codec: the slot's own z_stream or zstd context, in a nonblocking FFI call. */
const ffiCodec: CompressCodec = (slot, data, type) => {
  if (type === 0) {
    slot.deflater ??= Deflater.open();
    return slot.deflater ? slot.deflater.deflateAsync(data) : Promise.resolve(undefined);
  }
  if (type === 1) {
    slot.zstd ??= ZstdCompressor.open();
    return slot.zstd ? slot.zstd.compressAsync(data) : Promise.resolve(undefined);
  }
  return Promise.reject(new BlockError("EINVAL", `Cannot compress a cluster: unknown compression type ${type}`));
};

let codec = ffiCodec;
let warned = false;

/**
 * Makes every pool compress through `fn` instead of the FFI codecs
 * (undefined: back to them). For tests that need jobs that fail, or
 * finish out of order.
 */
export function setCompressCodec(fn: CompressCodec | undefined): void {
  codec = fn ?? ffiCodec;
}

interface Job {
  data: Uint8Array;
  type: number;
  resolve: (out: Uint8Array | undefined) => void;
  reject: (e: Error) => void;
}

interface Slot extends CodecSlot {
  busy: boolean;
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

function ffiDenied(): string | undefined {
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return "no FFI permission for the compression threads";
  } catch (e) {
    return `cannot query the FFI permission: ${(e as Error).message}`;
  }
  return undefined;
}

function freeSlot(s: Slot): void {
  s.deflater?.close();
  s.zstd?.close();
  s.deflater = s.zstd = undefined;
}

/**
 * A compression pool (see the module documentation). Each qcow2 image has
 * one for its compressed writes (`Qcow2Instance.compressPool`, size from
 * the open option `compress-threads`).
 *
 * @example
 * ```ts
 * import { CompressPool } from "@blkgraph/blkgraph/drivers/qcow2";
 * const pool = new CompressPool({ size: 2 });
 * const out = await pool.compress(new Uint8Array(65536).fill(1), 0);
 * console.log(out!.length < 100, pool.stats.threads); // true 1
 * pool.close();
 * ```
 */
export class CompressPool {
  /** Clusters compressed at once at most. */
  readonly size: number;
  #slots: Slot[] = [];
  #queue: Job[] = [];
  #closed = false;
  #stats: CompressPoolStats = { threads: 0, mainThread: 0, started: 0 };

  /** A pool of up to `opts.size` slots; none is set up before the first job. */
  constructor(opts: CompressPoolOptions = {}) {
    const size = opts.size ?? envSize() ?? 4;
    if (!Number.isInteger(size) || size < 0 || size > 64) {
      throw new BlockError("EINVAL", `Invalid compression pool size ${size}: an integer from 0 to 64 (0 = the main thread)`);
    }
    this.size = size;
    const why = size === 0 ? "a pool of 0 threads" : ffiDenied();
    if (why) this.#stats.fallback = why;
  }

  /** Counters of the jobs done so far, and the fallback reason. */
  get stats(): Readonly<CompressPoolStats> {
    return { ...this.#stats };
  }

  /**
   * Compresses one cluster with compression type `type` (0 zlib, 1 zstd);
   * resolves to the compressed bytes, or undefined when they would not be
   * smaller. `data` must not change until the promise settles.
   */
  compress(data: Uint8Array, type: number): Promise<Uint8Array | undefined> {
    if (this.#closed) return Promise.reject(new BlockError("EIO", "Cannot compress a cluster: the compression pool is closed"));
    if (this.#stats.fallback) return this.#onMainThread(data, type);
    return new Promise((resolve, reject) => {
      this.#queue.push({ data, type, resolve, reject });
      this.#pump();
    });
  }

  /** Frees the compression state; jobs still waiting reject (a job already running finishes first). */
  close(): void {
    this.#closed = true;
    for (const j of this.#queue.splice(0)) j.reject(new BlockError("EIO", "Cannot compress a cluster: the compression pool was closed"));
    for (const s of this.#slots) if (!s.busy) freeSlot(s);
  }

  /** Starts waiting jobs on idle slots, setting up a new slot while all are busy and the pool is not full. */
  #pump(): void {
    while (this.#queue.length > 0) {
      let slot = this.#slots.find((s) => !s.busy);
      if (!slot) {
        if (this.#slots.length >= this.size) return;
        slot = { busy: false };
        this.#slots.push(slot);
        this.#stats.started++;
      }
      this.#run(slot, this.#queue.shift()!);
    }
  }

  #run(slot: Slot, job: Job): void {
    slot.busy = true;
    let p: Promise<Uint8Array | null | undefined>;
    try {
      p = codec(slot, job.data, job.type);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (out) => {
        if (out === undefined) {
          // The library cannot be loaded: every later job runs on the main thread.
          this.#stats.fallback ??= `the system ${
            job.type === 1 ? "libzstd (libzstd.so.1)" : "zlib (libz.so.1)"
          } cannot be loaded through FFI`;
          return this.#onMainThread(job.data, job.type).then(job.resolve, job.reject);
        }
        this.#stats.threads++;
        job.resolve(out ?? undefined);
        return undefined;
      },
      (e) => {
        const why = e instanceof Error ? e.message : String(e);
        job.reject(e instanceof BlockError ? e : new BlockError("EIO", `Cannot compress a cluster: ${why}`));
      },
    ).finally(() => {
      slot.busy = false;
      if (this.#closed) freeSlot(slot);
      else this.#pump();
    });
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
}
