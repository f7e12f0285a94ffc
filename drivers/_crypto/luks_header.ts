/**
 * The LUKS1 header and its eight key slots (cryptsetup's "LUKS1 On-Disk
 * Format Specification" 1.2.3): a 592-byte big-endian structure at the
 * start of the volume, decoded and encoded through named field tables, and
 * validated field by field against the size of the area it lives in before
 * anything it says is trusted.
 *
 * Layout as QEMU 7.2 creates it: the header in the first 4096 bytes, then
 * the key material of slot i at sector `8 + i * slotSectors`, where
 * `slotSectors` is the material (`key-bytes * stripes` bytes) rounded up to
 * whole sectors and then to 8 sectors; the payload follows the last slot.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import {
  type CipherMode,
  cipherNameFromHeader,
  type CipherSpec,
  essivCipher,
  HASH_ALGS,
  type HashAlg,
  type IvgenAlg,
  LUKS_SECTOR_SIZE,
  MAX_PBKDF2_ITERATIONS,
  parseModeSpec,
  runnableCipher,
} from "./algorithms.ts";

/** `LUKS\xba\xbe`. */
export const LUKS_MAGIC: Uint8Array = new Uint8Array([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
/** Bytes of the header with its key slot descriptors. */
export const LUKS_HEADER_SIZE = 592;
/** Number of key slots. */
export const LUKS_NUM_KEYSLOTS = 8;
/** Anti-forensic stripes per key slot (what QEMU and cryptsetup write). */
export const LUKS_STRIPES = 4000;
/** Key slot state: holds a key. */
export const LUKS_KEY_ENABLED = 0x00ac71f3;
/** Key slot state: empty. */
export const LUKS_KEY_DISABLED = 0x0000dead;
/** Where the key material starts (bytes): the header area QEMU reserves. */
export const LUKS_KEY_SLOT_OFFSET = 4096;
/** Largest stripe count accepted when reading (cryptsetup accepts only 4000). */
export const MAX_STRIPES = 65536;
/** Fewest iterations QEMU writes for a key slot or the master key digest. */
export const MIN_ITERATIONS = 1000;

const HEADER_SECTORS = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_SIZE;
const KEYSLOTS_AT = 208;
const KEYSLOT_SIZE = 48;

/** One key slot descriptor. */
export interface LuksKeyslot {
  /** `LUKS_KEY_ENABLED` or `LUKS_KEY_DISABLED` (anything else is corrupt). */
  active: number;
  /** PBKDF2 iterations for the passphrase. */
  iterations: number;
  /** PBKDF2 salt (32 bytes). */
  salt: Uint8Array;
  /** First sector of the key material. */
  keyMaterialOffset: number;
  /** Anti-forensic stripes. */
  stripes: number;
}

/** The LUKS1 header as stored. */
export interface LuksHeader {
  /** Format version (1). */
  version: number;
  /** Cipher name (`aes`). */
  cipherName: string;
  /** Cipher mode with IV generator (`xts-plain64`, `cbc-essiv:sha256`). */
  cipherMode: string;
  /** Hash of PBKDF2 and the AF splitter (`sha256`). */
  hashSpec: string;
  /** First sector of the encrypted payload. */
  payloadOffset: number;
  /** Master key length in bytes. */
  keyBytes: number;
  /** PBKDF2 digest of the master key (20 bytes). */
  mkDigest: Uint8Array;
  /** Salt of that digest (32 bytes). */
  mkDigestSalt: Uint8Array;
  /** Iterations of that digest. */
  mkDigestIter: number;
  /** Volume UUID as text. */
  uuid: string;
  /** The eight key slots. */
  keyslots: LuksKeyslot[];
}

type Kind = "bytes" | "string" | "u16" | "u32";
interface Field {
  /** Name in the specification (used in error messages). */
  name: string;
  /** Property of the decoded object. */
  key: string;
  offset: number;
  size: number;
  kind: Kind;
}

/** The header's fields, in order (offsets as in the specification's figure 1). */
export const HEADER_FIELDS: readonly Field[] = [
  { name: "magic", key: "magic", offset: 0, size: 6, kind: "bytes" },
  { name: "version", key: "version", offset: 6, size: 2, kind: "u16" },
  { name: "cipher-name", key: "cipherName", offset: 8, size: 32, kind: "string" },
  { name: "cipher-mode", key: "cipherMode", offset: 40, size: 32, kind: "string" },
  { name: "hash-spec", key: "hashSpec", offset: 72, size: 32, kind: "string" },
  { name: "payload-offset", key: "payloadOffset", offset: 104, size: 4, kind: "u32" },
  { name: "key-bytes", key: "keyBytes", offset: 108, size: 4, kind: "u32" },
  { name: "mk-digest", key: "mkDigest", offset: 112, size: 20, kind: "bytes" },
  { name: "mk-digest-salt", key: "mkDigestSalt", offset: 132, size: 32, kind: "bytes" },
  { name: "mk-digest-iter", key: "mkDigestIter", offset: 164, size: 4, kind: "u32" },
  { name: "uuid", key: "uuid", offset: 168, size: 40, kind: "string" },
];

/** A key slot descriptor's fields (offsets within the 48-byte descriptor). */
export const KEYSLOT_FIELDS: readonly Field[] = [
  { name: "active", key: "active", offset: 0, size: 4, kind: "u32" },
  { name: "iterations", key: "iterations", offset: 4, size: 4, kind: "u32" },
  { name: "salt", key: "salt", offset: 8, size: 32, kind: "bytes" },
  { name: "key-material-offset", key: "keyMaterialOffset", offset: 40, size: 4, kind: "u32" },
  { name: "stripes", key: "stripes", offset: 44, size: 4, kind: "u32" },
];

function readFields(view: DataView, base: number, fields: readonly Field[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  for (const f of fields) {
    const at = base + f.offset;
    if (f.kind === "u16") out[f.key] = view.getUint16(at);
    else if (f.kind === "u32") out[f.key] = view.getUint32(at);
    else if (f.kind === "bytes") out[f.key] = bytes.slice(at, at + f.size);
    else {
      const raw = bytes.subarray(at, at + f.size);
      const nul = raw.indexOf(0);
      out[f.key] = String.fromCharCode(...raw.subarray(0, nul < 0 ? raw.length : nul));
      if (nul < 0) out[`${f.key}:unterminated`] = true;
    }
  }
  return out;
}

function writeFields(view: DataView, base: number, fields: readonly Field[], src: Record<string, unknown>): void {
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  for (const f of fields) {
    const at = base + f.offset;
    const v = src[f.key];
    if (f.kind === "u16") view.setUint16(at, v as number);
    else if (f.kind === "u32") view.setUint32(at, v as number);
    else if (f.kind === "bytes") bytes.set((v as Uint8Array).subarray(0, f.size), at);
    else {
      const text = new TextEncoder().encode(v as string);
      if (text.length >= f.size) throw new BlockError("EINVAL", `LUKS field ${f.name} '${v}' is too long (at most ${f.size - 1} bytes)`);
      bytes.set(text, at);
    }
  }
}

/** A decoded header plus the strings that lacked their NUL terminator. */
export interface DecodedHeader {
  /** The fields. */
  header: LuksHeader;
  /** Specification names of string fields without a NUL terminator. */
  unterminated: string[];
  /** The magic bytes found. */
  magic: Uint8Array;
}

/** Decodes the first 592 bytes of `bytes` without judging them. */
export function decodeLuksHeader(bytes: Uint8Array): DecodedHeader {
  if (bytes.length < LUKS_HEADER_SIZE) {
    throw new BlockError("EINVAL", `Invalid LUKS header: ${bytes.length} bytes, shorter than the ${LUKS_HEADER_SIZE}-byte header`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, LUKS_HEADER_SIZE);
  const top = readFields(view, 0, HEADER_FIELDS);
  const keyslots: LuksKeyslot[] = [];
  for (let i = 0; i < LUKS_NUM_KEYSLOTS; i++) {
    keyslots.push(readFields(view, KEYSLOTS_AT + i * KEYSLOT_SIZE, KEYSLOT_FIELDS) as unknown as LuksKeyslot);
  }
  const unterminated = HEADER_FIELDS.filter((f) => top[`${f.key}:unterminated`]).map((f) => f.name);
  const header = { ...top, keyslots } as unknown as LuksHeader & { magic?: Uint8Array };
  const magic = header.magic!;
  delete header.magic;
  for (const f of HEADER_FIELDS) delete (header as unknown as Record<string, unknown>)[`${f.key}:unterminated`];
  return { header, unterminated, magic };
}

/**
 * Encodes a header into 592 bytes.
 *
 * @example
 * ```ts
 * import { decodeLuksHeader, encodeLuksHeader, isLuks, qemuKeyslotOffset, qemuPayloadOffset, validateLuksHeader } from "./luks_header.ts";
 * const bytes = encodeLuksHeader({
 *   version: 1, cipherName: "aes", cipherMode: "xts-plain64", hashSpec: "sha256",
 *   payloadOffset: qemuPayloadOffset(64), keyBytes: 64,
 *   mkDigest: new Uint8Array(20), mkDigestSalt: new Uint8Array(32), mkDigestIter: 1000, uuid: crypto.randomUUID(),
 *   keyslots: Array.from({ length: 8 }, (_, i) => ({
 *     active: 0xdead, iterations: 0, salt: new Uint8Array(32), keyMaterialOffset: qemuKeyslotOffset(64, i), stripes: 4000,
 *   })),
 * });
 * console.log(isLuks(bytes), validateLuksHeader(decodeLuksHeader(bytes), 4 << 20).payloadOffset); // true 2068480
 * ```
 */
export function encodeLuksHeader(h: LuksHeader): Uint8Array {
  const out = new Uint8Array(LUKS_HEADER_SIZE);
  const view = new DataView(out.buffer);
  writeFields(view, 0, HEADER_FIELDS, { ...h, magic: LUKS_MAGIC } as unknown as Record<string, unknown>);
  h.keyslots.forEach((s, i) => writeFields(view, KEYSLOTS_AT + i * KEYSLOT_SIZE, KEYSLOT_FIELDS, s as unknown as Record<string, unknown>));
  return out;
}

/** Whether `head` starts with a LUKS1 header (magic and version 1), as QEMU's probe checks. */
export function isLuks(head: Uint8Array): boolean {
  if (head.length < 8) return false;
  for (let i = 0; i < LUKS_MAGIC.length; i++) if (head[i] !== LUKS_MAGIC[i]) return false;
  return ((head[6] << 8) | head[7]) === 1;
}

/** Sectors of key material a slot occupies: `keyBytes * stripes` bytes in sectors, rounded up to 8 sectors (as QEMU and cryptsetup lay it out). */
export function keyslotSectors(keyBytes: number, stripes: number): number {
  const sectors = Math.ceil((keyBytes * stripes) / LUKS_SECTOR_SIZE);
  return Math.ceil(sectors / HEADER_SECTORS) * HEADER_SECTORS;
}

/** What a valid header means. */
export interface LuksLayout {
  /** QEMU's name of the cipher (`aes-256`, also `twofish-128` and others this implementation cannot run). */
  cipherAlg: string;
  /** Cipher mode. */
  mode: CipherMode;
  /** IV generator. */
  ivgen: IvgenAlg;
  /** Hash named in the cipher mode (`essiv:sha256`). */
  ivgenHash?: HashAlg;
  /** How sectors are encrypted; undefined when node:crypto lacks the cipher (the header can still be described). */
  spec?: CipherSpec;
  /** Hash of PBKDF2 and the AF splitter. */
  hash: HashAlg;
  /** Payload start in bytes. */
  payloadOffset: number;
}

function bad(what: string): never {
  throw new BlockError("EINVAL", `Invalid LUKS header: ${what}`);
}

/**
 * Checks every field of `h` against itself and against `areaSize`, the
 * bytes available to the volume (the file size of a standalone image), in
 * bounded time, and returns what the header means. Errors name the field
 * and its value.
 */
export function validateLuksHeader(d: DecodedHeader, areaSize: number): LuksLayout {
  const h = d.header;
  for (let i = 0; i < LUKS_MAGIC.length; i++) {
    if (d.magic[i] !== LUKS_MAGIC[i]) throw new BlockError("EINVAL", "Volume is not in LUKS format (field magic)");
  }
  if (h.version !== 1) throw new BlockError("ENOTSUP", `LUKS version ${h.version} is not supported (field version; only LUKS1 is)`);
  for (const name of ["cipher-name", "cipher-mode", "hash-spec"]) {
    if (d.unterminated.includes(name)) bad(`field ${name} is not NUL terminated`);
  }
  if (!(HASH_ALGS as readonly string[]).includes(h.hashSpec)) {
    throw new BlockError("ENOTSUP", `Hash algorithm ${h.hashSpec} not supported (LUKS field hash-spec)`);
  }
  if (h.keyBytes < 16 || h.keyBytes > 64) bad(`field key-bytes is ${h.keyBytes}, expected 16 to 64`);
  const m = parseModeSpec(h.cipherMode);
  const cipherAlg = cipherNameFromHeader(h.cipherName, m.mode, h.keyBytes);
  const alg = runnableCipher(cipherAlg);
  if (alg && m.ivgen === "essiv") essivCipher(alg, m.ivgenHash!);
  if (h.mkDigestIter < 1 || h.mkDigestIter > MAX_PBKDF2_ITERATIONS) {
    bad(`field mk-digest-iter is ${h.mkDigestIter}, expected 1 to ${MAX_PBKDF2_ITERATIONS}`);
  }
  const payload = h.payloadOffset * LUKS_SECTOR_SIZE;
  if (h.payloadOffset < HEADER_SECTORS) {
    bad(`field payload-offset is ${h.payloadOffset} sectors: the payload overlaps the ${LUKS_KEY_SLOT_OFFSET}-byte header area`);
  }
  if (payload > areaSize) {
    bad(`field payload-offset is ${h.payloadOffset} sectors (${payload} bytes), past the end of the ${areaSize}-byte image`);
  }
  const minOffset = Math.ceil(LUKS_HEADER_SIZE / LUKS_SECTOR_SIZE);
  const extent: [number, number][] = [];
  h.keyslots.forEach((s, i) => {
    const at = `key slot ${i}`;
    if (s.active !== LUKS_KEY_ENABLED && s.active !== LUKS_KEY_DISABLED) {
      bad(`${at} field active is 0x${s.active.toString(16)} (expected 0x00ac71f3 or 0x0000dead)`);
    }
    if (s.stripes < 1 || s.stripes > MAX_STRIPES) bad(`${at} field stripes is ${s.stripes}, expected 1 to ${MAX_STRIPES}`);
    if (s.active === LUKS_KEY_ENABLED && (s.iterations < 1 || s.iterations > MAX_PBKDF2_ITERATIONS)) {
      bad(`${at} field iterations is ${s.iterations}, expected 1 to ${MAX_PBKDF2_ITERATIONS}`);
    }
    const start = s.keyMaterialOffset;
    const len = keyslotSectors(h.keyBytes, s.stripes);
    if (start < minOffset) bad(`${at} field key-material-offset is ${start} sectors: the key material overlaps the LUKS header`);
    if (start + len > h.payloadOffset) {
      bad(
        `${at} field key-material-offset is ${start} sectors: its ${len} sectors of key material overlap the payload at sector ${h.payloadOffset}`,
      );
    }
    extent.push([start, len]);
  });
  for (let i = 0; i < extent.length; i++) {
    for (let j = i + 1; j < extent.length; j++) {
      const [a, al] = extent[i];
      const [b, bl] = extent[j];
      if (a + al > b && b + bl > a) {
        bad(`the key material of key slots ${i} and ${j} overlaps (sectors ${a} and ${b}, ${al} and ${bl} long)`);
      }
    }
  }
  return {
    cipherAlg,
    mode: m.mode,
    ivgen: m.ivgen,
    ivgenHash: m.ivgenHash,
    spec: alg ? { alg, mode: m.mode, ivgen: m.ivgen, ivgenHash: m.ivgenHash } : undefined,
    hash: h.hashSpec as HashAlg,
    payloadOffset: payload,
  };
}

/** Key slot i's key material offset (sectors) in QEMU's layout for `keyBytes`-byte keys. */
export function qemuKeyslotOffset(keyBytes: number, i: number): number {
  return HEADER_SECTORS + i * keyslotSectors(keyBytes, LUKS_STRIPES);
}

/** The payload offset (sectors) in QEMU's layout for `keyBytes`-byte keys. */
export function qemuPayloadOffset(keyBytes: number): number {
  return qemuKeyslotOffset(keyBytes, LUKS_NUM_KEYSLOTS);
}
