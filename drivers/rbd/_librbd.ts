/**
 * Ceph's client libraries through FFI: the librados and librbd calls the
 * `rbd` driver makes (the set QEMU's `block/rbd.c` uses), plus the three
 * libc calls of the eventfd completion path.
 *
 * Conventions (measured, see ../../README.md's rbd section):
 * - every call that may wait for the network (connect, open, close, resize,
 *   snapshots, stat, diff) is declared `nonblocking` and runs on Deno's
 *   blocking thread pool, so the event loop never waits for Ceph;
 * - the hot path (`rbd_aio_*`, completion polling) is synchronous: those
 *   calls only queue work inside librbd and return at once;
 * - completions are passed as plain numbers (`usize`), read from out
 *   parameters as two 32-bit halves, so a request costs no BigInt;
 * - `ssize_t` results are declared `i32`: the driver caps requests below
 *   2 GiB, so the value (bytes, or `-errno`) is exact;
 * - librados and librbd return `-errno` themselves; errno is never read.
 *
 * @module
 */

import { BlockError, type ErrnoCode, errnoCode } from "../../core/errors.ts";
import { libraryLoader } from "../_ffi_libraries.ts";

export { cstr, outPointer } from "../_ffi_libraries.ts";

const RADOS = {
  rados_create: { parameters: ["buffer", "buffer"], result: "i32" },
  rados_conf_read_file: { parameters: ["pointer", "buffer"], result: "i32" },
  rados_conf_set: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  rados_conf_get: { parameters: ["pointer", "buffer", "buffer", "usize"], result: "i32" },
  rados_connect: { parameters: ["pointer"], result: "i32", nonblocking: true },
  rados_shutdown: { parameters: ["pointer"], result: "void", nonblocking: true },
  rados_ioctx_create: { parameters: ["pointer", "buffer", "buffer"], result: "i32", nonblocking: true },
  rados_ioctx_destroy: { parameters: ["pointer"], result: "void" },
  rados_ioctx_set_namespace: { parameters: ["pointer", "buffer"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

const RBD = {
  rbd_version: { parameters: ["buffer", "buffer", "buffer"], result: "void" },
  rbd_create: { parameters: ["pointer", "buffer", "u64", "buffer"], result: "i32", nonblocking: true },
  rbd_remove: { parameters: ["pointer", "buffer"], result: "i32", nonblocking: true },
  rbd_namespace_exists: { parameters: ["pointer", "buffer", "buffer"], result: "i32", nonblocking: true },
  rbd_open: { parameters: ["pointer", "buffer", "buffer", "buffer"], result: "i32", nonblocking: true },
  rbd_close: { parameters: ["pointer"], result: "i32", nonblocking: true },
  rbd_stat: { parameters: ["pointer", "buffer", "usize"], result: "i32", nonblocking: true },
  rbd_get_size: { parameters: ["pointer", "buffer"], result: "i32", nonblocking: true },
  rbd_get_features: { parameters: ["pointer", "buffer"], result: "i32", nonblocking: true },
  rbd_get_flags: { parameters: ["pointer", "buffer"], result: "i32", nonblocking: true },
  rbd_resize: { parameters: ["pointer", "u64"], result: "i32", nonblocking: true },
  rbd_flush: { parameters: ["pointer"], result: "i32", nonblocking: true },
  rbd_diff_iterate2: {
    parameters: ["pointer", "buffer", "u64", "u64", "u8", "u8", "function", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  rbd_snap_list: { parameters: ["pointer", "buffer", "buffer"], result: "i32", nonblocking: true },
  rbd_snap_list_end: { parameters: ["buffer"], result: "void" },
  rbd_snap_create: { parameters: ["pointer", "buffer"], result: "i32", nonblocking: true },
  rbd_snap_remove: { parameters: ["pointer", "buffer"], result: "i32", nonblocking: true },
  rbd_snap_rollback: { parameters: ["pointer", "buffer"], result: "i32", nonblocking: true },
  // The hot path: queue and return.
  rbd_aio_create_completion: { parameters: ["pointer", "pointer", "buffer"], result: "i32" },
  rbd_aio_read2: { parameters: ["pointer", "u64", "usize", "buffer", "usize", "i32"], result: "i32" },
  rbd_aio_write2: { parameters: ["pointer", "u64", "usize", "buffer", "usize", "i32"], result: "i32" },
  rbd_aio_discard: { parameters: ["pointer", "u64", "u64", "usize"], result: "i32" },
  rbd_aio_write_zeroes: { parameters: ["pointer", "u64", "usize", "usize", "i32", "i32"], result: "i32" },
  rbd_aio_flush: { parameters: ["pointer", "usize"], result: "i32" },
  rbd_aio_get_return_value: { parameters: ["usize"], result: "i32" },
  rbd_aio_release: { parameters: ["usize"], result: "void" },
  rbd_set_image_notification: { parameters: ["pointer", "i32", "i32"], result: "i32" },
  rbd_poll_io_events: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

const LIBC = {
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  // Waits for completions on a worker thread.
  read: { parameters: ["i32", "buffer", "usize"], result: "i32", nonblocking: true },
  write: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

type Ptr = Deno.PointerValue;
type Buf = Uint8Array | null;

/** The bound calls, 64-bit parameters typed as numbers (the FFI accepts them). */
export interface Librbd {
  rados_create(out: Uint8Array, id: Buf): number;
  rados_conf_read_file(cluster: Ptr, path: Buf): number;
  rados_conf_set(cluster: Ptr, option: Uint8Array, value: Uint8Array): number;
  rados_conf_get(cluster: Ptr, option: Uint8Array, out: Uint8Array, len: number): number;
  rados_connect(cluster: Ptr): Promise<number>;
  rados_shutdown(cluster: Ptr): Promise<void>;
  rados_ioctx_create(cluster: Ptr, pool: Uint8Array, out: Uint8Array): Promise<number>;
  rados_ioctx_destroy(ioctx: Ptr): void;
  rados_ioctx_set_namespace(ioctx: Ptr, ns: Uint8Array): void;
  rbd_version(major: Uint8Array, minor: Uint8Array, extra: Uint8Array): void;
  rbd_create(ioctx: Ptr, name: Uint8Array, size: number, order: Uint8Array): Promise<number>;
  rbd_remove(ioctx: Ptr, name: Uint8Array): Promise<number>;
  rbd_namespace_exists(ioctx: Ptr, ns: Uint8Array, exists: Uint8Array): Promise<number>;
  rbd_open(ioctx: Ptr, name: Uint8Array, out: Uint8Array, snap: Buf): Promise<number>;
  rbd_close(image: Ptr): Promise<number>;
  rbd_stat(image: Ptr, info: Uint8Array, size: number): Promise<number>;
  rbd_get_size(image: Ptr, out: Uint8Array): Promise<number>;
  rbd_get_features(image: Ptr, out: Uint8Array): Promise<number>;
  rbd_get_flags(image: Ptr, out: Uint8Array): Promise<number>;
  rbd_resize(image: Ptr, size: number): Promise<number>;
  rbd_flush(image: Ptr): Promise<number>;
  rbd_diff_iterate2(
    image: Ptr,
    fromSnap: Buf,
    offset: number,
    length: number,
    includeParent: number,
    wholeObject: number,
    cb: Ptr,
    arg: Ptr,
  ): Promise<number>;
  rbd_snap_list(image: Ptr, snaps: Uint8Array, max: Uint8Array): Promise<number>;
  rbd_snap_list_end(snaps: Uint8Array): void;
  rbd_snap_create(image: Ptr, name: Uint8Array): Promise<number>;
  rbd_snap_remove(image: Ptr, name: Uint8Array): Promise<number>;
  rbd_snap_rollback(image: Ptr, name: Uint8Array): Promise<number>;
  rbd_aio_create_completion(arg: Ptr, cb: Ptr, out: Uint8Array): number;
  rbd_aio_read2(image: Ptr, offset: number, length: number, buf: Uint8Array, comp: number, flags: number): number;
  rbd_aio_write2(image: Ptr, offset: number, length: number, buf: Uint8Array, comp: number, flags: number): number;
  rbd_aio_discard(image: Ptr, offset: number, length: number, comp: number): number;
  rbd_aio_write_zeroes(image: Ptr, offset: number, length: number, comp: number, zeroFlags: number, opFlags: number): number;
  rbd_aio_flush(image: Ptr, comp: number): number;
  rbd_aio_get_return_value(comp: number): number;
  rbd_aio_release(comp: number): void;
  rbd_set_image_notification(image: Ptr, fd: number, type: number): number;
  rbd_poll_io_events(image: Ptr, comps: Uint8Array, max: number): number;
  eventfd(initval: number, flags: number): number;
  socket(domain: number, type: number, protocol: number): number;
  connect(fd: number, addr: Uint8Array, len: number): number;
  fcntl(fd: number, cmd: number, arg: number): number;
  read(fd: number, buf: Uint8Array, len: number): Promise<number>;
  write(fd: number, buf: Uint8Array, len: number): number;
  close(fd: number): number;
}

/** `rbd_set_image_notification` type for a pipe (librbd writes one byte per completion; a socket works too). */
export const EVENT_TYPE_PIPE = 1;
/** `rbd_set_image_notification` type for an eventfd. */
export const EVENT_TYPE_EVENTFD = 2;
/** `eventfd(2)` flag: close on exec, so child processes never inherit it. */
export const EFD_CLOEXEC = 0o2000000;
/** Image feature bits (`rbd/features.h`). */
export const RBD_FEATURE_STRIPINGV2 = 1 << 1;
/** The image keeps a fast-diff map (needs object-map). */
export const RBD_FEATURE_FAST_DIFF = 1 << 4;
/** `rbd_get_flags`: the fast-diff map is invalid and must not be trusted. */
export const RBD_FLAG_FAST_DIFF_INVALID = 1 << 1;
/** `rbd_aio_write_zeroes` flag: keep the range allocated (no unmap). */
export const RBD_WRITE_ZEROES_FLAG_THICK_PROVISION = 1 << 0;
/** Size of `rbd_image_info_t` on 64-bit Linux (3 × u64, int, char[24], i64, char[96]). */
export const RBD_IMAGE_INFO_SIZE = 160;
/** Size of one `rbd_snap_info_t` (id, size, name pointer). */
export const RBD_SNAP_INFO_SIZE = 24;

const loader = libraryLoader<Librbd>({
  driver: "rbd",
  libraries: [
    { file: "librados.so.2", symbols: RADOS },
    { file: "librbd.so.1", symbols: RBD },
    { file: "libc.so.6", symbols: LIBC },
  ],
  missing: "librados.so.2 and librbd.so.1",
  debianPackage: "librbd1",
  openssl: true,
});

/**
 * Loads librados, librbd and libc, once. Returns undefined when FFI is not
 * permitted (never prompts) or a library is missing; {@linkcode librbdError}
 * then says why.
 *
 * @example
 * ```ts
 * import { loadLibrbd } from "./_librbd.ts";
 * console.log(loadLibrbd() ? "librbd loaded" : "no librbd here");
 * ```
 */
export function loadLibrbd(): Librbd | undefined {
  return loader.load();
}

/** Why {@linkcode loadLibrbd} returned undefined, as a BlockError. */
export function librbdError(): BlockError {
  return loader.error();
}

/** Reads a u64 out parameter as a number (sizes and flags, all below 2^53). */
export function outU64(out: Uint8Array, at = 0): number {
  const v = new DataView(out.buffer, out.byteOffset);
  return v.getUint32(at, true) + v.getUint32(at + 4, true) * 2 ** 32;
}

/** strerror(3) text for errnos librados and librbd return beyond the core's table. */
const EXTRA_ERRNO: Record<number, [ErrnoCode, string]> = {
  39: ["EBUSY", "Directory not empty"],
  85: ["EIO", "Interrupted system call should be restarted"],
  103: ["EIO", "Software caused connection abort"],
  104: ["EIO", "Connection reset by peer"],
  107: ["EIO", "Transport endpoint is not connected"],
  108: ["EIO", "Cannot send after transport endpoint shutdown"],
  110: ["EIO", "Connection timed out"],
  111: ["EIO", "Connection refused"],
  113: ["EIO", "No route to host"],
};

/** The errno code and strerror text for a negative librados/librbd result. */
export function describeErrno(ret: number): { code: ErrnoCode; text: string } {
  const n = -ret;
  const extra = EXTRA_ERRNO[n];
  if (extra) return { code: extra[0], text: extra[1] };
  const code = errnoCode(n);
  if (code) return { code, text: new BlockError(code, "").strerror };
  return { code: "EIO", text: `errno ${n}` };
}

/** A BlockError for a negative librados/librbd result: "`context`: strerror". */
export function rbdError(ret: number, context: string, node?: string): BlockError {
  const { code, text } = describeErrno(ret);
  return new BlockError(code, `${context}: ${text}`, { node });
}
