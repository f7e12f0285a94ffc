/**
 * The anti-forensic splitter of LUKS1 (on-disk format specification,
 * section "AF-Splitter"): a key of `n` bytes is stored as `stripes * n`
 * bytes, so that destroying any part of the stored material destroys the
 * key. The diffusion function hashes the buffer in digest-sized blocks, each
 * prefixed with its index as a 32-bit big-endian number.
 *
 * @module
 */

import nodeCrypto from "node:crypto";
import { BlockError } from "../../core/errors.ts";
import { DIGEST_LENGTH, type HashAlg } from "./algorithms.ts";
import { sha1Small, sha256Small } from "./_sha_small.ts";

function diffuse(hash: HashAlg, buf: Uint8Array): void {
  const dlen = DIGEST_LENGTH[hash];
  const small = hash === "sha256" ? sha256Small : hash === "sha1" ? sha1Small : undefined;
  const input = new Uint8Array(4 + dlen);
  const view = new DataView(input.buffer);
  for (let i = 0, off = 0; off < buf.length; i++, off += dlen) {
    const n = Math.min(dlen, buf.length - off);
    view.setUint32(0, i);
    input.set(buf.subarray(off, off + n), 4);
    const block = input.subarray(0, 4 + n);
    const d = small ? small(block) : nodeCrypto.createHash(hash).update(block).digest();
    buf.set(d.subarray(0, n), off);
    d.fill(0);
  }
  input.fill(0);
}

function xorInto(dst: Uint8Array, src: Uint8Array): void {
  for (let i = 0; i < dst.length; i++) dst[i] ^= src[i];
}

function checkStripes(stripes: number): void {
  if (!Number.isInteger(stripes) || stripes < 1) throw new BlockError("EINVAL", `Invalid AF stripe count ${stripes}: expected at least 1`);
}

/**
 * Splits `key` into `stripes` stripes of random-looking material
 * (`stripes * key.length` bytes); {@linkcode afMerge} turns it back.
 *
 * @example
 * ```ts
 * import { afMerge, afSplit } from "./afsplit.ts";
 * const key = new Uint8Array(32).fill(5);
 * const split = afSplit("sha256", key, 4000);
 * console.log(split.length, afMerge("sha256", split, 32, 4000)[31]); // 128000 5
 * ```
 */
export function afSplit(hash: HashAlg, key: Uint8Array, stripes: number): Uint8Array {
  checkStripes(stripes);
  const n = key.length;
  const out = new Uint8Array(n * stripes);
  nodeCrypto.randomFillSync(out.subarray(0, n * (stripes - 1)));
  const d = new Uint8Array(n);
  for (let k = 0; k < stripes - 1; k++) {
    xorInto(d, out.subarray(k * n, (k + 1) * n));
    diffuse(hash, d);
  }
  const last = out.subarray((stripes - 1) * n);
  for (let i = 0; i < n; i++) last[i] = d[i] ^ key[i];
  d.fill(0);
  return out;
}

/** Joins `stripes` stripes of `keyLength` bytes (the start of `split`) back into the key. */
export function afMerge(hash: HashAlg, split: Uint8Array, keyLength: number, stripes: number): Uint8Array {
  checkStripes(stripes);
  if (split.length < keyLength * stripes) {
    throw new BlockError("EINVAL", `AF material is ${split.length} bytes, less than ${stripes} stripes of ${keyLength} bytes`);
  }
  const d = new Uint8Array(keyLength);
  for (let k = 0; k < stripes - 1; k++) {
    xorInto(d, split.subarray(k * keyLength, (k + 1) * keyLength));
    diffuse(hash, d);
  }
  xorInto(d, split.subarray((stripes - 1) * keyLength, stripes * keyLength));
  return d;
}
