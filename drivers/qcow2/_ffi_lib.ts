/**
 * What the compression codecs share to reach a system library through FFI.
 *
 * @module
 */

/**
 * The symbols of library `name`, or null without the FFI permission or
 * where the library cannot be loaded (the callers fall back to `node:zlib`).
 *
 * @example
 * ```ts
 * import { openLibrary } from "./_ffi_lib.ts";
 * const z = openLibrary("libz.so.1", { zlibVersion: { parameters: [], result: "pointer" } });
 * console.log(z === null || typeof z.zlibVersion === "function"); // true
 * ```
 */
export function openLibrary<S extends Deno.ForeignLibraryInterface>(name: string, symbols: S): Deno.DynamicLibrary<S>["symbols"] | null {
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
    return Deno.dlopen(name, symbols).symbols;
  } catch {
    return null;
  }
}

/** The address of `b`'s first byte, as the C structs that point at buffers hold it. */
export function addressOf(b: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b as Uint8Array<ArrayBuffer>)));
}
