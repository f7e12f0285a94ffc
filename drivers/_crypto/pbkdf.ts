/**
 * PBKDF2 (RFC 8018) for LUKS key slots and the master key digest, and the
 * calibration that turns `iter-time` (milliseconds) into an iteration count
 * as QEMU's `qcrypto_pbkdf2_count_iters` does: run 2^15 iterations, grow
 * until one run is long enough, scale to iterations per second.
 *
 * SHA-1 and SHA-2 run on WebCrypto (`crypto.subtle.deriveBits`), which in
 * Deno is several times faster than `node:crypto`'s `pbkdf2` and does not
 * block the event loop; md5, sha224 and ripemd160 use `node:crypto`'s
 * asynchronous `pbkdf2`.
 *
 * @module
 */

import nodeCrypto from "node:crypto";
import { BlockError } from "../../core/errors.ts";
import { DIGEST_LENGTH, type HashAlg } from "./algorithms.ts";

const WEB_HASH: Partial<Record<HashAlg, string>> = { sha1: "SHA-1", sha256: "SHA-256", sha384: "SHA-384", sha512: "SHA-512" };

export { MAX_PBKDF2_ITERATIONS } from "./algorithms.ts";

/**
 * Derives `length` bytes from `password` and `salt` with `iterations`
 * rounds of HMAC-`hash`.
 *
 * @example
 * ```ts
 * import { pbkdf2 } from "./pbkdf.ts";
 * const key = await pbkdf2("sha256", new TextEncoder().encode("password"), new TextEncoder().encode("salt"), 1, 32);
 * console.log(key[0].toString(16)); // 12 (RFC 7914's PBKDF2-HMAC-SHA256 vector starts 120fb6cf)
 * ```
 */
export async function pbkdf2(
  hash: HashAlg,
  password: Uint8Array,
  salt: Uint8Array,
  iterations: number,
  length: number,
): Promise<Uint8Array> {
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > 0xffffffff) {
    throw new BlockError("EINVAL", `Invalid PBKDF2 iteration count ${iterations}: expected 1 to 4294967295`);
  }
  const web = WEB_HASH[hash];
  if (web && password.length > 0) {
    const pw = new Uint8Array(password);
    const key = await crypto.subtle.importKey("raw", pw, "PBKDF2", false, ["deriveBits"]);
    pw.fill(0);
    const bits = await crypto.subtle.deriveBits({ name: "PBKDF2", hash: web, salt: new Uint8Array(salt), iterations }, key, length * 8);
    return new Uint8Array(bits);
  }
  return await new Promise<Uint8Array>((resolve, reject) => {
    nodeCrypto.pbkdf2(password, salt, iterations, length, hash, (err, out) => {
      if (err) reject(new BlockError("EINVAL", `PBKDF2 with hash '${hash}' failed: ${err.message}`));
      else resolve(new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
    });
  });
}

const rates = new Map<HashAlg, number>();

/**
 * PBKDF2 iterations per second for `hash` producing `length` bytes, measured
 * like QEMU's `qcrypto_pbkdf2_count_iters` (grow the count until one run is
 * long enough, then scale) but to 200 ms instead of 500 ms, once per process
 * and hash: an iteration producing n digest-sized blocks costs n times one
 * producing a single block.
 */
export async function iterationsPerSecond(hash: HashAlg, length: number): Promise<number> {
  let rate = rates.get(hash);
  if (rate === undefined) {
    const password = new Uint8Array(nodeCrypto.randomBytes(16));
    const salt = new Uint8Array(nodeCrypto.randomBytes(32));
    let iterations = 1 << 15;
    for (let round = 0;; round++) {
      const start = performance.now();
      (await pbkdf2(hash, password, salt, iterations, DIGEST_LENGTH[hash])).fill(0);
      const ms = performance.now() - start;
      if (ms > 200 || round > 12) {
        rate = Math.max(1, Math.floor((iterations * 1000) / Math.max(ms, 1)));
        break;
      }
      iterations = ms < 40 ? iterations * 5 : Math.ceil((iterations * 250) / ms);
    }
    password.fill(0);
    rates.set(hash, rate);
  }
  return Math.max(1, Math.floor(rate / Math.ceil(length / DIGEST_LENGTH[hash])));
}

/**
 * Iterations that take `iterTimeMs` milliseconds (scaled from
 * {@linkcode iterationsPerSecond}), divided by `divisor`, at least `min`.
 * Counts above 2^32 - 1 are ERANGE, as in QEMU.
 */
export async function iterationsFor(
  hash: HashAlg,
  length: number,
  iterTimeMs: number,
  opts: { divisor?: number; min: number },
): Promise<number> {
  const rate = await iterationsPerSecond(hash, length);
  const n = Math.floor(Math.floor((rate * iterTimeMs) / 1000) / (opts.divisor ?? 1));
  if (n > 0xffffffff) throw new BlockError("ERANGE", `PBKDF iterations ${n} larger than 4294967295 (iter-time ${iterTimeMs})`);
  return Math.max(n, opts.min);
}
