/**
 * libssh (`libssh.so.4`, Debian's `libssh-4`) and the few libc calls the
 * `ssh` driver makes, through Deno's FFI.
 *
 * Conventions:
 * - the session stays in libssh's blocking mode, and every call that may
 *   wait for the network (connect, key exchange, authentication, SFTP
 *   requests) is declared `nonblocking`: it runs on Deno's blocking thread
 *   pool and the event loop never waits for the server;
 * - `ssize_t` results are declared `i32`: requests are capped at 128 KiB;
 * - the TCP connection is made here (getaddrinfo, socket, connect, poll)
 *   and handed to libssh as a file descriptor, as QEMU's `block/ssh.c`
 *   hands it the socket of `inet_connect_saddr`, so the errors are QEMU's.
 *
 * @module
 */

import type { BlockError } from "../../core/errors.ts";
import { libraryLoader, readCString } from "../_ffi_libraries.ts";

export { cstr, outPointer, readCString } from "../_ffi_libraries.ts";

const SSH = {
  ssh_new: { parameters: [], result: "pointer" },
  ssh_free: { parameters: ["pointer"], result: "void" },
  ssh_disconnect: { parameters: ["pointer"], result: "void", nonblocking: true },
  ssh_options_set: { parameters: ["pointer", "i32", "buffer"], result: "i32" },
  ssh_options_parse_config: { parameters: ["pointer", "buffer"], result: "i32" },
  ssh_set_blocking: { parameters: ["pointer", "i32"], result: "void" },
  ssh_connect: { parameters: ["pointer"], result: "i32", nonblocking: true },
  ssh_get_error: { parameters: ["pointer"], result: "pointer" },
  ssh_get_error_code: { parameters: ["pointer"], result: "i32" },
  ssh_session_is_known_server: { parameters: ["pointer"], result: "i32", nonblocking: true },
  ssh_get_server_publickey: { parameters: ["pointer", "buffer"], result: "i32" },
  ssh_get_publickey_hash: { parameters: ["pointer", "i32", "buffer", "buffer"], result: "i32" },
  ssh_get_fingerprint_hash: { parameters: ["i32", "pointer", "usize"], result: "pointer" },
  ssh_clean_pubkey_hash: { parameters: ["buffer"], result: "void" },
  ssh_string_free_char: { parameters: ["pointer"], result: "void" },
  ssh_key_type: { parameters: ["pointer"], result: "i32" },
  ssh_key_type_to_char: { parameters: ["i32"], result: "pointer" },
  ssh_key_free: { parameters: ["pointer"], result: "void" },
  ssh_userauth_none: { parameters: ["pointer", "pointer"], result: "i32", nonblocking: true },
  ssh_userauth_list: { parameters: ["pointer", "pointer"], result: "i32" },
  ssh_userauth_publickey_auto: { parameters: ["pointer", "pointer", "pointer"], result: "i32", nonblocking: true },
  sftp_new: { parameters: ["pointer"], result: "pointer", nonblocking: true },
  sftp_init: { parameters: ["pointer"], result: "i32", nonblocking: true },
  sftp_free: { parameters: ["pointer"], result: "void", nonblocking: true },
  sftp_get_error: { parameters: ["pointer"], result: "i32" },
  sftp_extension_supported: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  sftp_open: { parameters: ["pointer", "buffer", "i32", "u32"], result: "pointer", nonblocking: true },
  sftp_close: { parameters: ["pointer"], result: "i32", nonblocking: true },
  sftp_file_set_blocking: { parameters: ["pointer"], result: "void" },
  sftp_fstat: { parameters: ["pointer"], result: "pointer", nonblocking: true },
  sftp_attributes_free: { parameters: ["pointer"], result: "void" },
  sftp_seek64: { parameters: ["pointer", "u64"], result: "i32" },
  sftp_read: { parameters: ["pointer", "buffer", "usize"], result: "i32", nonblocking: true },
  sftp_write: { parameters: ["pointer", "buffer", "usize"], result: "i32", nonblocking: true },
  sftp_fsync: { parameters: ["pointer"], result: "i32", nonblocking: true },
} as const satisfies Deno.ForeignLibraryInterface;

const LIBC = {
  getaddrinfo: { parameters: ["buffer", "buffer", "buffer", "buffer"], result: "i32", nonblocking: true },
  freeaddrinfo: { parameters: ["pointer"], result: "void" },
  gai_strerror: { parameters: ["i32"], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "pointer", "u32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  getuid: { parameters: [], result: "u32" },
  getpwuid: { parameters: ["u32"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The bound calls (libssh's and libc's symbols in one object). */
export type Libssh =
  & Deno.DynamicLibrary<typeof SSH>["symbols"]
  & Deno.DynamicLibrary<typeof LIBC>["symbols"];

/** `ssh_options_set` keys (`enum ssh_options_e`). */
export const SSH_OPTIONS_HOST = 0;
/** Port, as an `unsigned int *`. */
export const SSH_OPTIONS_PORT = 1;
/** The connected socket, as a `socket_t *`. */
export const SSH_OPTIONS_FD = 3;
/** User name. */
export const SSH_OPTIONS_USER = 4;
/** Compression (`"none"`, as QEMU sets it). */
export const SSH_OPTIONS_COMPRESSION = 22;
/** `ssh_userauth_*` results. */
export const SSH_AUTH_SUCCESS = 0;
/** Authentication failed hard (a protocol or connection error). */
export const SSH_AUTH_ERROR = -1;
/** `ssh_userauth_list` bit for public-key authentication. */
export const SSH_AUTH_METHOD_PUBLICKEY = 4;
/** `enum ssh_publickey_hash_type`. */
export const SSH_PUBLICKEY_HASH = { sha1: 0, md5: 1, sha256: 2 } as const;
/** `enum ssh_known_hosts_e`. */
export const KNOWN_HOSTS = { ERROR: -2, NOT_FOUND: -1, UNKNOWN: 0, OK: 1, CHANGED: 2, OTHER: 3 } as const;
/** `SSH_FILEXFER_TYPE_REGULAR`: the attributes' type of a regular file. */
export const SFTP_TYPE_REGULAR = 1;
/** Byte offsets in `struct sftp_attributes_struct` (64-bit): `type` (u8) and `size` (u64). */
export const ATTR_TYPE = 20;
/** Offset of `size`. */
export const ATTR_SIZE = 24;

const loader = libraryLoader<Libssh>({
  driver: "ssh",
  libraries: [{ file: "libssh.so.4", symbols: SSH }, { file: "libc.so.6", symbols: LIBC }],
  missing: "libssh.so.4",
  debianPackage: "libssh-4",
  openssl: true,
});

/**
 * Loads libssh and libc, once. Returns undefined when FFI is not permitted
 * (never prompts) or libssh is missing; {@linkcode libsshError} says why.
 *
 * @example
 * ```ts
 * import { loadLibssh } from "./_libssh.ts";
 * console.log(loadLibssh() ? "libssh loaded" : "no libssh here");
 * ```
 */
export function loadLibssh(): Libssh | undefined {
  return loader.load();
}

/** Why {@linkcode loadLibssh} returned undefined, as a BlockError. */
export function libsshError(): BlockError {
  return loader.error();
}

/** The calling thread's errno, right after a synchronous libc call. */
export function errno(lib: Libssh): number {
  const p = lib.__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32(0) : 0;
}

/** The name of the user running this process (QEMU's `g_get_user_name`), or undefined. */
export function currentUserName(lib: Libssh): string | undefined {
  const pw = lib.getpwuid(lib.getuid());
  if (pw) {
    const name = new Deno.UnsafePointerView(pw).getPointer(0);
    if (name) return readCString(name);
  }
  try {
    return Deno.env.get("USER") || undefined;
  } catch {
    return undefined; // no env permission
  }
}
