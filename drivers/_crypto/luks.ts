/**
 * A LUKS1 volume over a small I/O interface ({@linkcode CryptoIO}: read and
 * write at an offset of the area holding the header and key material), so
 * the same code serves a standalone `luks` image (the area is the file) and,
 * later, a qcow2 image that keeps its LUKS header in clusters.
 *
 * What it does is what QEMU's `crypto/block-luks.c` does: create a header
 * and key slot 0, unlock the master key from any active slot, add a key to a
 * slot and erase slots (qemu-img amend), and report the header as
 * `qemu-img info` does. Passphrases and keys are Uint8Arrays the caller owns;
 * every buffer made here that holds key material is zeroed before it is
 * dropped, and nothing here logs.
 *
 * @module
 */

import nodeCrypto from "node:crypto";
import { BlockError } from "../../core/errors.ts";
import { afMerge, afSplit } from "./afsplit.ts";
import { type CipherSpec, essivCipher, type HashAlg, keyLength, modeSpecString, unavailableCipher } from "./algorithms.ts";
import {
  decodeLuksHeader,
  encodeLuksHeader,
  LUKS_HEADER_SIZE,
  LUKS_KEY_DISABLED,
  LUKS_KEY_ENABLED,
  LUKS_MAGIC,
  LUKS_NUM_KEYSLOTS,
  LUKS_STRIPES,
  type LuksHeader,
  type LuksLayout,
  MIN_ITERATIONS,
  qemuKeyslotOffset,
  qemuPayloadOffset,
  validateLuksHeader,
} from "./luks_header.ts";
import { iterationsFor, pbkdf2 } from "./pbkdf.ts";
import { LUKS_SECTOR_SIZE, SectorCipher } from "./sector_cipher.ts";

/** Where a LUKS header and its key material live: offsets are relative to the area. */
export interface CryptoIO {
  /** Bytes in the area (the file size of a standalone image). */
  size(): number;
  /** Reads `length` bytes at `offset`. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /** Writes `data` at `offset`. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Makes the writes so far durable. */
  flush(): Promise<void>;
}

/** Options for {@linkcode LuksVolume.create} (QEMU's luks creation options). */
export interface LuksCreateOptions {
  /** Cipher spec (default aes-256, xts, plain64). */
  spec?: Partial<CipherSpec>;
  /** Hash of PBKDF2 and the AF splitter (default sha256). */
  hash?: HashAlg;
  /** Milliseconds of PBKDF2 per key slot (default 2000). */
  iterTime?: number;
}

/** What `qemu-img amend` can do to key slots. */
export interface LuksAmendRequest {
  /** Make slots active (add a passphrase) or inactive (erase). */
  state: "active" | "inactive";
  /** The slot to change; default the first free one (active) or those matching `oldPassword` (inactive). */
  keyslot?: number;
  /** Passphrase that unlocks the image (active: to recover the master key). */
  unlockPassword?: Uint8Array;
  /** Passphrase for the new slot (active). */
  newPassword?: Uint8Array;
  /** Erase the slots holding this passphrase (inactive). */
  oldPassword?: Uint8Array;
  /** Milliseconds of PBKDF2 for the new slot (default 2000). */
  iterTime?: number;
  /** Allow overwriting an active slot and erasing the last one. */
  force?: boolean;
  /** The options were given with a prefix (`encrypt.`), for messages. */
  prefix?: string;
}

/** QEMU's default `iter-time`. */
export const DEFAULT_ITER_TIME = 2000;
/** How many times an erased slot's key material is overwritten with random bytes (QEMU's count). */
const ERASE_PASSES = 40;

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function random(n: number): Uint8Array {
  return new Uint8Array(nodeCrypto.randomBytes(n));
}

/**
 * An open LUKS1 header with the operations on its key slots.
 *
 * @example
 * ```ts
 * import { LuksVolume } from "./luks.ts";
 * const area = new Uint8Array(4 << 20);
 * const io = {
 *   size: () => area.length,
 *   read: (o: number, n: number) => Promise.resolve(area.slice(o, o + n)),
 *   write: (o: number, d: Uint8Array) => Promise.resolve(void area.set(d, o)),
 *   flush: () => Promise.resolve(),
 * };
 * const pass = new TextEncoder().encode("hunter2");
 * const { volume, masterKey } = await LuksVolume.create(io, pass, { iterTime: 10 });
 * const again = await (await LuksVolume.open(io)).unlock(pass);
 * console.log(volume.payloadOffset, again.length, again[0] === masterKey[0]); // 2068480 64 true
 * ```
 */
export class LuksVolume {
  /** The header as stored (kept up to date by key slot changes). */
  readonly header: LuksHeader;
  /** What the header means. */
  readonly layout: LuksLayout;
  #io: CryptoIO;

  private constructor(io: CryptoIO, header: LuksHeader, layout: LuksLayout) {
    this.#io = io;
    this.header = header;
    this.layout = layout;
  }

  /** Reads and validates the header (no passphrase needed). */
  static async open(io: CryptoIO): Promise<LuksVolume> {
    const size = io.size();
    if (size < LUKS_HEADER_SIZE) {
      throw new BlockError("EINVAL", `Invalid LUKS header: the image is ${size} bytes, shorter than the ${LUKS_HEADER_SIZE}-byte header`);
    }
    const d = decodeLuksHeader(await io.read(0, LUKS_HEADER_SIZE));
    return new LuksVolume(io, d.header, validateLuksHeader(d, size));
  }

  /**
   * Writes a new header with a random master key in slot 0 (protected by
   * `password`) and returns the volume and the master key (zero it after use).
   * The area must already be large enough for the payload offset.
   */
  static async create(
    io: CryptoIO,
    password: Uint8Array,
    opts: LuksCreateOptions = {},
  ): Promise<{ volume: LuksVolume; masterKey: Uint8Array }> {
    const ivgen = opts.spec?.ivgen ?? "plain64";
    const spec: CipherSpec = {
      alg: opts.spec?.alg ?? "aes-256",
      mode: opts.spec?.mode ?? "xts",
      ivgen,
      ivgenHash: opts.spec?.ivgenHash ?? (ivgen === "essiv" ? "sha256" : undefined),
    };
    if (spec.ivgen === "essiv") essivCipher(spec.alg, spec.ivgenHash!);
    const hash = opts.hash ?? "sha256";
    const iterTime = opts.iterTime ?? DEFAULT_ITER_TIME;
    const keyBytes = keyLength(spec);
    const masterKey = random(keyBytes);
    try {
      const mkDigestSalt = random(32);
      const mkDigestIter = await iterationsFor(hash, 20, iterTime, { divisor: 8, min: MIN_ITERATIONS });
      const mkDigest = await pbkdf2(hash, masterKey, mkDigestSalt, mkDigestIter, 20);
      const header: LuksHeader = {
        version: 1,
        cipherName: "aes",
        cipherMode: modeSpecString(spec),
        hashSpec: hash,
        payloadOffset: qemuPayloadOffset(keyBytes),
        keyBytes,
        mkDigest,
        mkDigestSalt,
        mkDigestIter,
        uuid: crypto.randomUUID(),
        keyslots: Array.from({ length: LUKS_NUM_KEYSLOTS }, (_, i) => ({
          active: LUKS_KEY_DISABLED,
          iterations: 0,
          salt: new Uint8Array(32),
          keyMaterialOffset: qemuKeyslotOffset(keyBytes, i),
          stripes: LUKS_STRIPES,
        })),
      };
      const layout = validateLuksHeader({ header, unterminated: [], magic: LUKS_MAGIC }, io.size());
      const volume = new LuksVolume(io, header, layout);
      await volume.storeKey(0, password, masterKey, iterTime);
      return { volume, masterKey };
    } catch (e) {
      masterKey.fill(0);
      throw e;
    }
  }

  /** Payload start in bytes. */
  get payloadOffset(): number {
    return this.layout.payloadOffset;
  }

  /** Whether slot `i` holds a key. */
  isActive(i: number): boolean {
    return this.header.keyslots[i].active === LUKS_KEY_ENABLED;
  }

  /** Number of active slots. */
  get activeSlots(): number {
    return this.header.keyslots.filter((s) => s.active === LUKS_KEY_ENABLED).length;
  }

  /** How sectors are encrypted; ENOTSUP for a cipher node:crypto lacks (cast5, serpent, twofish). */
  get spec(): CipherSpec {
    if (!this.layout.spec) throw unavailableCipher(this.layout.cipherAlg);
    return this.layout.spec;
  }

  /** A cipher for the payload (or key material) with `key`. */
  cipher(key: Uint8Array): SectorCipher {
    return new SectorCipher(this.spec, key);
  }

  /** The master key if `password` opens slot `i`, else undefined (also for an inactive slot). */
  async loadKey(i: number, password: Uint8Array): Promise<Uint8Array | undefined> {
    const slot = this.header.keyslots[i];
    if (slot.active !== LUKS_KEY_ENABLED) return undefined;
    const n = this.header.keyBytes;
    const slotKey = await pbkdf2(this.layout.hash, password, slot.salt, slot.iterations, n);
    const padded = Math.ceil((n * slot.stripes) / LUKS_SECTOR_SIZE) * LUKS_SECTOR_SIZE;
    const material = await this.#io.read(slot.keyMaterialOffset * LUKS_SECTOR_SIZE, padded);
    let masterKey: Uint8Array | undefined;
    try {
      const c = this.cipher(slotKey);
      c.decrypt(material, 0);
      c.destroy();
      masterKey = afMerge(this.layout.hash, material, n, slot.stripes);
      const digest = await pbkdf2(this.layout.hash, masterKey, this.header.mkDigestSalt, this.header.mkDigestIter, 20);
      if (equal(digest, this.header.mkDigest)) return masterKey;
      masterKey.fill(0);
      return undefined;
    } catch (e) {
      masterKey?.fill(0);
      throw e;
    } finally {
      slotKey.fill(0);
      material.fill(0);
    }
  }

  /**
   * The master key from the first slot `password` opens (slots are tried
   * concurrently). EACCES "Invalid password, cannot unlock any keyslot" when
   * none does.
   */
  async unlock(password: Uint8Array): Promise<Uint8Array> {
    void this.spec; // a cipher node:crypto lacks is refused before any PBKDF2
    const tries = this.header.keyslots.map((_, i) => this.loadKey(i, password));
    const keys = await Promise.all(tries);
    const found = keys.find((k) => k !== undefined);
    for (const k of keys) if (k && k !== found) k.fill(0);
    if (!found) throw new BlockError("EACCES", "Invalid password, cannot unlock any keyslot");
    return found;
  }

  /** Stores `masterKey` in slot `i` under `password`: key material first, then the header. */
  async storeKey(i: number, password: Uint8Array, masterKey: Uint8Array, iterTime: number): Promise<void> {
    const slot = this.header.keyslots[i];
    const n = this.header.keyBytes;
    const salt = random(32);
    const iterations = await iterationsFor(this.layout.hash, n, iterTime, { min: MIN_ITERATIONS });
    const slotKey = await pbkdf2(this.layout.hash, password, salt, iterations, n);
    const split = afSplit(this.layout.hash, masterKey, slot.stripes);
    const padded = new Uint8Array(Math.ceil(split.length / LUKS_SECTOR_SIZE) * LUKS_SECTOR_SIZE);
    padded.set(split);
    split.fill(0);
    try {
      const c = this.cipher(slotKey);
      c.encrypt(padded, 0);
      c.destroy();
      await this.#io.write(slot.keyMaterialOffset * LUKS_SECTOR_SIZE, padded);
      await this.#io.flush();
    } finally {
      slotKey.fill(0);
      padded.fill(0);
    }
    this.header.keyslots[i] = { ...slot, active: LUKS_KEY_ENABLED, iterations, salt };
    await this.#writeHeader();
  }

  /** Disables slot `i` (header first), then overwrites its key material with random bytes, as QEMU does. */
  async eraseKey(i: number): Promise<void> {
    const slot = this.header.keyslots[i];
    this.header.keyslots[i] = { ...slot, active: LUKS_KEY_DISABLED, iterations: 0, salt: new Uint8Array(32) };
    await this.#writeHeader();
    const len = Math.ceil((this.header.keyBytes * slot.stripes) / LUKS_SECTOR_SIZE) * LUKS_SECTOR_SIZE;
    for (let pass = 0; pass < ERASE_PASSES; pass++) await this.#io.write(slot.keyMaterialOffset * LUKS_SECTOR_SIZE, random(len));
    await this.#io.flush();
  }

  async #writeHeader(): Promise<void> {
    await this.#io.write(0, encodeLuksHeader(this.header));
    await this.#io.flush();
  }

  /** Adds or erases key slots as `qemu-img amend -o state=...` does for luks. */
  async amend(r: LuksAmendRequest): Promise<void> {
    if (r.state === "active") await this.#amendAdd(r);
    else await this.#amendErase(r);
  }

  #slotArg(r: LuksAmendRequest): number | undefined {
    if (r.keyslot === undefined) return undefined;
    if (!Number.isInteger(r.keyslot) || r.keyslot < 0 || r.keyslot >= LUKS_NUM_KEYSLOTS) {
      throw new BlockError("EINVAL", `Invalid keyslot ${r.keyslot} specified, must be between 0 and ${LUKS_NUM_KEYSLOTS - 1}`);
    }
    return r.keyslot;
  }

  async #amendAdd(r: LuksAmendRequest): Promise<void> {
    const p = r.prefix ?? "";
    if (!r.newPassword) throw new BlockError("EINVAL", `'${p}new-secret' is required to activate a keyslot`);
    if (r.oldPassword) throw new BlockError("EINVAL", `'${p}old-secret' must not be given when activating keyslots`);
    let slot = this.#slotArg(r);
    if (slot === undefined) {
      slot = this.header.keyslots.findIndex((s) => s.active !== LUKS_KEY_ENABLED);
      if (slot < 0) throw new BlockError("ENOSPC", "Can't add a keyslot - all keyslots are in use");
    }
    if (!r.force && this.isActive(slot)) {
      throw new BlockError("EBUSY", `Refusing to overwrite active keyslot ${slot} - please erase it first`);
    }
    if (!r.unlockPassword) throw new BlockError("EINVAL", `Parameter '${p}key-secret' is required to add a keyslot`);
    let masterKey: Uint8Array;
    try {
      masterKey = await this.unlock(r.unlockPassword);
    } catch (e) {
      if (e instanceof BlockError) throw new BlockError(e.code, `${e.message}: failed to retrieve the master key`);
      throw e;
    }
    try {
      await this.storeKey(slot, r.newPassword, masterKey, r.iterTime ?? DEFAULT_ITER_TIME);
    } finally {
      masterKey.fill(0);
    }
  }

  async #amendErase(r: LuksAmendRequest): Promise<void> {
    const p = r.prefix ?? "";
    if (r.newPassword) throw new BlockError("EINVAL", `'${p}new-secret' must not be given when erasing keyslots`);
    if (r.iterTime !== undefined) throw new BlockError("EINVAL", `'${p}iter-time' must not be given when erasing keyslots`);
    const slot = this.#slotArg(r);
    if (slot !== undefined) {
      if (r.oldPassword) {
        const k = await this.loadKey(slot, r.oldPassword);
        if (!k) throw new BlockError("EACCES", `Given keyslot ${slot} doesn't contain the given old password for erase operation`);
        k.fill(0);
      }
      if (!r.force && !this.isActive(slot)) throw new BlockError("EINVAL", `Given keyslot ${slot} is already erased (inactive) `);
      if (!r.force && this.activeSlots === 1) {
        throw new BlockError(
          "EBUSY",
          `Attempt to erase the only active keyslot ${slot} which will erase all the data in the image irreversibly - refusing operation`,
        );
      }
      await this.eraseKey(slot);
      return;
    }
    if (!r.oldPassword) {
      throw new BlockError(
        "EINVAL",
        "To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given",
      );
    }
    const keys = await Promise.all(this.header.keyslots.map((_, i) => this.loadKey(i, r.oldPassword!)));
    const matching = keys.flatMap((k, i) => (k ? [i] : []));
    for (const k of keys) k?.fill(0);
    if (!matching.length) throw new BlockError("EACCES", "No keyslots match given (old) password for erase operation");
    if (!r.force && matching.length === this.activeSlots) {
      throw new BlockError(
        "EBUSY",
        "All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation",
      );
    }
    for (const i of matching) await this.eraseKey(i);
  }

  /** The header as `qemu-img info` prints it (format-specific data, QEMU's key order). */
  info(): Record<string, unknown> {
    const h = this.header;
    const s = this.layout;
    const out: Record<string, unknown> = { "ivgen-alg": s.ivgen, "hash-alg": s.hash, "cipher-alg": s.cipherAlg, uuid: h.uuid };
    if (s.ivgen === "essiv") out["ivgen-hash-alg"] = s.ivgenHash;
    out["cipher-mode"] = s.mode;
    out.slots = h.keyslots.map((k) =>
      k.active === LUKS_KEY_ENABLED
        ? { active: true, iters: k.iterations, "key-offset": k.keyMaterialOffset * LUKS_SECTOR_SIZE, stripes: k.stripes }
        : { active: false, "key-offset": k.keyMaterialOffset * LUKS_SECTOR_SIZE }
    );
    out["payload-offset"] = this.payloadOffset;
    out["master-key-iters"] = h.mkDigestIter;
    return out;
  }
}
