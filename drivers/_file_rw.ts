/**
 * The read, write and flush paths of a `file` node with FFI, one per `aio`
 * backend:
 *
 * - `sync`: one synchronous `pread`/`pwrite` on the caller's thread (page
 *   cache; the fastest way to do a cached request from Deno);
 * - `threads`: the same calls on Deno's worker threads (FFI `nonblocking`),
 *   one thread hop per request (`aio=threads`, and O_DIRECT where io_uring
 *   is unavailable);
 * - `io_uring`: SQEs on the node's ring (`_file_uring.ts`), submitted in
 *   batches and reaped at each wake-up of its socket or eventfd
 *   (`aio=io_uring`, and O_DIRECT by default).
 *
 * O_DIRECT requests whose memory is not 4096-aligned go through aligned
 * bounce buffers, one per request in flight. A short read loops until end of
 * file and zero-fills the rest; a short write loops until done.
 *
 * @module
 */

import { errnoError, type Libc } from "./_file_libc.ts";
import type { Uring } from "./_file_uring.ts";
import { alignedBuffer } from "./_file_libc.ts";
import type { DriverInstance } from "../core/node.ts";

/** How a node's reads and writes reach the kernel (`info().aio`). */
export type AioBackend = "sync" | "threads" | "io_uring";

/** Bounce buffer (and largest request) for O_DIRECT. */
export const DIRECT_MAX = 1 << 20;
/** Memory alignment for O_DIRECT buffers. */
export const MEM_ALIGN = 4096;
/** Idle O_DIRECT bounce buffers kept for reuse. */
const POOL_MAX = 32;

/** What the I/O paths need from the node. */
export interface RwContext {
  readonly libc: Libc;
  readonly fd: number;
  readonly filename: string;
  /** The node name, for errors. */
  readonly node: string;
  readonly direct: boolean;
  readonly backend: AioBackend;
  /** The node's ring (backend `io_uring`). */
  readonly ring?: Uring;
  /** Called after a write that ended at `end` (the file may have grown). */
  wrote(end: number): void;
}

/** The paths a backend provides. */
export type RwOps = Required<Pick<DriverInstance, "pread" | "pwrite" | "flush">>;

/** Builds the error for a failed request (negative `err`). */
export function ioError(ctx: Pick<RwContext, "filename" | "node">, what: string, offset: number, length: number, err: number) {
  return errnoError(-err, `Cannot ${what} ${length} bytes at offset ${offset} of '${ctx.filename}'`, { node: ctx.node, offset, length });
}

/** Reads into `buf` at `offset` synchronously; returns bytes read (short only at end of file). */
export function readAt(ctx: RwContext, offset: number, buf: Uint8Array): number {
  let done = 0;
  while (done < buf.length) {
    const n = ctx.libc.pread(ctx.fd, done === 0 ? buf : buf.subarray(done), offset + done);
    if (n < 0) throw ioError(ctx, "read", offset, buf.length, n);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** Writes `data` at `offset` synchronously. */
export function writeAt(ctx: RwContext, offset: number, data: Uint8Array): void {
  let done = 0;
  while (done < data.length) {
    const n = ctx.libc.pwrite(ctx.fd, done === 0 ? data : data.subarray(done), offset + done);
    // A write that makes no progress would loop forever: EIO.
    if (n <= 0) throw ioError(ctx, "write", offset, data.length, n < 0 ? n : -5);
    done += n;
  }
}

/** Synchronous fdatasync with the node's error message. */
export function syncFlush(ctx: RwContext): void {
  const r = ctx.libc.fdatasync(ctx.fd);
  if (r < 0) throw errnoError(-r, `Cannot flush '${ctx.filename}'`, { node: ctx.node });
}

/** The read, write and flush paths of `ctx.backend`. */
export function rwOps(ctx: RwContext): RwOps {
  if (ctx.backend === "sync") {
    return {
      pread(offset, buf) {
        const done = readAt(ctx, offset, buf);
        if (done < buf.length) buf.fill(0, done);
      },
      pwrite(offset, data) {
        writeAt(ctx, offset, data);
        ctx.wrote(offset + data.length);
      },
      flush: () => syncFlush(ctx),
    };
  }
  const { libc, fd, direct, ring } = ctx;
  // One async positional call: on the ring, or on a worker thread.
  const read = ring ? (b: Uint8Array, o: number) => ring.read(fd, b, o) : (b: Uint8Array, o: number) => libc.preadAsync(fd, b, o);
  const write = ring ? (b: Uint8Array, o: number) => ring.write(fd, b, o) : (b: Uint8Array, o: number) => libc.pwriteAsync(fd, b, o);
  const pool: Uint8Array[] = [];
  const takeBounce = (): Uint8Array => pool.pop() ?? alignedBuffer(libc, DIRECT_MAX, MEM_ALIGN);
  const giveBounce = (b: Uint8Array): void => {
    if (pool.length < POOL_MAX) pool.push(b);
  };
  const needsBounce = (buf: Uint8Array) => direct && libc.address(buf) % MEM_ALIGN !== 0;
  return {
    async pread(offset, buf) {
      const bounce = needsBounce(buf) ? takeBounce() : undefined;
      const target = bounce ? bounce.subarray(0, buf.length) : buf;
      try {
        let done = 0;
        while (done < buf.length) {
          const n = await read(done === 0 ? target : target.subarray(done), offset + done);
          if (n < 0) throw ioError(ctx, "read", offset, buf.length, n);
          if (n === 0) break;
          done += n;
        }
        if (bounce) buf.set(target.subarray(0, done));
        if (done < buf.length) buf.fill(0, done);
      } finally {
        if (bounce) giveBounce(bounce);
      }
    },
    async pwrite(offset, data) {
      const bounce = needsBounce(data) ? takeBounce() : undefined;
      const src = bounce ? bounce.subarray(0, data.length) : data;
      if (bounce) src.set(data);
      try {
        let done = 0;
        while (done < data.length) {
          const n = await write(done === 0 ? src : src.subarray(done), offset + done);
          if (n <= 0) throw ioError(ctx, "write", offset, data.length, n < 0 ? n : -5);
          done += n;
        }
      } finally {
        if (bounce) giveBounce(bounce);
      }
      ctx.wrote(offset + data.length);
    },
    // On the ring the fdatasync is drained behind every request submitted before it; with threads it runs here.
    flush: ring
      ? async () => {
        const r = await ring.fdatasync(fd);
        if (r < 0) throw errnoError(-r, `Cannot flush '${ctx.filename}'`, { node: ctx.node });
      }
      : () => syncFlush(ctx),
  };
}
