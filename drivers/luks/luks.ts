/**
 * The `luks` format driver (QEMU's `block/crypto.c` with `crypto/block-luks.c`):
 * a LUKS1 header and eight key slots, then the payload, every 512-byte
 * sector of it encrypted with the master key and its sector number
 * (counted from the payload start) as the IV.
 *
 * Options: `key-secret` names the secret (`--object secret,id=...`) whose
 * passphrase unlocks a key slot. Without it the image only opens for
 * description (`noIo`, as qemu-img info does); reads and writes then fail.
 * A wrong passphrase is EACCES "Invalid password, cannot unlock any
 * keyslot", never garbage data.
 *
 * @module
 */

import { BlockError, toBlockError } from "../../core/errors.ts";
import type { BlockDriver, BlockNode, BlockStatus, DriverInstance } from "../../core/node.ts";
import { checkKnownOptions, optInt, optString } from "../../core/options.ts";
import { registerDriver } from "../../core/registry.ts";
import type { AmendOptions, FormatOptions, RequestOptions, TruncateOptions, WriteOptions } from "../../core/types.ts";
import { keyLength, LUKS_SECTOR_SIZE, parseCipherAlg, parseCipherMode, parseHashAlg, parseIvgenAlg } from "../_crypto/algorithms.ts";
import type { CipherPool } from "../_crypto/cipher_pool.ts";
import { passphrase } from "../_crypto/passphrase.ts";
import { amendLuks } from "../_crypto/amend.ts";
import type { CryptoIO, LuksVolume } from "../_crypto/luks.ts";
import { loadLuks } from "../_crypto/_lazy.ts";
import { isLuks, qemuPayloadOffset } from "../_crypto/luks_header.ts";
import { ioBuffer } from "../../core/_io_buffer.ts";

/** Largest piece a write is encrypted and written in (bounds the bounce buffer, as QEMU's 1 MiB). */
const WRITE_CHUNK = 1 << 20;

/** Open options of the luks driver. */
const OPEN_OPTIONS = ["key-secret"];
/** Creation options (qemu-img create -f luks -o help, QEMU 7.2). */
const CREATE_OPTIONS = [
  "key-secret",
  "cipher-alg",
  "cipher-mode",
  "ivgen-alg",
  "ivgen-hash-alg",
  "hash-alg",
  "iter-time",
  "preallocation",
  "size",
];

/** The CryptoIO of a standalone image: its file node. */
export function fileCryptoIO(file: BlockNode): CryptoIO {
  return {
    size: () => file.length,
    async read(offset, length) {
      const buf = ioBuffer(length);
      await file.pread(offset, buf);
      return buf;
    },
    write: (offset, data) => file.pwrite(offset, data),
    flush: () => file.flush(),
  };
}

function positiveInt(options: Record<string, unknown>, key: string, what: string): number | undefined {
  const v = optInt(options, key, what);
  if (v !== undefined && v < 1) {
    throw new BlockError("EINVAL", `Invalid value '${v}' for option '${key}' of ${what}: expected a positive integer`);
  }
  return v;
}

/** A luks node's driver instance. */
export class LuksInstance implements DriverInstance {
  /** Reads and writes are whole 512-byte sectors. */
  readonly limits = { requestAlignment: LUKS_SECTOR_SIZE };
  /** FUA is passed to the file. */
  readonly supportsFua = true;
  /** Unwritten sectors decrypt to noise, not zeros (copies must write zeros). */
  readonly zeroInit = false;
  /** The header and key slots. */
  readonly volume: LuksVolume;
  #file: BlockNode;
  #pool: CipherPool | undefined;
  #secretId: string | undefined;
  #name: string;
  #amending: Promise<void> = Promise.resolve();

  /** Wraps an unlocked (or, with no cipher, header-only) volume. */
  constructor(
    file: BlockNode,
    volume: LuksVolume,
    opts: { pool?: CipherPool; secretId?: string; name: string },
  ) {
    this.#file = file;
    this.volume = volume;
    this.#pool = opts.pool;
    this.#secretId = opts.secretId;
    this.#name = opts.name;
  }

  #need(what: string, offset: number, length: number): CipherPool {
    if (this.#pool) return this.#pool;
    throw new BlockError("EINVAL", `Cannot ${what} ${length} bytes at offset ${offset}: parameter 'key-secret' is required for cipher`, {
      node: this.#name,
      offset,
      length,
    });
  }

  /** Guest bytes: the file after the payload offset, in whole sectors (QEMU rounds lengths up to sectors). */
  getLength(): number {
    const n = Math.max(0, this.#file.length - this.volume.payloadOffset);
    return Math.ceil(n / LUKS_SECTOR_SIZE) * LUKS_SECTOR_SIZE;
  }

  /** Reads and decrypts sectors. */
  async pread(offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
    const c = this.#need("read", offset, buf.length);
    await this.#file.pread(this.volume.payloadOffset + offset, buf, opts);
    await c.decrypt(buf, offset / LUKS_SECTOR_SIZE);
  }

  /** Encrypts into a bounce buffer (at most 1 MiB at a time) and writes. */
  async pwrite(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const c = this.#need("write", offset, data.length);
    for (let done = 0; done < data.length; done += WRITE_CHUNK) {
      const end = Math.min(data.length, done + WRITE_CHUNK);
      const piece = new Uint8Array(end - done);
      const sector = (offset + done) / LUKS_SECTOR_SIZE;
      await c.encryptTo(data.subarray(done, end), piece, sector);
      await this.#file.pwrite(this.volume.payloadOffset + offset + done, piece, opts);
    }
  }

  /** Every sector holds (encrypted) data, as QEMU reports for luks. */
  blockStatus(offset: number, length: number): BlockStatus {
    return { offset, length, data: true, zero: false, allocated: true, depth: 0 };
  }

  /** Resizes the payload (the file is payload offset + length); new sectors read as whatever zeros decrypt to, as in QEMU. */
  async truncate(length: number, opts: TruncateOptions): Promise<void> {
    await this.#file.truncate(this.volume.payloadOffset + length, opts);
  }

  /** `qemu-img info` data: the header fields, and that the image is encrypted. */
  info(): Record<string, unknown> {
    return { "format-specific": { type: "luks", data: this.volume.info() }, encrypted: true };
  }

  /** Adds or erases key slots (qemu-img amend -o state=active|inactive,...). */
  amend(options: FormatOptions, opts: AmendOptions): Promise<void> {
    const run = this.#amending.then(() => amendLuks(this.volume, options, { unlockSecret: this.#secretId, force: opts.force }));
    this.#amending = run.catch(() => {});
    return run;
  }

  /** Stops the worker threads and forgets the key. */
  async close(): Promise<void> {
    await this.#amending;
    await this.#pool?.close();
    this.#pool = undefined;
  }
}

/** The luks format driver. */
export const luksDriver: BlockDriver = {
  name: "luks",
  kind: "format",
  options: OPEN_OPTIONS,
  strongOptions: ["key-secret"],
  probe: (head) => (isLuks(head) ? 100 : 0),
  // qemu-img amend -o help's list for luks (the CLI takes amend support from it).
  amendOptions: [
    { name: "iter-time", type: "num", help: "Time to spend in PBKDF in milliseconds" },
    { name: "keyslot", type: "num", help: "Select a single keyslot to modify explicitly" },
    { name: "new-secret", type: "str", help: "New secret to set in the matching keyslots. Empty string to erase" },
    { name: "old-secret", type: "str", help: "Select all keyslots that match this password" },
    { name: "state", type: "str", help: "Select new state of affected keyslots (active/inactive)" },
  ],
  async open(ctx): Promise<DriverInstance> {
    checkKnownOptions(ctx.options, OPEN_OPTIONS, "luks");
    const secretId = optString(ctx.options, "key-secret", "luks");
    if (secretId === undefined && !ctx.noIo) throw new BlockError("EINVAL", "Parameter 'key-secret' is required for cipher");
    const file = (await ctx.openChild("file"))!;
    const { LuksVolume, CipherPool } = await loadLuks();
    const volume = await LuksVolume.open(fileCryptoIO(file));
    // Only described (QEMU's BDRV_O_NO_IO): the secret is neither looked up nor tried, as qcrypto_block_open with NO_IO.
    if (secretId === undefined || ctx.noIo) return new LuksInstance(file, volume, { name: ctx.node.name });
    const password = passphrase(secretId, "key-secret");
    let key: Uint8Array;
    try {
      key = await volume.unlock(password);
    } finally {
      password.fill(0);
    }
    try {
      return new LuksInstance(file, volume, { pool: new CipherPool(volume.spec, key), secretId, name: ctx.node.name });
    } finally {
      key.fill(0);
    }
  },
  async create(ctx): Promise<void> {
    const o = ctx.options;
    for (const k of Object.keys(o)) {
      if (!CREATE_OPTIONS.includes(k)) {
        throw new BlockError("EINVAL", `Unknown option '${k}' for format 'luks' (known options: ${CREATE_OPTIONS.join(", ")})`);
      }
    }
    const secretId = optString(o, "key-secret", "luks");
    if (secretId === undefined) throw new BlockError("EINVAL", "Parameter 'key-secret' is required for cipher");
    const prealloc = optString(o, "preallocation", "luks") ?? "off";
    if (!["off", "falloc", "full"].includes(prealloc)) {
      throw new BlockError(
        "EINVAL",
        `Invalid value '${prealloc}' for option 'preallocation' of format 'luks': expected off, falloc or full`,
      );
    }
    const str = (k: string) => optString(o, k, "luks");
    const alg = str("cipher-alg");
    const mode = str("cipher-mode");
    const ivgen = str("ivgen-alg");
    const ivgenHash = str("ivgen-hash-alg");
    const hash = str("hash-alg");
    const spec = {
      alg: alg === undefined ? undefined : parseCipherAlg(alg),
      mode: mode === undefined ? undefined : parseCipherMode(mode),
      ivgen: ivgen === undefined ? undefined : parseIvgenAlg(ivgen),
      ivgenHash: ivgenHash === undefined ? undefined : parseHashAlg(ivgenHash, "ivgen-hash-alg"),
    };
    const iterTime = positiveInt(o, "iter-time", "format 'luks'");
    const password = passphrase(secretId, "key-secret");
    try {
      const file = ctx.file;
      // Reserve the header and payload first (QEMU's initfunc), then write key slot 0 and the header.
      const payload = qemuPayloadOffset(keyLength({ alg: spec.alg ?? "aes-256", mode: spec.mode ?? "xts" })) * LUKS_SECTOR_SIZE;
      await file.truncate(payload + ctx.size, { prealloc: prealloc as "off" | "falloc" | "full" });
      const { LuksVolume } = await loadLuks();
      const { masterKey } = await LuksVolume.create(fileCryptoIO(file), password, {
        spec: Object.fromEntries(Object.entries(spec).filter(([, v]) => v !== undefined)),
        hash: hash === undefined ? undefined : parseHashAlg(hash),
        iterTime,
      });
      masterKey.fill(0);
    } catch (e) {
      throw toBlockError(e, "Cannot create luks image");
    } finally {
      password.fill(0);
    }
  },
};

registerDriver(luksDriver);
