/**
 * The kernel interface under `_file_uring.ts`: io_uring's syscall numbers,
 * flags and `struct io_uring_params` layout, and the libc functions it is
 * driven through by FFI (`syscall()`, `mmap`, `eventfd`, `read` as a
 * `nonblocking` call that waits for the eventfd on Deno's blocking pool, and
 * `socket`/`connect`/`fcntl` for the notification socket).
 *
 * @module
 */

export const SYS_io_uring_setup = 425;
/** `io_uring_enter(2)`. */
export const SYS_io_uring_enter = 426;
/** `io_uring_register(2)`. */
export const SYS_io_uring_register = 427;

/** Opcodes used (include/uapi/linux/io_uring.h). */
export const Op = { FSYNC: 3, FALLOCATE: 17, READ: 22, WRITE: 23, SEND: 26 } as const;
/** `fsync_flags`: fdatasync instead of fsync. */
export const IORING_FSYNC_DATASYNC = 1;
/** `IORING_ENTER_GETEVENTS`: wait for `min_complete` completions. */
export const IORING_ENTER_GETEVENTS = 1;
/** SQE flag: start only once every SQE submitted before it has completed. */
export const IOSQE_IO_DRAIN = 1 << 1;
/**
 * SQE flag: the next SQE starts once this one has completed, whatever its
 * result (`IOSQE_IO_LINK` would cancel the next one when this one fails or
 * is short).
 */
export const IOSQE_IO_HARDLINK = 1 << 3;

/**
 * `send(2)` flag: never wait. On a full socket the linked send fails at once
 * with -EAGAIN (its unread bytes already promise a wake-up) instead of
 * waiting in the kernel for the reader, which would pile up one pending send
 * per request while nothing reads (requests completed inline, page-cached).
 */
export const MSG_DONTWAIT = 0x40;
/** Setup flag: clamp `entries` to the kernel maximum instead of failing. */
export const IORING_SETUP_CLAMP = 1 << 4;
/**
 * Setup flag (5.19): completion work does not interrupt the submitting
 * thread while it runs (no IPI); a sleeping thread is still woken for it.
 */
export const IORING_SETUP_COOP_TASKRUN = 1 << 8;
/** Setup flag (5.19): the kernel sets IORING_SQ_TASKRUN in the SQ ring's flags when completion work is waiting. */
export const IORING_SETUP_TASKRUN_FLAG = 1 << 9;
/** SQ ring flag: completion work is waiting (with IORING_SETUP_TASKRUN_FLAG). */
export const IORING_SQ_TASKRUN = 1 << 2;
/** CQ ring flag (set by the application): do not signal the registered eventfd. */
export const IORING_CQ_EVENTFD_DISABLED = 1;
/** Setup flag (6.0): only one thread submits. */
export const IORING_SETUP_SINGLE_ISSUER = 1 << 12;
/** Setup flag (6.1): completion work runs only when the submitter asks (`IORING_ENTER_GETEVENTS`). */
export const IORING_SETUP_DEFER_TASKRUN = 1 << 13;
/** Setup flag (5.18): go on submitting after an SQE that fails to prepare. */
export const IORING_SETUP_SUBMIT_ALL = 1 << 7;
/** Feature: the SQ and CQ rings share one mapping. */
export const IORING_FEAT_SINGLE_MMAP = 1 << 0;
/** `io_uring_register` opcode: signal an eventfd for every CQE. */
export const IORING_REGISTER_EVENTFD = 4;
/** mmap offset of the SQ ring. */
export const IORING_OFF_SQ_RING = 0;
/** mmap offset of the CQ ring. */
export const IORING_OFF_CQ_RING = 0x8000000;
/** mmap offset of the SQE array. */
export const IORING_OFF_SQES = 0x10000000;
/** `PROT_READ | PROT_WRITE`. */
export const PROT_RW = 0x1 | 0x2;
/** `MAP_SHARED | MAP_POPULATE`. */
export const MAP_SHARED_POPULATE = 0x01 | 0x8000;
/** `(void *)-1`. */
export const MAP_FAILED = 0xffffffffffffffffn;
/** `eventfd` flag: close on exec. */
export const EFD_CLOEXEC = 0o2000000;
/** errno: interrupted. */
export const EINTR = 4;
/** errno: try again. */
export const EAGAIN = 11;
/** errno: busy (completions must be reaped first). */
export const EBUSY = 16;
/** errno: invalid argument (also an unknown setup flag). */
export const EINVAL = 22;
/** errno: I/O error. */
export const EIO = 5;

/** Byte offsets in `struct io_uring_params` (120 bytes). */
export const P = {
  size: 120,
  sqEntries: 0,
  cqEntries: 4,
  flags: 8,
  features: 20,
  sqOff: 40, // struct io_sqring_offsets: head, tail, ring_mask, ring_entries, flags, dropped, array, ...
  cqOff: 80, // struct io_cqring_offsets: head, tail, ring_mask, ring_entries, overflow, cqes, ...
} as const;

const SYMBOLS = {
  uringSetup: { name: "syscall", parameters: ["i64", "u32", "buffer"], result: "i32" },
  uringEnter: { name: "syscall", parameters: ["i64", "i32", "u32", "u32", "u32", "pointer", "usize"], result: "i32" },
  uringRegister: { name: "syscall", parameters: ["i64", "i32", "u32", "buffer", "u32"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  // Waits for the eventfd on Deno's blocking pool (the rbd driver's mechanism).
  readAsync: { name: "read", parameters: ["i32", "buffer", "usize"], result: "i32", nonblocking: true },
  write: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  // The C end of the notification socket (`_notify_socket.ts`).
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The libc functions, with `errno` read on the calling thread. */
export interface Sys {
  uringSetup(nr: number, entries: number, params: Uint8Array): number;
  uringEnter(nr: number, fd: number, toSubmit: number, minComplete: number, flags: number, sig: null, sigsz: number): number;
  uringRegister(nr: number, fd: number, opcode: number, arg: Uint8Array, nrArgs: number): number;
  mmap(addr: null, len: number, prot: number, flags: number, fd: number, off: number): Deno.PointerValue;
  munmap(addr: Deno.PointerValue, len: number): number;
  eventfd(initval: number, flags: number): number;
  readAsync(fd: number, buf: Uint8Array, count: number): Promise<number>;
  write(fd: number, buf: Uint8Array, count: number): number;
  close(fd: number): number;
  socket(domain: number, type: number, protocol: number): number;
  connect(fd: number, addr: Uint8Array, len: number): number;
  fcntl(fd: number, cmd: number, arg: number): number;
  errno(): number;
}

let sys: Sys | null | undefined;

/** Loads the functions once; undefined without the FFI permission or off Linux. */
export function loadSys(): Sys | undefined {
  if (sys !== undefined) return sys ?? undefined;
  sys = null;
  try {
    if (Deno.build.os !== "linux" || Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return undefined;
    const lib = Deno.dlopen("libc.so.6", SYMBOLS);
    const s = lib.symbols as unknown as Omit<Sys, "errno"> & { __errno_location(): Deno.PointerValue };
    const ptr = s.__errno_location();
    const view = ptr ? new Deno.UnsafePointerView(ptr) : undefined;
    sys = Object.assign(s, { errno: () => view?.getInt32() ?? EIO });
    return sys;
  } catch {
    return undefined;
  }
}
