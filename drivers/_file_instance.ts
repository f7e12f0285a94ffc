/**
 * A `file` node's driver instance with FFI: size, write-zeroes
 * (`fallocate` punch-hole or zero-range, else zero buffers), discard,
 * `blockStatus` from `lseek(SEEK_DATA/SEEK_HOLE)`, truncate with
 * preallocation, and the read/write/flush paths of its `aio` backend
 * (`_file_rw.ts`).
 *
 * @module
 */

import { BlockError, errnoCode } from "../core/errors.ts";
import type { BlockNode } from "../core/node.ts";
import type { TruncateOptions, WriteZeroesOptions } from "../core/types.ts";
import type { BlockStatus, DriverInstance } from "../core/node.ts";
import {
  alignedBuffer,
  allocatedBytes,
  checkPrealloc,
  Errno,
  errnoError,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  firstBlock,
  type Handle,
  type Libc,
  MAX_IO,
  O_CLOEXEC,
  O_RDWR,
  SEEK_DATA,
  SEEK_END,
  SEEK_HOLE,
} from "./_file_libc.ts";
import {
  type AioBackend,
  DIRECT_MAX,
  ioError as rwError,
  MEM_ALIGN,
  type RwContext,
  rwOps,
  syncFlush,
  writeAt as rwWriteAt,
} from "./_file_rw.ts";
import { Uring } from "./_file_uring.ts";
import { copyFileRange, registerCopyEnd } from "./_file_copy_range.ts";

const ZERO_CHUNK = 1 << 20;

/** Probes the O_DIRECT request alignment: the smallest of 512..4096 a read accepts. */
function probeAlignment(libc: Libc, fd: number, size: number, bounce: Uint8Array): number {
  if (size === 0) return 4096;
  for (const align of [512, 1024, 2048, 4096]) {
    const r = libc.pread(fd, bounce.subarray(0, align), 0);
    if (r >= 0 || -r !== Errno.EINVAL) return align;
  }
  return 4096;
}

/** Ring size per node (QEMU's io_uring.c uses 128 too). */
const RING_ENTRIES = 128;

/** How a node is opened: O_DIRECT, and the backend asked for its reads and writes. */
export interface FileMode {
  readonly direct: boolean;
  /** The backend wanted; `io_uring` falls back to `threads` where a ring cannot be set up. */
  readonly aio: AioBackend;
  /** `aio=io_uring` was given explicitly: a fallback is announced on stderr. */
  readonly explicit: boolean;
}

/** Sets up the ring for backend `io_uring`, or says why not and falls back to worker threads. */
function startBackend(mode: FileMode, filename: string): { backend: AioBackend; ring?: Uring } {
  if (mode.aio !== "io_uring") return { backend: mode.aio };
  const r = Uring.open(RING_ENTRIES);
  if (r instanceof Uring) return { backend: "io_uring", ring: r };
  if (mode.explicit) {
    const why = r.step === "ffi" ? "no FFI" : `${r.step}: ${errnoCode(r.errno) ?? `errno ${r.errno}`}`;
    console.warn(`file: aio=io_uring is unavailable for '${filename}' (${why}); using aio=threads`);
  }
  return { backend: "threads" };
}

/** The driver instance of a file opened through libc (FFI). */
export function libcInstance(libc: Libc, h: Handle, filename: string, mode: FileMode, node: BlockNode): DriverInstance {
  const { direct } = mode;
  const fd = h.fd;
  const name = node.name;
  let size = libc.lseek(fd, 0, SEEK_END);
  if (size < 0) {
    throw errnoError(-size, `Cannot get the size of '${filename}'`, { node: name });
  }
  const { backend, ring } = startBackend(mode, filename);
  const align = direct ? probeAlignment(libc, fd, size, alignedBuffer(libc, MEM_ALIGN, MEM_ALIGN)) : 1;
  const rw: RwContext = {
    libc,
    fd,
    filename,
    node: name,
    direct,
    backend,
    ring,
    wrote: (end) => {
      if (end > size) size = end;
    },
  };
  const ioError = (what: string, offset: number, length: number, err: number) => rwError(rw, what, offset, length, err);
  const writeAt = (offset: number, data: Uint8Array): void => rwWriteAt(rw, offset, data);
  const ops = rwOps(rw);
  // Whether a fallocate mode works here; cleared the first time the file system says it does not.
  let canPunch = true;
  let canZeroRange = true;
  // The last data extent lseek found (QEMU's block-status cache, file-posix's `bsc`): a block-status query inside it answers
  // without two lseek calls (an NBD server asks before every read). Only data is remembered: a write keeps data data, and a hole
  // punched by another process behind our back is still read correctly (as zeros). Anything here that can make a hole (write
  // zeroes, discard, truncate) forgets it.
  let dataFrom = 0;
  let dataTo = 0;
  const forgetData = (): void => {
    dataFrom = dataTo = 0;
  };

  // Writes zero buffers over [from, to): for preallocation=full and when no fallocate mode works.
  const writeZeroBuffers = (from: number, to: number): void => {
    const zero = direct ? alignedBuffer(libc, ZERO_CHUNK, MEM_ALIGN) : new Uint8Array(Math.min(ZERO_CHUNK, to - from));
    zero.fill(0);
    if (direct) {
      // The core sends aligned ranges; a resize to an unaligned size is written through a buffered fd.
      if (from % align === 0 && to % align === 0) {
        for (let o = from; o < to; o += zero.length) writeAt(o, zero.subarray(0, Math.min(zero.length, to - o)));
        return;
      }
      const bfd = libc.open(filename, O_RDWR | O_CLOEXEC, 0);
      if (bfd < 0) throw ioError("write zeroes to", from, to - from, bfd);
      try {
        for (let o = from; o < to;) {
          const n = libc.pwrite(bfd, zero.subarray(0, Math.min(zero.length, to - o)), o);
          if (n <= 0) throw ioError("write zeroes to", from, to - from, n < 0 ? n : -Errno.EIO);
          o += n;
        }
        const r = libc.fdatasync(bfd);
        if (r < 0) throw ioError("write zeroes to", from, to - from, r);
      } finally {
        libc.close(bfd);
      }
      return;
    }
    for (let o = from; o < to; o += zero.length) writeAt(o, zero.subarray(0, Math.min(zero.length, to - o)));
  };
  const unsupported = (r: number) => r === -Errno.EOPNOTSUPP || r === -Errno.EINVAL || r === -Errno.ENOSYS;
  // Like QEMU's file-posix: a file grown from empty gets its first block written (ignoring failures).
  const allocateFirstBlock = (length: number): void => {
    const n = firstBlock(length);
    const buf = direct ? alignedBuffer(libc, n, MEM_ALIGN) : new Uint8Array(n);
    buf.fill(0);
    if (libc.pwrite(fd, buf, 0) === n && n > size) size = n;
  };

  const inst: DriverInstance = {
    limits: { requestAlignment: align, maxTransfer: direct ? DIRECT_MAX : MAX_IO },
    getLength: () => size,
    // QEMU's raw_get_allocated_file_size: the blocks the file holds (st_blocks * 512).
    allocatedSize: () => allocatedBytes(filename),
    ...ops,
    pwriteZeroes(offset: number, length: number, opts: WriteZeroesOptions): void {
      forgetData();
      const end = offset + length;
      const inside = Math.min(end, size) - offset;
      if (opts.mayUnmap && canPunch) {
        const r = inside > 0 ? libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, inside) : 0;
        if (r === 0) {
          if (end > size) inst.truncate!(end, {});
          return;
        }
        if (!unsupported(r)) throw ioError("write zeroes to", offset, length, r);
        canPunch = false;
      }
      if (canZeroRange) {
        const r = libc.fallocate(fd, FALLOC_FL_ZERO_RANGE, offset, length);
        if (r === 0) {
          if (end > size) size = end;
          return;
        }
        if (!unsupported(r)) throw ioError("write zeroes to", offset, length, r);
        canZeroRange = false;
      }
      if (opts.noFallback) {
        throw new BlockError(
          "ENOTSUP",
          `Cannot write zeroes to ${length} bytes at offset ${offset} of '${filename}': the file system supports neither punch-hole nor zero-range`,
          { node: name, offset, length },
        );
      }
      writeZeroBuffers(offset, end);
      if (end > size) size = end;
    },
    pdiscard(offset: number, length: number): void {
      forgetData();
      // Advisory: a file system without punch-hole just keeps the data.
      const inside = Math.min(offset + length, size) - offset;
      if (!canPunch || inside <= 0) return;
      const r = libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, inside);
      if (r === 0) return;
      if (!unsupported(r)) throw ioError("discard", offset, length, r);
      canPunch = false;
    },
    blockStatus(offset: number, length: number): BlockStatus {
      const data = (len: number): BlockStatus => ({
        offset,
        length: len,
        data: true,
        zero: false,
        allocated: true,
        depth: 0,
        hostOffset: offset,
        file: node,
      });
      if (offset >= dataFrom && offset < dataTo) return data(Math.min(length, dataTo - offset));
      const d = libc.lseek(fd, offset, SEEK_DATA);
      if (d === -Errno.ENXIO || (d >= 0 && d > offset)) {
        // A hole up to the next data (ENXIO: up to the end of the file).
        const len = d < 0 ? length : Math.min(length, d - offset);
        return { offset, length: len, data: false, zero: true, allocated: true, depth: 0, hostOffset: offset, file: node };
      }
      if (d < 0) return data(length);
      const hole = libc.lseek(fd, offset, SEEK_HOLE);
      if (hole <= offset) return data(length);
      // A data extent ending in a partial block at the end of the file covers that whole block: requests are whole
      // blocks of the alignment (QEMU's raw_co_block_status rounds it up the same way).
      const end = hole === size && hole % align ? hole + align - (hole % align) : hole;
      dataFrom = offset;
      dataTo = end;
      return data(Math.min(length, end - offset));
    },
    // Buffered I/O is synchronous FFI already: the exit write-back can use it (O_DIRECT needs aligned bounce buffers: not offered).
    syncIo: direct ? undefined : {
      pwrite(offset: number, data: Uint8Array): void {
        writeAt(offset, data);
        rw.wrote(offset + data.length);
      },
      flush: () => syncFlush(rw),
    },
    truncate(length: number, opts: TruncateOptions): void {
      const prealloc = checkPrealloc(opts, filename, length, size, name);
      forgetData();
      const old = size;
      const grow = length > old;
      if (grow && prealloc === "falloc") {
        const r = libc.fallocate(fd, 0, old, length - old);
        if (r === 0) {
          size = length;
          if (old === 0) allocateFirstBlock(length);
          return;
        }
        if (!unsupported(r)) throw errnoError(-r, `Cannot preallocate '${filename}' to ${length} bytes`, { node: name });
        // No fallocate here: write zeros instead, as posix_fallocate does.
        writeZeroBuffers(old, length);
        size = length;
        return;
      }
      const r = libc.ftruncate(fd, length);
      if (r < 0) throw errnoError(-r, `Cannot resize '${filename}' to ${length} bytes`, { node: name });
      size = length;
      if (grow && prealloc === "full") writeZeroBuffers(old, length);
      else if (grow && old === 0) allocateFirstBlock(length);
    },
    async close(): Promise<void> {
      // The node drained before closing; the ring waits for anything still in flight before it goes.
      try {
        await ring?.close();
      } finally {
        h.release();
      }
    },
    copyRange(offset, length, dst, dstOffset): void {
      copyFileRange(inst, offset, length, dst, dstOffset);
    },
    info: () => ({
      backend: "ffi",
      locking: h.lockKind,
      direct,
      aio: backend,
      ...(ring ? { uring: { ...ring.stats } } : {}),
      requestAlignment: align,
    }),
  };
  // A copy into this file may share the source's extents, holes included (reflink): it forgets the cached data extent too.
  registerCopyEnd(inst, {
    libc,
    fd,
    filename,
    wrote: (end) => {
      forgetData();
      rw.wrote(end);
    },
  });
  return inst;
}
