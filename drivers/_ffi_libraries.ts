/**
 * What the drivers over a system C library (ssh over libssh, rbd over
 * librados/librbd) share: loading the libraries once, remembering why they
 * could not be loaded, and the small conversions their calls need.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";

/** One shared object to open and the symbols to bind from it. */
export interface LibrarySpec {
  /** The file `dlopen` opens, e.g. `"librbd.so.1"`. */
  file: string;
  /** The symbols to bind. */
  symbols: Deno.ForeignLibraryInterface;
}

/** How a driver names the libraries it needs in its messages. */
export interface LoaderOptions {
  /** The driver's name, as in "Driver 'rbd' is not available". */
  driver: string;
  /** The libraries to open, in order; their symbols are merged. */
  libraries: LibrarySpec[];
  /** What is missing when opening fails, e.g. "librbd.so.1". */
  missing: string;
  /** The Debian package that provides it. */
  debianPackage: string;
  /** The libraries use OpenSSL's libcrypto: {@linkcode initOpenSslWithoutExitCleanup} runs before they are opened. */
  openssl?: boolean;
}

/** Loads a driver's libraries once and explains a failure. */
export interface LibraryLoader<T> {
  /** The merged symbols, or undefined when FFI is not permitted (never prompts) or a library is missing. */
  load(): T | undefined;
  /** Why {@linkcode LibraryLoader.load} returned undefined, as an ENOTSUP BlockError naming the driver. */
  error(): BlockError;
}

/**
 * A loader that opens `options.libraries` on first use and caches the
 * result (success or failure). On failure the libraries opened so far are
 * closed again.
 *
 * @example
 * ```ts
 * import { libraryLoader } from "./_ffi_libraries.ts";
 * const libc = libraryLoader<{ getpid(): number }>({
 *   driver: "demo",
 *   libraries: [{ file: "libc.so.6", symbols: { getpid: { parameters: [], result: "i32" } } }],
 *   missing: "libc.so.6",
 *   debianPackage: "libc6",
 * });
 * const lib = libc.load();
 * console.log(lib ? lib.getpid() === Deno.pid : libc.error().message.startsWith("Driver 'demo'")); // true
 * ```
 */
export function libraryLoader<T>(options: LoaderOptions): LibraryLoader<T> {
  let cached: T | null | undefined;
  let whyNot = "";
  const fail = (why: string) => {
    whyNot = why;
    return undefined;
  };
  return {
    load(): T | undefined {
      if (cached !== undefined) return cached ?? undefined;
      cached = null;
      if (Deno.build.os !== "linux") return fail(`${options.missing} is only bound on Linux`);
      let granted = false;
      try {
        granted = Deno.permissions.querySync({ name: "ffi" }).state === "granted";
      } catch {
        // no permission API: treated as not granted
      }
      if (!granted) return fail("it needs the FFI permission (--allow-ffi)");
      if (options.openssl) initOpenSslWithoutExitCleanup();
      const opened: Deno.DynamicLibrary<Deno.ForeignLibraryInterface>[] = [];
      try {
        for (const spec of options.libraries) opened.push(Deno.dlopen(spec.file, spec.symbols));
      } catch (e) {
        for (const lib of opened) lib.close();
        return fail(
          `${options.missing} could not be loaded (${(e as Error).message}; Debian: apt-get install ${options.debianPackage})`,
        );
      }
      cached = Object.assign({}, ...opened.map((lib) => lib.symbols)) as T;
      return cached;
    },
    error(): BlockError {
      return new BlockError("ENOTSUP", `Driver '${options.driver}' is not available: ${whyNot}`);
    },
  };
}

/** `OPENSSL_INIT_NO_ATEXIT` (`openssl/crypto.h`, OpenSSL 1.1.1 and later). */
const OPENSSL_INIT_NO_ATEXIT = 0x80000n;
let openSslInitialised = false;

/**
 * Initialises the system's OpenSSL (`libcrypto.so.3`) without its
 * exit-time cleanup, once per process, before a library that uses it is
 * opened (libssh initialises OpenSSL in its constructor, when it is
 * opened). Call it only with the FFI permission granted.
 *
 * Why: the calls a driver declares `nonblocking` run on Deno's blocking
 * thread pool, and each pool thread that entered OpenSSL (libssh's key
 * exchange and SFTP packets, librados' messenger, a LUKS cipher) holds
 * thread-local OpenSSL state. As the process exits, those threads end and
 * free that state while the main thread's `exit()` runs OpenSSL's `atexit`
 * handler, `OPENSSL_cleanup`, which frees the same: "double free or
 * corruption" or SIGSEGV after the work is done, in about one process in
 * forty that used the ssh driver (seen in CI). `OPENSSL_INIT_NO_ATEXIT` is
 * OpenSSL's own switch for programs whose threads outlive `exit()`; the
 * memory goes back to the system with the process. The first
 * initialisation decides, so it must come before any other OpenSSL call.
 * A system without libcrypto needs nothing.
 *
 * @example
 * ```ts
 * import { initOpenSslWithoutExitCleanup } from "./_ffi_libraries.ts";
 * console.log(typeof initOpenSslWithoutExitCleanup()); // boolean
 * ```
 */
export function initOpenSslWithoutExitCleanup(): boolean {
  if (openSslInitialised) return true;
  for (const file of ["libcrypto.so.3", "libcrypto.so"]) {
    let lib;
    try {
      lib = Deno.dlopen(file, { OPENSSL_init_crypto: { parameters: ["u64", "pointer"], result: "i32" } });
    } catch {
      continue; // not this name; try the next one
    }
    // The handle stays open for the life of the process: libcrypto stays loaded with its state.
    openSslInitialised = lib.symbols.OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, null) === 1;
    return openSslInitialised;
  }
  return false;
}

const enc = new TextEncoder();

/**
 * A NUL-terminated copy of `s` for a `const char *` parameter.
 *
 * @example
 * ```ts
 * import { cstr } from "./_ffi_libraries.ts";
 * console.log(cstr("ab")); // Uint8Array(3) [ 97, 98, 0 ]
 * ```
 */
export function cstr(s: string): Uint8Array {
  return enc.encode(s + "\0");
}

/**
 * The C string at `p` ("" for NULL).
 *
 * @example
 * ```ts
 * import { cstr, readCString } from "./_ffi_libraries.ts";
 * console.log(readCString(null) === "", readCString(Deno.UnsafePointer.of(cstr("hi") as Uint8Array<ArrayBuffer>))); // true hi
 * ```
 */
export function readCString(p: Deno.PointerValue): string {
  return p ? Deno.UnsafePointerView.getCString(p) : "";
}

/**
 * Reads a pointer stored in an 8-byte out parameter (little-endian, 64-bit).
 *
 * @example
 * ```ts
 * import { outPointer } from "./_ffi_libraries.ts";
 * console.log(outPointer(new Uint8Array(8))); // null
 * ```
 */
export function outPointer(out: Uint8Array): Deno.PointerValue {
  return Deno.UnsafePointer.create(new DataView(out.buffer, out.byteOffset, 8).getBigUint64(0, true));
}
