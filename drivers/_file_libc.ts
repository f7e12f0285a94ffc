/**
 * The libc calls the `file` driver makes through FFI when `--allow-ffi` is
 * granted: positional I/O (`pread`/`pwrite`, the fastest way to do small
 * requests from Deno, see bench/README.md), `open` with `O_DIRECT`,
 * `fallocate`, `lseek(SEEK_DATA/SEEK_HOLE)` and `fcntl` OFD locks. Every call
 * is synchronous and returns `-errno` on failure, like the kernel ABI, so
 * callers never read a stale `errno`.
 *
 * Linux only (x86_64 and aarch64); {@linkcode loadLibc} returns undefined
 * elsewhere or without the FFI permission, and the driver falls back to
 * `node:fs`.
 *
 * @module
 */

import { BlockError, type BlockErrorDetails, ERRNO_MESSAGES, errnoCode } from "../core/errors.ts";
import type { TruncateOptions } from "../core/types.ts";

/** `open(2)` flags that differ between architectures. */
interface ArchFlags {
  readonly O_DIRECT: number;
}

const ARCH_FLAGS: Record<string, ArchFlags> = {
  x86_64: { O_DIRECT: 0o40000 },
  aarch64: { O_DIRECT: 0o200000 },
};

/** Flags shared by Linux architectures. */
export const O_RDONLY = 0;
/** Open for reading and writing. */
export const O_RDWR = 2;
/** Create the file if missing. */
export const O_CREAT = 0o100;
/** Close on exec, so child processes (qemu-io in tests) do not inherit the fd. */
export const O_CLOEXEC = 0o2000000;
/** `fallocate` mode: keep the file size. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
/** `fallocate` mode: deallocate the range (with KEEP_SIZE). */
export const FALLOC_FL_PUNCH_HOLE = 0x02;
/** `fallocate` mode: make the range read as zeros, keeping it allocated. */
export const FALLOC_FL_ZERO_RANGE = 0x10;
/** `lseek` whence: next data at or after the offset. */
export const SEEK_DATA = 3;
/** `lseek` whence: next hole at or after the offset. */
export const SEEK_HOLE = 4;
/** `lseek` whence: relative to the end. */
export const SEEK_END = 2;
/** Open file description lock query. */
export const F_OFD_GETLK = 36;
/** Open file description lock set (non-blocking). */
export const F_OFD_SETLK = 37;
/** Shared lock type. */
export const F_RDLCK = 0;
/** Exclusive lock type. */
export const F_WRLCK = 1;
/** Unlock. */
export const F_UNLCK = 2;

/** errno values the driver tells apart. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  EAGAIN: 11,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  EISDIR: 21,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ENOLCK: 37,
  ENOSYS: 38,
  EOPNOTSUPP: 95,
} as const;

const SYMBOLS = {
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  // Results are truncated to i32: requests are capped below 2 GiB, and an
  // i32 result avoids a BigInt per call on the hot path.
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "i32" },
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "i32" },
  // Run on Deno's blocking thread pool: O_DIRECT requests overlap at depth > 1.
  preadAsync: { name: "pread", parameters: ["i32", "buffer", "usize", "i64"], result: "i32", nonblocking: true },
  pwriteAsync: { name: "pwrite", parameters: ["i32", "buffer", "usize", "i64"], result: "i32", nonblocking: true },
  fdatasync: { parameters: ["i32"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  fcntl: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  copy_file_range: { parameters: ["i32", "buffer", "i32", "buffer", "usize", "u32"], result: "i64" },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The symbols with 64-bit parameters typed as numbers (see loadLibc). */
interface NumberSymbols {
  open(path: Uint8Array, flags: number, mode: number): number;
  close(fd: number): number;
  pread(fd: number, buf: Uint8Array, count: number, offset: number): number;
  pwrite(fd: number, buf: Uint8Array, count: number, offset: number): number;
  preadAsync(fd: number, buf: Uint8Array, count: number, offset: number): Promise<number>;
  pwriteAsync(fd: number, buf: Uint8Array, count: number, offset: number): Promise<number>;
  fdatasync(fd: number): number;
  ftruncate(fd: number, length: number): number;
  fallocate(fd: number, mode: number, offset: number, length: number): number;
  lseek(fd: number, offset: number, whence: number): number | bigint;
  fcntl(fd: number, cmd: number, arg: Uint8Array): number;
  ioctl(fd: number, request: number, arg: Uint8Array): number;
  copy_file_range(fdIn: number, offIn: Uint8Array, fdOut: number, offOut: Uint8Array, len: number, flags: number): number | bigint;
  __errno_location(): Deno.PointerValue;
}

/** Largest single pread/pwrite (keeps the i32 result exact). */
export const MAX_IO = 1 << 30;

/** The loaded libc binding; every method returns a result or `-errno`. */
export interface Libc {
  /** `O_DIRECT` for this architecture. */
  readonly O_DIRECT: number;
  /** Opens `path`; returns the fd or `-errno`. */
  open(path: string, flags: number, mode: number): number;
  /** Closes `fd`; returns 0 or `-errno`. */
  close(fd: number): number;
  /** Reads into `buf` at `offset`; returns bytes read or `-errno`. */
  pread(fd: number, buf: Uint8Array, offset: number): number;
  /** Writes `buf` at `offset`; returns bytes written or `-errno`. */
  pwrite(fd: number, buf: Uint8Array, offset: number): number;
  /**
   * `pread` on a worker thread (for O_DIRECT, where a request waits for the
   * disk). `buf` must stay untouched until the promise settles.
   */
  preadAsync(fd: number, buf: Uint8Array, offset: number): Promise<number>;
  /** `pwrite` on a worker thread; see {@linkcode Libc.preadAsync}. */
  pwriteAsync(fd: number, buf: Uint8Array, offset: number): Promise<number>;
  /** `fdatasync`; returns 0 or `-errno`. */
  fdatasync(fd: number): number;
  /** `ftruncate`; returns 0 or `-errno`. */
  ftruncate(fd: number, length: number): number;
  /** `fallocate`; returns 0 or `-errno`. */
  fallocate(fd: number, mode: number, offset: number, length: number): number;
  /** `lseek`; returns the new offset or `-errno`. */
  lseek(fd: number, offset: number, whence: number): number;
  /** `fcntl(fd, cmd, struct flock *)`; returns the result or `-errno`. */
  fcntlLock(fd: number, cmd: number, flock: Uint8Array): number;
  /** `ioctl(fd, request, arg)` with a struct argument; returns the result or `-errno`. */
  ioctl(fd: number, request: number, arg: Uint8Array): number;
  /** `copy_file_range(2)` of up to `length` bytes from `fdIn` at `offIn` to `fdOut` at `offOut`; returns bytes copied or `-errno`. */
  copyFileRange(fdIn: number, offIn: number, fdOut: number, offOut: number, length: number): number;
  /** The numeric address of a buffer's first byte (for O_DIRECT alignment). */
  address(buf: Uint8Array): number;
}

let cached: Libc | null | undefined;

/**
 * Loads libc through FFI, once. Returns undefined when FFI is not permitted
 * (never prompts), the platform is not Linux x86_64/aarch64, or libc cannot
 * be opened.
 *
 * @example
 * ```ts
 * import { loadLibc } from "./_file_libc.ts";
 * console.log(loadLibc() ? "FFI" : "node:fs");
 * ```
 */
export function loadLibc(): Libc | undefined {
  if (cached !== undefined) return cached ?? undefined;
  cached = null;
  const arch = ARCH_FLAGS[Deno.build.arch];
  if (Deno.build.os !== "linux" || !arch) return undefined;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return undefined;
  } catch {
    return undefined;
  }
  let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
  try {
    lib = Deno.dlopen("libc.so.6", SYMBOLS);
  } catch {
    return undefined;
  }
  // Deno's types want bigint for 64-bit parameters, but the FFI accepts a
  // number too: passing numbers saves a BigInt allocation per request.
  const s = lib.symbols as unknown as NumberSymbols;
  const errnoPtr = s.__errno_location();
  const errnoView = errnoPtr ? new Deno.UnsafePointerView(errnoPtr) : undefined;
  const errno = (): number => errnoView?.getInt32() ?? Errno.EIO;
  // Retries EINTR, and turns -1 into -errno.
  const call = (f: () => number): number => {
    for (;;) {
      const r = f();
      if (r !== -1) return r;
      const e = errno();
      if (e !== Errno.EINTR) return -e;
    }
  };
  const enc = new TextEncoder();
  cached = {
    O_DIRECT: arch.O_DIRECT,
    open: (path, flags, mode) => call(() => s.open(enc.encode(path + "\0"), flags, mode)),
    close: (fd) => (s.close(fd) === -1 ? -errno() : 0),
    // The hot path: no closure per call.
    pread(fd, buf, offset) {
      let r = s.pread(fd, buf, buf.length, offset);
      while (r === -1) {
        const e = errno();
        if (e !== Errno.EINTR) return -e;
        r = s.pread(fd, buf, buf.length, offset);
      }
      return r;
    },
    pwrite(fd, buf, offset) {
      let r = s.pwrite(fd, buf, buf.length, offset);
      while (r === -1) {
        const e = errno();
        if (e !== Errno.EINTR) return -e;
        r = s.pwrite(fd, buf, buf.length, offset);
      }
      return r;
    },
    // errno lives in the worker thread: on failure the call is repeated
    // synchronously to learn why (a failed read or write changed nothing).
    async preadAsync(fd, buf, offset) {
      const r = await s.preadAsync(fd, buf, buf.length, offset);
      return r === -1 ? this.pread(fd, buf, offset) : r;
    },
    async pwriteAsync(fd, buf, offset) {
      const r = await s.pwriteAsync(fd, buf, buf.length, offset);
      return r === -1 ? this.pwrite(fd, buf, offset) : r;
    },
    fdatasync: (fd) => call(() => s.fdatasync(fd)),
    ftruncate: (fd, length) => call(() => s.ftruncate(fd, length)),
    fallocate: (fd, mode, offset, length) => call(() => s.fallocate(fd, mode, offset, length)),
    lseek: (fd, offset, whence) => call(() => Number(s.lseek(fd, offset, whence))),
    fcntlLock: (fd, cmd, flock) => call(() => s.fcntl(fd, cmd, flock)),
    ioctl: (fd, request, arg) => call(() => s.ioctl(fd, request, arg)),
    copyFileRange(fdIn, offIn, fdOut, offOut, length) {
      const offs = new BigInt64Array([BigInt(offIn), BigInt(offOut)]);
      const u8 = new Uint8Array(offs.buffer);
      return call(() => Number(s.copy_file_range(fdIn, u8.subarray(0, 8), fdOut, u8.subarray(8), length, 0)));
    },
    address: (buf) => Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf))),
  };
  return cached;
}

/** Field offsets of `struct flock` on Linux x86_64 and aarch64 (32 bytes). */
const FLOCK = { size: 32, type: 0, whence: 2, start: 8, len: 16, pid: 24 } as const;

/** Builds a `struct flock` for one byte range (whence SEEK_SET). */
export function flockStruct(type: number, start: number, len: number): Uint8Array {
  const buf = new Uint8Array(FLOCK.size);
  const v = new DataView(buf.buffer);
  v.setInt16(FLOCK.type, type, true);
  v.setInt16(FLOCK.whence, 0, true);
  v.setBigInt64(FLOCK.start, BigInt(start), true);
  v.setBigInt64(FLOCK.len, BigInt(len), true);
  v.setInt32(FLOCK.pid, 0, true);
  return buf;
}

/** Reads `l_type` back from a `struct flock` after F_OFD_GETLK. */
export function flockType(buf: Uint8Array): number {
  return new DataView(buf.buffer, buf.byteOffset).getInt16(FLOCK.type, true);
}

/**
 * Allocates `length` bytes whose address is a multiple of `align` (for
 * O_DIRECT), by over-allocating and slicing. The backing store of a large
 * ArrayBuffer does not move, so the alignment holds for its lifetime.
 */
export function alignedBuffer(libc: Libc, length: number, align: number): Uint8Array {
  const raw = new Uint8Array(length + align);
  const addr = libc.address(raw);
  const skip = (align - (addr % align)) % align;
  return raw.subarray(skip, skip + length);
}

/** Turns a positive errno into a BlockError whose message names `context`. */
export function errnoError(errno: number, context: string, details: BlockErrorDetails): BlockError {
  if (errno === Errno.EISDIR) return new BlockError("EINVAL", `${context}: Is a directory`, details);
  if (errno === Errno.EOPNOTSUPP) return new BlockError("ENOTSUP", `${context}: ${ERRNO_MESSAGES.ENOTSUP}`, details);
  const code = errnoCode(errno) ?? "EIO";
  const why = errnoCode(errno) ? ERRNO_MESSAGES[code] : `errno ${errno}`;
  return new BlockError(code, `${context}: ${why}`, details);
}

/** An open file: its fd, the libc binding when FFI is used, and how to close it. */
export interface Handle {
  /** The host fd. */
  fd: number;
  /** The libc binding (FFI), if used. */
  libc?: Libc;
  /** Closes the fd and drops the lock. */
  release: () => void;
  /** Which lock is held. */
  lockKind: "ofd" | "flock" | "none";
}

/** Checks the truncate preallocation mode: off, falloc and full are supported, the last two only to grow from `current` bytes. */
export function checkPrealloc(
  opts: TruncateOptions,
  filename: string,
  length: number,
  current: number,
  node: string,
): "off" | "falloc" | "full" {
  const p = opts.prealloc ?? "off";
  if (p === "off" || p === "falloc" || p === "full") {
    // As file-posix's handle_aiocb_truncate: preallocation only grows.
    if (p !== "off" && length < current) throw new BlockError("ENOTSUP", "Cannot use preallocation for shrinking files", { node });
    return p;
  }
  throw new BlockError(
    "ENOTSUP",
    `Cannot resize '${filename}' to ${length} bytes with preallocation '${p}': the file driver supports off, falloc and full`,
    { node },
  );
}

/**
 * How much of a file grown from empty is written with zeros at its start, as
 * QEMU's file-posix does (allocate_first_block: 4 KiB, or 512 bytes for a
 * file under 4 KiB), so the first block is allocated data (qemu-img map and
 * disk size show it, as for an image qemu-img made).
 */
export function firstBlock(newLength: number): number {
  return newLength < 4096 ? 512 : 4096;
}

/** The bytes a host file holds on its file system (`st_blocks * 512`); undefined when it cannot be stat'ed. */
export function allocatedBytes(filename: string): number | undefined {
  try {
    const st = Deno.statSync(filename);
    return st.blocks !== null ? st.blocks * 512 : st.size;
  } catch {
    return undefined;
  }
}
