/**
 * Sector encryption as LUKS (and QEMU's qcow2 encryption) does it: every
 * 512-byte sector is encrypted on its own, with an IV made from its sector
 * number (`plain`, `plain64`, `essiv`), in XTS, CBC, CTR or ECB mode.
 *
 * `node:crypto` in Deno has AES-ECB for every key size but no XTS (and no
 * aes-192-cbc), and a cipher object costs microseconds to make. So nothing
 * here makes a cipher object per sector: each {@linkcode SectorCipher} keeps
 * one ECB encryptor and decryptor per key and runs a whole batch of sectors
 * through each in one `update` call. The per-block work is done in 32-bit
 * words around that call:
 *
 * - XTS: the tweak of every sector is one ECB call over the batch's IVs
 *   (key 2); then one pass XORs each block with its tweak (multiplying the
 *   tweak by α as it goes), one ECB call (key 1) and a second pass that
 *   recomputes the tweaks and XORs them in again.
 * - CBC decryption: one ECB call, then each block is XORed with the
 *   previous ciphertext block (or the sector's IV).
 * - CBC encryption is serial within a sector, but sectors are independent:
 *   block j of every sector in the batch goes through one ECB call ("lanes",
 *   32 calls per batch whatever its size). Small batches of aes-128/256 use
 *   one long-lived native CBC stream instead, restarting each sector by
 *   folding its IV and the stream's last block into its first block.
 * - CTR: the counter blocks (IV + block index, big-endian) of the batch go
 *   through one ECB call and are XORed in.
 *
 * Where the system's OpenSSL can be used (`_openssl.ts`: the `ffi`
 * permission, libcrypto, a cipher it has, a key it accepts), every mode runs
 * there instead, one IV reset and one native update per sector — the same
 * bytes at about a quarter of the CPU for XTS. The paths above are the
 * portable fallback.
 *
 * Key bytes given to the constructor are copied into `node:crypto`'s cipher
 * objects (and OpenSSL's contexts); the caller zeroes its own copy. The scratch buffer (which held
 * tweaked data) is zeroed by {@linkcode SectorCipher.destroy}.
 *
 * @module
 */

import nodeCrypto from "node:crypto";
import { BlockError } from "../../core/errors.ts";
import { type CipherAlg, type CipherSpec, essivCipher, ivLength, keyLength, LUKS_SECTOR_SIZE } from "./algorithms.ts";
import { openSslCipher, type OpenSslSectorCipher } from "./_openssl.ts";

export { LUKS_SECTOR_SIZE } from "./algorithms.ts";
const BLOCK = 16;
/** Sectors are processed in chunks of this many bytes (one ECB call each). */
const CHUNK = 64 * 1024;
/** Below this many sectors, aes-128/256 CBC encryption uses the native stream instead of lanes. */
const CBC_LANE_MIN_SECTORS = 24;

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
  throw new BlockError("ENOTSUP", "The sector cipher needs a little-endian host (XTS tweaks are computed in 32-bit words)");
}

type NodeCipher = nodeCrypto.Cipheriv | nodeCrypto.Decipheriv;

/** One key's ECB encryptor and decryptor, reused for every call. */
class Ecb {
  #enc: NodeCipher;
  #dec: NodeCipher;
  constructor(alg: CipherAlg, key: Uint8Array) {
    this.#enc = nodeCrypto.createCipheriv(`${alg}-ecb`, key, null).setAutoPadding(false);
    this.#dec = nodeCrypto.createDecipheriv(`${alg}-ecb`, key, null).setAutoPadding(false);
  }
  encrypt(src: Uint8Array): Uint8Array {
    return this.#enc.update(src);
  }
  decrypt(src: Uint8Array): Uint8Array {
    return this.#dec.update(src);
  }
}

function words(b: Uint8Array): Uint32Array {
  return new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2);
}

function aligned(b: Uint8Array): Uint8Array {
  return b.byteOffset % 4 === 0 ? b : b.slice();
}

/** Options for a {@linkcode SectorCipher}. */
export interface SectorCipherOptions {
  /** Bytes per sector (a multiple of 16; default 512). */
  sectorSize?: number;
  /** Use OpenSSL when it can be (default true; false keeps to `node:crypto` and JavaScript). */
  native?: boolean;
}

/**
 * Encrypts and decrypts runs of whole sectors in place with one key.
 *
 * @example
 * ```ts
 * import { SectorCipher } from "./sector_cipher.ts";
 * const key = crypto.getRandomValues(new Uint8Array(64));
 * const c = new SectorCipher({ alg: "aes-256", mode: "xts", ivgen: "plain64" }, key);
 * key.fill(0);
 * const data = new Uint8Array(1024).fill(7);
 * c.encrypt(data, 10);
 * c.decrypt(data, 10);
 * console.log(data[0], data[1023]); // 7 7
 * c.destroy();
 * ```
 */
export class SectorCipher {
  /** What the cipher does. */
  readonly spec: Readonly<CipherSpec>;
  /** Bytes per sector. */
  readonly sectorSize: number;
  #main: Ecb;
  #tweak?: Ecb;
  #essiv?: Ecb;
  #cbc?: NodeCipher;
  #native?: OpenSslSectorCipher;
  #cbcLast = new Uint32Array(4);
  #scratch = new Uint8Array(0);
  #destroyed = false;

  /** Makes the cipher for `spec` with `key` (keyLength(spec) bytes; copied). */
  constructor(spec: CipherSpec, key: Uint8Array, opts: SectorCipherOptions = {}) {
    const need = keyLength(spec);
    if (key.length !== need) {
      throw new BlockError("EINVAL", `Invalid key length ${key.length} for ${spec.alg}-${spec.mode}: expected ${need} bytes`);
    }
    const ss = opts.sectorSize ?? LUKS_SECTOR_SIZE;
    if (!Number.isInteger(ss) || ss < BLOCK || ss % BLOCK !== 0 || ss > CHUNK) {
      throw new BlockError("EINVAL", `Invalid sector size ${ss}: expected a multiple of 16 up to ${CHUNK}`);
    }
    this.spec = { ...spec };
    this.sectorSize = ss;
    if (opts.native ?? true) this.#native = openSslCipher(`${spec.alg}-${spec.mode}`, key);
    const half = spec.mode === "xts" ? need / 2 : need;
    this.#main = new Ecb(spec.alg, key.subarray(0, half));
    if (spec.mode === "xts") this.#tweak = new Ecb(spec.alg, key.subarray(half));
    if (spec.mode === "cbc" && spec.alg !== "aes-192") {
      this.#cbc = nodeCrypto.createCipheriv(`${spec.alg}-cbc`, key, new Uint8Array(BLOCK)).setAutoPadding(false);
    }
    if (spec.ivgen === "essiv" && ivLength(spec.mode) > 0) {
      const hash = spec.ivgenHash ?? "sha256";
      const salt = nodeCrypto.createHash(hash).update(key).digest();
      try {
        this.#essiv = new Ecb(essivCipher(spec.alg, hash), salt);
      } finally {
        salt.fill(0);
      }
    }
  }

  /** Encrypts `data` (whole sectors, the first one numbered `sector`) in place. */
  encrypt(data: Uint8Array, sector: number): void {
    this.#run(data, sector, true);
  }

  /**
   * Encrypts `data` into `out` (same length; `data` is left as it is): one
   * pass through OpenSSL where it is used, a copy then {@linkcode encrypt}
   * otherwise. What a write's bounce buffer needs.
   */
  encryptTo(data: Uint8Array, out: Uint8Array, sector: number): void {
    if (out.length !== data.length) throw new BlockError("EINVAL", `Output of ${out.length} bytes for ${data.length} bytes of input`);
    if (this.#native && !this.#destroyed) this.#run(data, sector, true, out);
    else {
      out.set(data);
      this.#run(out, sector, true);
    }
  }

  /** Decrypts `data` (whole sectors, the first one numbered `sector`) in place. */
  decrypt(data: Uint8Array, sector: number): void {
    this.#run(data, sector, false);
  }

  /** Whether this cipher runs in OpenSSL (see the module notes). */
  get native(): boolean {
    return this.#native !== undefined;
  }

  /** Drops the cipher objects and zeroes the scratch buffers; the cipher cannot be used afterwards. */
  destroy(): void {
    this.#native?.destroy();
    this.#scratch.fill(0);
    this.#cbcLast.fill(0);
    this.#scratch = new Uint8Array(0);
    this.#destroyed = true;
  }

  #run(data: Uint8Array, sector: number, enc: boolean, out: Uint8Array = data): void {
    if (this.#destroyed) throw new BlockError("EIO", "The sector cipher was destroyed (image closed)");
    const ss = this.sectorSize;
    if (data.length % ss !== 0) {
      throw new BlockError("EINVAL", `Cannot encrypt ${data.length} bytes: not a multiple of the ${ss}-byte sector`);
    }
    if (!Number.isSafeInteger(sector) || sector < 0) throw new BlockError("EINVAL", `Invalid sector number ${sector}`);
    const native = this.#native;
    if (native) {
      const essiv = this.#essiv !== undefined;
      const plain = this.spec.ivgen === "plain";
      for (let off = 0; off < data.length; off += CHUNK) {
        const end = Math.min(data.length, off + CHUNK);
        const part = data.subarray(off, end);
        const first = sector + off / ss;
        const ivs = essiv ? this.#ivs(first, part.length / ss) : undefined;
        native.run(part, enc, { sectorSize: ss, sector: first, plain, ivs }, out === data ? part : out.subarray(off, end));
      }
      return;
    }
    for (let off = 0; off < data.length; off += CHUNK) {
      const part = data.subarray(off, Math.min(data.length, off + CHUNK));
      const work = aligned(part);
      this.#chunk(work, sector + off / ss, enc);
      if (work !== part) part.set(work);
    }
  }

  #scratchOf(n: number): Uint8Array {
    if (this.#scratch.length < n) this.#scratch = new Uint8Array(Math.max(n, 4096));
    return this.#scratch.subarray(0, n);
  }

  /** IVs of `n` sectors from `sector` (n * 16 bytes), as the IV generator makes them. */
  #ivs(sector: number, n: number): Uint8Array {
    const iv = new Uint8Array(n * BLOCK);
    const w = words(iv);
    const plain = this.spec.ivgen === "plain";
    for (let i = 0; i < n; i++) {
      const s = sector + i;
      w[i * 4] = s >>> 0;
      if (!plain) w[i * 4 + 1] = Math.floor(s / 0x1_0000_0000);
    }
    return this.#essiv ? aligned(this.#essiv.encrypt(iv)) : iv;
  }

  #chunk(data: Uint8Array, sector: number, enc: boolean): void {
    switch (this.spec.mode) {
      case "ecb": {
        data.set(enc ? this.#main.encrypt(data) : this.#main.decrypt(data));
        return;
      }
      case "xts":
        return this.#xts(data, sector, enc);
      case "cbc":
        return enc ? this.#cbcEncrypt(data, sector) : this.#cbcDecrypt(data, sector);
      case "ctr":
        return this.#ctr(data, sector);
    }
  }

  #xts(data: Uint8Array, sector: number, enc: boolean): void {
    const n = data.length / this.sectorSize;
    const bps = this.sectorSize / BLOCK;
    const t0 = words(aligned(this.#tweak!.encrypt(this.#ivs(sector, n))));
    const w = words(data);
    // Pass 1: x = data ^ tweak (tweaks multiplied by α block by block); pass 2 recomputes them.
    const x8 = this.#scratchOf(data.length);
    const x = words(x8);
    for (let s = 0, i = 0; s < n; s++) {
      let a = t0[s * 4], b = t0[s * 4 + 1], c = t0[s * 4 + 2], d = t0[s * 4 + 3];
      for (let j = 0; j < bps; j++, i += 4) {
        x[i] = w[i] ^ a;
        x[i + 1] = w[i + 1] ^ b;
        x[i + 2] = w[i + 2] ^ c;
        x[i + 3] = w[i + 3] ^ d;
        // tweak *= α in GF(2^128), little-endian as IEEE 1619 defines it
        const carry = d >>> 31;
        d = (d << 1) | (c >>> 31);
        c = (c << 1) | (b >>> 31);
        b = (b << 1) | (a >>> 31);
        a = (a << 1) ^ (carry * 0x87);
      }
    }
    const y = words(aligned(enc ? this.#main.encrypt(x8) : this.#main.decrypt(x8)));
    for (let s = 0, i = 0; s < n; s++) {
      let a = t0[s * 4], b = t0[s * 4 + 1], c = t0[s * 4 + 2], d = t0[s * 4 + 3];
      for (let j = 0; j < bps; j++, i += 4) {
        w[i] = y[i] ^ a;
        w[i + 1] = y[i + 1] ^ b;
        w[i + 2] = y[i + 2] ^ c;
        w[i + 3] = y[i + 3] ^ d;
        const carry = d >>> 31;
        d = (d << 1) | (c >>> 31);
        c = (c << 1) | (b >>> 31);
        b = (b << 1) | (a >>> 31);
        a = (a << 1) ^ (carry * 0x87);
      }
    }
  }

  #cbcDecrypt(data: Uint8Array, sector: number): void {
    const n = data.length / this.sectorSize;
    const bps = this.sectorSize / BLOCK;
    const iv = words(this.#ivs(sector, n));
    const y = words(aligned(this.#main.decrypt(data)));
    const w = words(data);
    for (let s = 0; s < n; s++) {
      const base = s * bps * 4;
      // Last block first, so each block's predecessor is still ciphertext.
      for (let j = bps - 1; j > 0; j--) {
        const i = base + j * 4;
        for (let k = 0; k < 4; k++) w[i + k] = y[i + k] ^ w[i - 4 + k];
      }
      for (let k = 0; k < 4; k++) w[base + k] = y[base + k] ^ iv[s * 4 + k];
    }
  }

  #cbcEncrypt(data: Uint8Array, sector: number): void {
    const n = data.length / this.sectorSize;
    const bps = this.sectorSize / BLOCK;
    const iv = words(this.#ivs(sector, n));
    const w = words(data);
    if (this.#cbc && n < CBC_LANE_MIN_SECTORS) {
      // One native CBC stream: fold IV and the stream's last block into each sector's first block.
      const last = this.#cbcLast;
      for (let s = 0; s < n; s++) {
        const base = s * bps * 4;
        for (let k = 0; k < 4; k++) w[base + k] ^= iv[s * 4 + k] ^ last[k];
        const part = data.subarray(base * 4, (base + bps * 4) * 4);
        const out = this.#cbc.update(part);
        part.set(out);
        for (let k = 0; k < 4; k++) last[k] = w[base + (bps - 1) * 4 + k];
      }
      return;
    }
    // Lanes: block j of every sector in one ECB call.
    const lane8 = this.#scratchOf(n * BLOCK);
    const lane = words(lane8);
    const prev = iv;
    for (let j = 0; j < bps; j++) {
      for (let s = 0; s < n; s++) {
        const i = (s * bps + j) * 4;
        for (let k = 0; k < 4; k++) lane[s * 4 + k] = w[i + k] ^ prev[s * 4 + k];
      }
      const c = words(aligned(this.#main.encrypt(lane8)));
      for (let s = 0; s < n; s++) {
        const i = (s * bps + j) * 4;
        for (let k = 0; k < 4; k++) {
          w[i + k] = c[s * 4 + k];
          prev[s * 4 + k] = c[s * 4 + k];
        }
      }
    }
  }

  #ctr(data: Uint8Array, sector: number): void {
    const n = data.length / this.sectorSize;
    const bps = this.sectorSize / BLOCK;
    const iv = new DataView(this.#ivs(sector, n).buffer);
    const ctr8 = this.#scratchOf(data.length);
    const ctr = new DataView(ctr8.buffer, ctr8.byteOffset, ctr8.byteLength);
    for (let s = 0; s < n; s++) {
      // The counter is the IV read as a 128-bit big-endian number, plus the block index.
      const hi = [iv.getUint32(s * 16), iv.getUint32(s * 16 + 4), iv.getUint32(s * 16 + 8), iv.getUint32(s * 16 + 12)];
      for (let j = 0; j < bps; j++) {
        const o = (s * bps + j) * BLOCK;
        let carry = j;
        for (let k = 3; k >= 0; k--) {
          const v = hi[k] + carry;
          ctr.setUint32(o + k * 4, v >>> 0);
          carry = v > 0xffffffff ? 1 : 0;
        }
      }
    }
    const ks = words(aligned(this.#main.encrypt(ctr8)));
    const w = words(data);
    for (let i = 0; i < w.length; i++) w[i] ^= ks[i];
  }
}
