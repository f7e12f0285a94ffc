/**
 * qcow2 encryption (QEMU's `crypt_method`): `luks` (2), a LUKS1 header kept
 * in clusters the "full disk encryption header pointer" extension names,
 * every data cluster encrypted with its **host** offset as the IV sector
 * (QEMU's `crypt_physical_offset`); and legacy `aes` (1), AES-128-CBC with
 * the passphrase as key and the **guest** offset as the IV sector.
 *
 * Open options, as QEMU names them: `encrypt.key-secret` (the secret id) and
 * `encrypt.format` (must match the header when given). Without a secret the
 * image only opens for description (`noIo`); reads and writes then fail.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import type { CipherPool } from "../_crypto/cipher_pool.ts";
import { keyLength, LUKS_SECTOR_SIZE, parseCipherAlg, parseCipherMode, parseHashAlg, parseIvgenAlg } from "../_crypto/algorithms.ts";
import type { CryptoIO, LuksCreateOptions, LuksVolume } from "../_crypto/luks.ts";
import { loadLuks } from "../_crypto/_lazy.ts";
import { qemuPayloadOffset } from "../_crypto/luks_header.ts";
import { passphrase } from "../_crypto/passphrase.ts";
import { EXT_CRYPTO, type HeaderExtension, type Qcow2Header } from "./header.ts";
import { ENCRYPT_CREATE_NAMES } from "./_image_options.ts";

/** crypt_method values. */
export const CRYPT_NONE = 0;
/** Legacy AES-CBC (qcow v1 style). */
export const CRYPT_AES = 1;
/** LUKS header in the image. */
export const CRYPT_LUKS = 2;

/** Open options of qcow2 encryption (dotted and nested spellings). */
export const ENCRYPT_OPTIONS: readonly string[] = ["encrypt", "encrypt.key-secret", "encrypt.format"];

/** The open-time options of qcow2 encryption (both spellings: dotted keys or a nested `encrypt` object). */
export function encryptOptions(options: Record<string, unknown>): { keySecret?: string; format?: string } {
  const nested = options.encrypt;
  const o = nested !== null && typeof nested === "object" ? nested as Record<string, unknown> : {};
  const pick = (k: string) => {
    const v = options[`encrypt.${k}`] ?? o[k];
    return v === undefined ? undefined : String(v);
  };
  for (const k of Object.keys(o)) {
    if (k !== "key-secret" && k !== "format") throw new BlockError("EINVAL", `Unknown option 'encrypt.${k}' for driver 'qcow2'`);
  }
  return { keySecret: pick("key-secret"), format: pick("format") };
}

/**
 * Where the LUKS header lies (the crypto header extension: offset and
 * length, u64 each). As in QEMU, the area may reach past the end of the
 * file (a truncated image): what lies there reads as zeros.
 */
export function cryptoHeaderExtent(h: Qcow2Header, cs: number): { offset: number; length: number } {
  const ext = h.extensions.find((e) => e.type === EXT_CRYPTO);
  if (!ext) throw new BlockError("EINVAL", "qcow2: LUKS encryption needs a crypto header extension, and the image has none");
  if (ext.data.length < 16) throw new BlockError("EINVAL", `qcow2: crypto header extension is ${ext.data.length} bytes, expected 16`);
  const v = new DataView(ext.data.buffer, ext.data.byteOffset, ext.data.byteLength);
  const offset = Number(v.getBigUint64(0));
  const length = Number(v.getBigUint64(8));
  if (offset % cs !== 0) throw new BlockError("EINVAL", `qcow2: crypto header offset ${offset} is not aligned to the ${cs}-byte cluster`);
  if (!Number.isSafeInteger(offset + length)) {
    throw new BlockError("EINVAL", `qcow2: crypto header (offset ${offset}, length ${length}) ends past 2^53`);
  }
  return { offset, length };
}

/** The window of the file holding the LUKS header, as the crypto layer reads and writes it. */
function windowIO(file: BlockNode, offset: number, length: number): CryptoIO {
  return {
    size: () => length,
    async read(o, n) {
      if (o + n > length) throw new BlockError("EIO", `Cannot read ${n} bytes at offset ${o} of the ${length}-byte LUKS header area`);
      const buf = new Uint8Array(n);
      await file.pread(offset + o, buf);
      return buf;
    },
    write(o, data) {
      if (o + data.length > length) {
        throw new BlockError("EIO", `Cannot write ${data.length} bytes at offset ${o} of the ${length}-byte LUKS header area`);
      }
      return file.pwrite(offset + o, data);
    },
    flush: () => file.flush(),
  };
}

/** An encrypted qcow2 image's cipher and what `qemu-img info` shows about it. */
export class Qcow2Crypto {
  /** `luks` or `aes`. */
  readonly format: "luks" | "aes";
  /** The LUKS header (luks images). */
  readonly volume?: LuksVolume;
  /** The secret id the image was opened with (amend unlocks the master key with it). */
  readonly secretId?: string;
  #pool: CipherPool | undefined;
  #physical: boolean;
  #node: string;

  private constructor(format: "luks" | "aes", opts: { volume?: LuksVolume; pool?: CipherPool; node: string; secretId?: string }) {
    this.format = format;
    this.volume = opts.volume;
    this.secretId = opts.secretId;
    this.#pool = opts.pool;
    this.#physical = format === "luks";
    this.#node = opts.node;
  }

  /** Opens the encryption of an image with `crypt_method` ≠ 0, unlocking it unless it is opened without I/O (`noIo`). */
  static async open(
    h: Qcow2Header,
    file: BlockNode,
    options: Record<string, unknown>,
    opts: { noIo: boolean; node: string },
  ): Promise<Qcow2Crypto> {
    const { keySecret, format } = encryptOptions(options);
    const wanted = h.cryptMethod === CRYPT_LUKS ? "luks" : "aes";
    if (format !== undefined && format !== wanted) {
      throw new BlockError("EINVAL", `Header reported 'encrypt.format=${wanted}' encryption format but options specify '${format}'`);
    }
    if (keySecret === undefined && !opts.noIo) throw new BlockError("EINVAL", "Parameter 'encrypt.key-secret' is required for cipher");
    const { LuksVolume, CipherPool } = await loadLuks();
    let volume: LuksVolume | undefined;
    if (wanted === "luks") {
      const cs = 2 ** h.clusterBits;
      const ext = cryptoHeaderExtent(h, cs);
      volume = await LuksVolume.open(windowIO(file, ext.offset, ext.length));
    }
    // Only described (QEMU's BDRV_O_NO_IO): the secret is neither looked up nor tried, as qcrypto_block_open with NO_IO.
    if (keySecret === undefined || opts.noIo) return new Qcow2Crypto(wanted, { volume, node: opts.node });
    const password = passphrase(keySecret, "encrypt.key-secret");
    let key: Uint8Array;
    try {
      if (volume) key = await volume.unlock(password);
      else {
        // QEMU's qcow AES key: the passphrase's first 16 bytes, zero-padded.
        key = new Uint8Array(16);
        key.set(password.subarray(0, 16));
      }
    } finally {
      password.fill(0);
    }
    try {
      const spec = volume ? volume.spec : { alg: "aes-128", mode: "cbc", ivgen: "plain64" } as const;
      return new Qcow2Crypto(wanted, { volume, pool: new CipherPool(spec, key), node: opts.node, secretId: keySecret });
    } finally {
      key.fill(0);
    }
  }

  #need(what: string): CipherPool {
    if (this.#pool) return this.#pool;
    throw new BlockError("EINVAL", `Cannot ${what} encrypted data: parameter 'encrypt.key-secret' is required for cipher`, {
      node: this.#node,
    });
  }

  #sector(host: number, guest: number): number {
    return (this.#physical ? host : guest) / LUKS_SECTOR_SIZE;
  }

  /** Decrypts `buf` (read from host offset `host`, guest offset `guest`) in place. */
  decrypt(buf: Uint8Array, host: number, guest: number): Promise<void> {
    return this.#need("read").decrypt(buf, this.#sector(host, guest));
  }

  /** Encrypts `buf` in place (it will be written at host offset `host`, guest offset `guest`). */
  encrypt(buf: Uint8Array, host: number, guest: number): Promise<void> {
    return this.#need("write").encrypt(buf, this.#sector(host, guest));
  }

  /** A ciphertext copy of `data` (the caller's buffer stays as it is). */
  async encrypted(data: Uint8Array, host: number, guest: number): Promise<Uint8Array> {
    const out = new Uint8Array(data.length);
    await this.#need("write").encryptTo(data, out, this.#sector(host, guest));
    return out;
  }

  /** The `encrypt` member of qemu-img info's qcow2 data, in QEMU's key order. */
  info(): Record<string, unknown> {
    if (!this.volume) return { format: "aes" };
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(this.volume.info())) {
      if (k === "cipher-mode") out.format = "luks";
      out[k] = v;
    }
    return out;
  }

  /** Forgets the key and stops the worker threads. */
  async close(): Promise<void> {
    await this.#pool?.close();
    this.#pool = undefined;
  }
}

/** The validated encryption options of a new image. */
export interface Qcow2EncryptCreate {
  /** `luks` or `aes`. */
  format: "luks" | "aes";
  /** Secret id of the passphrase (or AES key). */
  keySecret: string;
  /** LUKS options. */
  luks: LuksCreateOptions;
  /** Bytes of LUKS header and key material to reserve (0 for aes). */
  headerBytes: number;
}

/** Validates qcow2's `encryption` / `encrypt.*` creation options (QEMU's names and messages); undefined when none is given. */
export function parseEncryptCreate(options: Record<string, unknown>): Qcow2EncryptCreate | undefined {
  const get = (k: string) => (options[k] === undefined ? undefined : String(options[k]));
  const given = ENCRYPT_CREATE_NAMES.filter((k) => options[k] !== undefined);
  if (!given.length) return undefined;
  let format = get("encrypt.format");
  const legacy = get("encryption");
  if (legacy !== undefined && ["on", "true", "yes"].includes(legacy)) {
    if (format !== undefined && format !== "aes") {
      throw new BlockError("EINVAL", "Options 'encryption' and 'encrypt.format' are incompatible");
    }
    format ??= "aes";
  }
  if (format === undefined) {
    if (given.every((k) => k === "encryption")) return undefined;
    throw new BlockError("EINVAL", "Parameter 'encrypt.format' is missing");
  }
  if (format !== "luks" && format !== "aes") throw new BlockError("EINVAL", `Parameter 'encrypt.format' does not accept value '${format}'`);
  const keySecret = get("encrypt.key-secret");
  if (keySecret === undefined) throw new BlockError("EINVAL", "Parameter 'encrypt.key-secret' is required for cipher");
  const luksKeys = given.filter((k) => k !== "encryption" && k !== "encrypt.format" && k !== "encrypt.key-secret");
  if (format === "aes" && luksKeys.length) {
    throw new BlockError("EINVAL", `Invalid parameter '${luksKeys[0]}' for encrypt.format=aes (only encrypt.key-secret)`);
  }
  const str = (k: string) => get(`encrypt.${k}`);
  const alg = str("cipher-alg");
  const mode = str("cipher-mode");
  const ivgen = str("ivgen-alg");
  const ivgenHash = str("ivgen-hash-alg");
  const hash = str("hash-alg");
  const iter = str("iter-time");
  const spec = {
    alg: alg === undefined ? undefined : parseCipherAlg(alg, "encrypt.cipher-alg"),
    mode: mode === undefined ? undefined : parseCipherMode(mode, "encrypt.cipher-mode"),
    ivgen: ivgen === undefined ? undefined : parseIvgenAlg(ivgen, "encrypt.ivgen-alg"),
    ivgenHash: ivgenHash === undefined ? undefined : parseHashAlg(ivgenHash, "encrypt.ivgen-hash-alg"),
  };
  const iterTime = iter === undefined ? undefined : Number(iter);
  if (iterTime !== undefined && (!Number.isInteger(iterTime) || iterTime < 1)) {
    throw new BlockError("EINVAL", `Invalid value '${iter}' for option 'encrypt.iter-time': expected a positive integer`);
  }
  const luks: LuksCreateOptions = {
    spec: Object.fromEntries(Object.entries(spec).filter(([, v]) => v !== undefined)),
    hash: hash === undefined ? undefined : parseHashAlg(hash, "encrypt.hash-alg"),
    iterTime,
  };
  const headerBytes = format === "luks"
    ? qemuPayloadOffset(keyLength({ alg: spec.alg ?? "aes-256", mode: spec.mode ?? "xts" })) * LUKS_SECTOR_SIZE
    : 0;
  return { format, keySecret, luks, headerBytes };
}

/** The crypto header extension pointing at `length` bytes of LUKS header at `offset`. */
export function cryptoExtension(offset: number, length: number): HeaderExtension {
  const data = new Uint8Array(16);
  const v = new DataView(data.buffer);
  v.setBigUint64(0, BigInt(offset));
  v.setBigUint64(8, BigInt(length));
  return { type: EXT_CRYPTO, data };
}

/**
 * Writes the LUKS header and key slot 0 of a new image into the clusters
 * at `offset` (`enc.headerBytes` long, already zero), as QEMU's
 * qcow2_set_up_encryption does.
 */
export async function writeEncryptionHeader(file: BlockNode, offset: number, enc: Qcow2EncryptCreate): Promise<void> {
  const password = passphrase(enc.keySecret, "encrypt.key-secret");
  try {
    const { LuksVolume } = await loadLuks();
    const { masterKey } = await LuksVolume.create(windowIO(file, offset, enc.headerBytes), password, enc.luks);
    masterKey.fill(0);
  } finally {
    password.fill(0);
  }
}
