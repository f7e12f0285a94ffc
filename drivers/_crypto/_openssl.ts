/**
 * Sector encryption through the system's OpenSSL (`libcrypto.so.3`, the
 * library QEMU's own distribution packages link against), called with
 * `Deno.dlopen`: its EVP ciphers use AES-NI (and VAES) and run XTS, CBC and
 * CTR natively, so a sector costs one IV reset and one update call instead
 * of `node:crypto`'s software-bound AES-ECB plus two tweak passes in
 * JavaScript (about a quarter of the CPU for XTS).
 *
 * Used only where it can be: the process has the `ffi` permission (queried,
 * never prompted for), the library loads, it has the cipher (`aes-192-xts`
 * does not exist), and it accepts the key — OpenSSL refuses XTS encryption
 * with two equal key halves (Rogaway's attack), which IEEE 1619's test
 * vectors use. Everywhere else {@linkcode openSslCipher} returns undefined
 * and the caller keeps its portable path; both give the same bytes.
 *
 * Key bytes are copied into OpenSSL's cipher contexts; `EVP_CIPHER_CTX_free`
 * cleanses them when the cipher is destroyed.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { initOpenSslWithoutExitCleanup } from "../_ffi_libraries.ts";

const SYMBOLS = {
  EVP_CIPHER_CTX_new: { parameters: [], result: "pointer" },
  EVP_CIPHER_CTX_free: { parameters: ["pointer"], result: "void" },
  EVP_CIPHER_CTX_set_padding: { parameters: ["pointer", "i32"], result: "i32" },
  EVP_get_cipherbyname: { parameters: ["buffer"], result: "pointer" },
  EVP_CipherInit_ex: { parameters: ["pointer", "pointer", "pointer", "buffer", "buffer", "i32"], result: "i32" },
  EVP_CipherUpdate: { parameters: ["pointer", "buffer", "buffer", "buffer", "i32"], result: "i32" },
} as const;

type Lib = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** Library names tried in order (Debian/Ubuntu/Fedora, then the unversioned development link). */
const LIBRARY_NAMES = ["libcrypto.so.3", "libcrypto.so"];

let lib: Lib | null | undefined;

function load(): Lib | null {
  if (lib !== undefined) return lib;
  lib = null;
  try {
    if (typeof Deno?.dlopen !== "function" || Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return lib;
  } catch {
    return lib;
  }
  // Cipher pool workers call OpenSSL on their own threads: no exit-time cleanup racing them (see the function).
  initOpenSslWithoutExitCleanup();
  for (const name of LIBRARY_NAMES) {
    try {
      lib = Deno.dlopen(name, SYMBOLS).symbols;
      return lib;
    } catch {
      // not this name; try the next one
    }
  }
  return lib;
}

/** Whether sector ciphers can use OpenSSL in this process (ffi permission granted and libcrypto loads). */
export function openSslAvailable(): boolean {
  return load() !== null;
}

/** What {@linkcode OpenSslSectorCipher.run} needs to know about the IVs. */
export interface OpenSslRun {
  /** Bytes per sector (a multiple of 16). */
  sectorSize: number;
  /** Number of the first sector. */
  sector: number;
  /** `plain`: only the low 32 bits of the sector number (else all 64, `plain64`). */
  plain: boolean;
  /** Precomputed IVs, 16 bytes per sector (ESSIV); replaces sector/plain when given. */
  ivs?: Uint8Array;
}

/** One key's OpenSSL encryption and decryption contexts for one cipher (`aes-256-xts`, ...). */
export class OpenSslSectorCipher {
  #lib: Lib;
  #enc: Deno.PointerValue;
  #dec: Deno.PointerValue;
  #ecb: boolean;
  #iv = new Uint8Array(16);
  #ivWords = new Uint32Array(this.#iv.buffer);
  #outLength = new Uint8Array(4);

  /** Wraps two initialised contexts (see {@linkcode openSslCipher}). */
  constructor(l: Lib, enc: Deno.PointerValue, dec: Deno.PointerValue, ecb: boolean) {
    this.#lib = l;
    this.#enc = enc;
    this.#dec = dec;
    this.#ecb = ecb;
  }

  /** Encrypts (`enc`) or decrypts whole sectors of `data` into `out` (same length; default `data`, in place). */
  run(data: Uint8Array, enc: boolean, r: OpenSslRun, out: Uint8Array = data): void {
    const ctx = enc ? this.#enc : this.#dec;
    if (ctx === null) throw new BlockError("EIO", "The sector cipher was destroyed (image closed)");
    const s = this.#lib;
    const outl = this.#outLength;
    if (out.length !== data.length) throw new BlockError("EINVAL", `Output of ${out.length} bytes for ${data.length} bytes of input`);
    if (this.#ecb) {
      if (s.EVP_CipherUpdate(ctx, out, outl, data, data.length) !== 1) throw updateError(data.length);
      return;
    }
    const ss = r.sectorSize;
    const iv = this.#iv;
    const w = this.#ivWords;
    for (let off = 0, n = r.sector, i = 0; off < data.length; off += ss, n++, i += 16) {
      if (r.ivs) iv.set(r.ivs.subarray(i, i + 16));
      else {
        w[0] = n >>> 0;
        w[1] = r.plain ? 0 : Math.floor(n / 0x1_0000_0000);
      }
      const p = data.subarray(off, off + ss);
      const q = out === data ? p : out.subarray(off, off + ss);
      if (s.EVP_CipherInit_ex(ctx, null, null, null, iv, -1) !== 1 || s.EVP_CipherUpdate(ctx, q, outl, p, ss) !== 1) {
        throw updateError(ss);
      }
    }
  }

  /** Frees the contexts (OpenSSL cleanses their key schedules); the cipher cannot be used afterwards. */
  destroy(): void {
    this.#iv.fill(0);
    for (const c of [this.#enc, this.#dec]) if (c !== null) this.#lib.EVP_CIPHER_CTX_free(c);
    this.#enc = null;
    this.#dec = null;
  }
}

function updateError(n: number): BlockError {
  return new BlockError("EIO", `OpenSSL failed to process ${n} bytes of sector data`);
}

function context(l: Lib, cipher: Deno.PointerValue, key: Uint8Array, enc: number): Deno.PointerValue {
  const ctx = l.EVP_CIPHER_CTX_new();
  if (ctx === null) return null;
  if (l.EVP_CipherInit_ex(ctx, cipher, null, key, null, enc) !== 1 || l.EVP_CIPHER_CTX_set_padding(ctx, 0) !== 1) {
    l.EVP_CIPHER_CTX_free(ctx);
    return null;
  }
  return ctx;
}

/**
 * An OpenSSL sector cipher for `name` (OpenSSL's name: `aes-256-xts`,
 * `aes-128-cbc`, ...) with `key` (copied), or undefined when OpenSSL cannot
 * be used for it here (see the module notes).
 *
 * @example
 * ```ts
 * import { openSslCipher } from "./_openssl.ts";
 * const key = crypto.getRandomValues(new Uint8Array(64));
 * const c = openSslCipher("aes-256-xts", key);
 * key.fill(0);
 * const data = new Uint8Array(1024).fill(7);
 * c?.run(data, true, { sectorSize: 512, sector: 3, plain: false });
 * c?.run(data, false, { sectorSize: 512, sector: 3, plain: false });
 * console.log(data[0], data[1023]); // 7 7
 * c?.destroy();
 * ```
 */
export function openSslCipher(name: string, key: Uint8Array): OpenSslSectorCipher | undefined {
  const l = load();
  if (l === null) return undefined;
  const cipher = l.EVP_get_cipherbyname(new TextEncoder().encode(name + "\0"));
  if (cipher === null) return undefined;
  const enc = context(l, cipher, key, 1);
  const dec = context(l, cipher, key, 0);
  if (enc === null || dec === null) {
    for (const c of [enc, dec]) if (c !== null) l.EVP_CIPHER_CTX_free(c);
    return undefined;
  }
  return new OpenSslSectorCipher(l, enc, dec, name.endsWith("-ecb"));
}
