/**
 * The `file` protocol driver: positional I/O on a host file (QEMU's
 * file-posix). Every request is one synchronous positional syscall, never an
 * async Deno op (30–70 µs each): libc `pread`/`pwrite` through FFI when
 * `--allow-ffi` is granted (0.65 µs for a cached 4 KiB read), else `node:fs`
 * readSync/writeSync with a position (1 µs). Figures in bench/README.md.
 *
 * Options (QEMU's names):
 * - `filename` (required); `create` (create the file if missing, and let
 *   writes on the node itself go past the end);
 * - `locking` = `auto` (default) | `on` | `off`: QEMU-compatible OFD byte
 *   locks with FFI (qemu-img and blkgraph see each other), `flock` without.
 *   A conflict is `EBUSY` ("in use"; QEMU passes EAGAIN, which reads as
 *   "try again"). Writers unshare write and resize as QEMU does; read-only
 *   nodes share everything (like `qemu-img -U`);
 * - `cache.direct` (set by `cache=none`/`directsync`): O_DIRECT, needs FFI
 *   for aligned buffers; the request alignment is probed (512 or 4096).
 *   These requests wait for the disk, so they run on Deno's worker threads
 *   (FFI `nonblocking`) and overlap at queue depth > 1;
 * - `aio=threads`: buffered reads and writes also run on worker threads
 *   (QEMU's aio=threads), so a server goes on reading requests while the
 *   kernel copies a write; `aio=native|io_uring`, `aio-max-batch`,
 *   `drop-cache`, `x-check-cache-dropped`, `pr-manager`: accepted and ignored.
 *
 * With FFI the node also has a write-zeroes fast path (`fallocate` punch-hole
 * or zero-range), discard (punch hole), `blockStatus` from
 * `lseek(SEEK_DATA/SEEK_HOLE)`, and `truncate` with `prealloc: "falloc"`.
 * Writes past the end grow the file (a parent's writes, or the node's own
 * with `create` or `allowBeyondEof`); `flush` is fdatasync.
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * const path = await Deno.makeTempFile();
 * {
 *   await using f = await open({ driver: "file", filename: path, create: true });
 *   await f.pwrite(0, new Uint8Array(4096).fill(1));
 *   await f.flush();
 *   console.log(f.length); // 4096
 * }
 * await Deno.remove(path);
 * ```
 *
 * @module
 */

import { BlockError, toBlockError } from "../core/errors.ts";
import { checkKnownOptions, optBool, optEnum, optString } from "../core/options.ts";
import type { BlockNode } from "../core/node.ts";
import { registerDriver } from "../core/registry.ts";
import type { TruncateOptions, WriteZeroesOptions } from "../core/types.ts";
import type { BlockDriver, BlockStatus, DriverInstance, OpenContext } from "../core/node.ts";
import {
  alignedBuffer,
  checkPrealloc,
  Errno,
  errnoError,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  type Handle,
  type Libc,
  loadLibc,
  MAX_IO,
  O_CLOEXEC,
  O_CREAT,
  O_RDONLY,
  O_RDWR,
  SEEK_DATA,
  SEEK_END,
  SEEK_HOLE,
} from "./_file_libc.ts";

// node:fs (the fallback without FFI) is loaded only when needed: loading it costs a CLI run 0.1-0.3 s.
type NodeFs = typeof import("./_file_nodefs.ts");
let nodeFs: NodeFs | undefined;
import { lockOfd, permsFor, unlockOfd } from "./_file_lock.ts";

const KNOWN = [
  "filename",
  "locking",
  "aio",
  "cache.direct",
  "cache.no-flush",
  "create",
  "aio-max-batch",
  "drop-cache",
  "x-check-cache-dropped",
  "pr-manager",
];

/** Bounce buffer (and largest request) for O_DIRECT. */
const DIRECT_MAX = 1 << 20;
/** Memory alignment for O_DIRECT buffers. */
const MEM_ALIGN = 4096;
const ZERO_CHUNK = 1 << 20;
/** Idle O_DIRECT bounce buffers kept for reuse. */
const POOL_MAX = 32;

/** The host-file protocol driver. */
export const fileDriver: BlockDriver = {
  name: "file",
  kind: "protocol",
  protocolPrefix: "file",
  options: KNOWN,
  parseFilename(filename: string): Record<string, unknown> {
    return { filename: filename.replace(/^file:/, "") };
  },
  async open(ctx: OpenContext): Promise<DriverInstance> {
    if (!loadLibc() && !nodeFs) nodeFs = await import("./_file_nodefs.ts");
    return openFile(ctx);
  },
};

function openFile(ctx: OpenContext): DriverInstance {
  const opts = flattenCache(ctx.options);
  checkKnownOptions(opts, KNOWN, "file");
  const filename = optString(opts, "filename", "file");
  if (!filename) throw new BlockError("EINVAL", "Driver 'file' needs the option 'filename'");
  const locking = optEnum(opts, "locking", "file", ["auto", "on", "off"] as const) ?? "auto";
  const aio = optEnum(opts, "aio", "file", ["threads", "native", "io_uring"] as const);
  const direct = optBool(opts, "cache.direct", "file") ?? false;
  const create = optBool(opts, "create", "file") ?? false;
  const name = ctx.node.name;
  const libc = loadLibc();
  if (direct && !libc) {
    throw new BlockError(
      "ENOTSUP",
      `Cannot open '${filename}' with cache.direct=on (cache=none/directsync): O_DIRECT needs aligned buffers, which need FFI; run with --allow-ffi or use cache=writeback`,
      { node: name },
    );
  }
  const h = libc ? openLibc(libc, filename, ctx.readOnly, create, direct, name) : nodeFs!.openNodeFs(filename, ctx.readOnly, create, name);
  // A file opened to be created is written past its end by design (QEMU's allow_write_beyond_eof for image creation).
  if (create) ctx.node.allowBeyondEof = true;
  try {
    lockImage(h, filename, ctx.readOnly, ctx.forceShare ?? false, locking, name);
  } catch (e) {
    h.release();
    throw e;
  }
  // aio=threads (as QEMU's): buffered reads and writes run on worker threads too, so the caller's thread goes on meanwhile.
  return libc
    ? libcInstance(libc, h, filename, { direct, threads: direct || aio === "threads" }, ctx.node)
    : nodeFs!.nodeFsInstance(h, filename, name);
}

function openLibc(libc: Libc, filename: string, readOnly: boolean, create: boolean, direct: boolean, node: string): Handle {
  let flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (create) flags |= O_CREAT;
  if (direct) flags |= libc.O_DIRECT;
  if (filename.includes("\0")) throw new BlockError("EINVAL", `Cannot open '${filename}': the filename contains a NUL byte`, { node });
  const fd = libc.open(filename, flags, 0o644);
  if (fd < 0) {
    if (direct && -fd === Errno.EINVAL) {
      throw new BlockError("ENOTSUP", `Cannot open '${filename}' with cache.direct=on: the file system does not support O_DIRECT`, {
        node,
      });
    }
    throw errnoError(-fd, `Cannot open '${filename}'${readOnly ? " read-only" : ""}`, { node });
  }
  const h: Handle = {
    fd,
    libc,
    lockKind: "none",
    release: () => {
      if (h.lockKind === "ofd") unlockOfd(libc, fd);
      libc.close(fd);
    },
  };
  return h;
}

function lockImage(
  h: Handle,
  filename: string,
  readOnly: boolean,
  forceShare: boolean,
  locking: "auto" | "on" | "off",
  node: string,
): void {
  if (locking === "off") return;
  const what = readOnly ? "reading" : "writing";
  const busy = (detail: string) =>
    new BlockError(
      "EBUSY",
      `Cannot open '${filename}' for ${what}: it is locked by another process (is a VM or qemu-img using it?): ${detail}`,
      { node },
    );
  if (h.libc) {
    const { perm, shared } = permsFor(readOnly, forceShare);
    const fail = lockOfd(h.libc, h.fd, perm, shared);
    if (!fail) {
      h.lockKind = "ofd";
      return;
    }
    if (fail.kind === "conflict") throw busy(fail.detail);
    if (fail.kind === "unsupported" && locking === "auto") return;
    throw errnoError(fail.errno, `Cannot lock '${filename}' (locking=${locking}): ${fail.detail}`, { node });
  }
  // Without FFI: flock keeps blkgraph processes apart (QEMU does not see it):
  // writers take it exclusive, readers shared (so reader and writer
  // conflict, as with OFD locks), and force-share readers not at all.
  if (readOnly && forceShare) return;
  let lockFile: Deno.FsFile | undefined;
  try {
    lockFile = Deno.openSync(filename, { read: true });
    if (!lockFile.tryLockSync(!readOnly)) {
      lockFile.close();
      throw busy("flock is held");
    }
  } catch (e) {
    if (e instanceof BlockError) throw e;
    lockFile?.close();
    if (locking === "on") throw toBlockError(e, `Cannot lock '${filename}' (locking=on)`, { node });
    return;
  }
  const release = h.release;
  h.release = () => {
    try {
      release();
    } finally {
      // Unlock first: a forked child may share the description (see unlockOfd).
      lockFile.unlockSync();
      lockFile.close();
    }
  };
  h.lockKind = "flock";
}

/** Probes the O_DIRECT request alignment: the smallest of 512..4096 a read accepts. */
function probeAlignment(libc: Libc, fd: number, size: number, bounce: Uint8Array): number {
  if (size === 0) return 4096;
  for (const align of [512, 1024, 2048, 4096]) {
    const r = libc.pread(fd, bounce.subarray(0, align), 0);
    if (r >= 0 || -r !== Errno.EINVAL) return align;
  }
  return 4096;
}

function libcInstance(
  libc: Libc,
  h: Handle,
  filename: string,
  mode: { direct: boolean; threads: boolean },
  node: BlockNode,
): DriverInstance {
  const { direct, threads } = mode;
  const fd = h.fd;
  const name = node.name;
  let size = libc.lseek(fd, 0, SEEK_END);
  if (size < 0) {
    h.release();
    throw errnoError(-size, `Cannot get the size of '${filename}'`, { node: name });
  }
  // O_DIRECT bounce buffers, one per request in flight (requests run concurrently on worker threads).
  const pool: Uint8Array[] = [];
  const takeBounce = (): Uint8Array => pool.pop() ?? alignedBuffer(libc, DIRECT_MAX, MEM_ALIGN);
  const giveBounce = (b: Uint8Array): void => {
    if (pool.length < POOL_MAX) pool.push(b);
  };
  const align = direct ? probeAlignment(libc, fd, size, alignedBuffer(libc, MEM_ALIGN, MEM_ALIGN)) : 1;
  const ioError = (what: string, offset: number, length: number, err: number) =>
    errnoError(-err, `Cannot ${what} ${length} bytes at offset ${offset} of '${filename}'`, { node: name, offset, length });
  // Whether a fallocate mode works here; cleared the first time the file system says it does not.
  let canPunch = true;
  let canZeroRange = true;

  const readAt = (offset: number, buf: Uint8Array): number => {
    let done = 0;
    while (done < buf.length) {
      const n = libc.pread(fd, done === 0 ? buf : buf.subarray(done), offset + done);
      if (n < 0) throw ioError("read", offset, buf.length, n);
      if (n === 0) break;
      done += n;
    }
    return done;
  };
  const writeAt = (offset: number, data: Uint8Array): void => {
    let done = 0;
    while (done < data.length) {
      const n = libc.pwrite(fd, done === 0 ? data : data.subarray(done), offset + done);
      if (n < 0) throw ioError("write", offset, data.length, n);
      done += n;
    }
  };
  const isAligned = (buf: Uint8Array) => libc.address(buf) % MEM_ALIGN === 0;

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

  const inst: DriverInstance = {
    limits: { requestAlignment: align, maxTransfer: direct ? DIRECT_MAX : MAX_IO },
    getLength: () => size,
    pread: threads
      ? async (offset, buf) => {
        const bounce = !direct || isAligned(buf) ? undefined : takeBounce();
        const target = bounce ? bounce.subarray(0, buf.length) : buf;
        try {
          let done = 0;
          while (done < buf.length) {
            const n = await libc.preadAsync(fd, done === 0 ? target : target.subarray(done), offset + done);
            if (n < 0) throw ioError("read", offset, buf.length, n);
            if (n === 0) break;
            done += n;
          }
          if (bounce) buf.set(target.subarray(0, done));
          if (done < buf.length) buf.fill(0, done);
        } finally {
          if (bounce) giveBounce(bounce);
        }
      }
      : (offset, buf) => {
        const done = readAt(offset, buf);
        if (done < buf.length) buf.fill(0, done);
      },
    pwrite: threads
      ? async (offset, data) => {
        const bounce = !direct || isAligned(data) ? undefined : takeBounce();
        const src = bounce ? bounce.subarray(0, data.length) : data;
        if (bounce) src.set(data);
        try {
          let done = 0;
          while (done < data.length) {
            const n = await libc.pwriteAsync(fd, done === 0 ? src : src.subarray(done), offset + done);
            if (n < 0) throw ioError("write", offset, data.length, n);
            done += n;
          }
        } finally {
          if (bounce) giveBounce(bounce);
        }
        if (offset + data.length > size) size = offset + data.length;
      }
      : (offset, data) => {
        writeAt(offset, data);
        if (offset + data.length > size) size = offset + data.length;
      },
    pwriteZeroes(offset: number, length: number, opts: WriteZeroesOptions): void {
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
      const d = libc.lseek(fd, offset, SEEK_DATA);
      if (d === -Errno.ENXIO || (d >= 0 && d > offset)) {
        // A hole up to the next data (ENXIO: up to the end of the file).
        const len = d < 0 ? length : Math.min(length, d - offset);
        return { offset, length: len, data: false, zero: true, allocated: true, depth: 0, hostOffset: offset, file: node };
      }
      if (d < 0) return data(length);
      const hole = libc.lseek(fd, offset, SEEK_HOLE);
      return data(hole > offset ? Math.min(length, hole - offset) : length);
    },
    flush(): void {
      const r = libc.fdatasync(fd);
      if (r < 0) throw errnoError(-r, `Cannot flush '${filename}'`, { node: name });
    },
    // Buffered I/O is synchronous FFI already: the exit write-back can use it (O_DIRECT needs aligned bounce buffers: not offered).
    syncIo: direct ? undefined : {
      pwrite(offset: number, data: Uint8Array): void {
        writeAt(offset, data);
        if (offset + data.length > size) size = offset + data.length;
      },
      flush(): void {
        const r = libc.fdatasync(fd);
        if (r < 0) throw errnoError(-r, `Cannot flush '${filename}'`, { node: name });
      },
    },
    truncate(length: number, opts: TruncateOptions): void {
      const prealloc = checkPrealloc(opts, filename, length, name);
      const old = size;
      const grow = length > old;
      if (grow && prealloc === "falloc") {
        const r = libc.fallocate(fd, 0, old, length - old);
        if (r === 0) {
          size = length;
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
    },
    close(): void {
      h.release();
    },
    info: () => ({ backend: "ffi", locking: h.lockKind, direct, aio: threads ? "threads" : "sync", requestAlignment: align }),
  };
  return inst;
}

function flattenCache(options: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(options)) {
    if (k === "cache" && v && typeof v === "object") {
      for (const [ck, cv] of Object.entries(v)) out[`cache.${ck}`] = cv;
    } else out[k] = v;
  }
  return out;
}

registerDriver(fileDriver);
