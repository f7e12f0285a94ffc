/**
 * Names of the algorithms a LUKS image (or an encrypted qcow2) is made of, as
 * QEMU 7.2 spells them in its options (`cipher-alg=aes-256`,
 * `cipher-mode=xts`, `ivgen-alg=plain64`, `hash-alg=sha256`) and as the LUKS
 * header stores them (`aes`, `xts-plain64`, `sha256`), and which of them
 * this implementation can run: the ciphers `node:crypto` provides.
 *
 * QEMU 7.2 also offers cast5-128, serpent-128/192/256 and twofish-128/192/256
 * for LUKS; `node:crypto` has none of them, so they are refused with ENOTSUP
 * naming the algorithm, never guessed at.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";

/** Block cipher algorithms that can encrypt data here. */
export type CipherAlg = "aes-128" | "aes-192" | "aes-256";
/** Cipher modes (QEMU's QCryptoCipherMode). */
export type CipherMode = "ecb" | "cbc" | "xts" | "ctr";
/** IV generators (QEMU's QCryptoIVGenAlgorithm). */
export type IvgenAlg = "plain" | "plain64" | "essiv";
/** Hash algorithms (QEMU 7.2's QCryptoHashAlgorithm). */
export type HashAlg = "md5" | "sha1" | "sha224" | "sha256" | "sha384" | "sha512" | "ripemd160";

/** The ciphers this implementation runs. */
/** The LUKS sector size (QEMU 7.2 always writes 512). */
export const LUKS_SECTOR_SIZE = 512;

/** Most PBKDF2 iterations a header may ask for (about a minute of work); more is refused as corrupt. */
export const MAX_PBKDF2_ITERATIONS = 1 << 28;

export const CIPHER_ALGS: readonly CipherAlg[] = ["aes-128", "aes-192", "aes-256"];
/** QEMU 7.2's cipher algorithm names that LUKS maps but `node:crypto` cannot run. */
export const UNAVAILABLE_CIPHER_ALGS: readonly string[] = [
  "cast5-128",
  "serpent-128",
  "serpent-192",
  "serpent-256",
  "twofish-128",
  "twofish-192",
  "twofish-256",
];
/** QEMU 7.2's other cipher names, which its LUKS code does not map to a header name. */
const NON_LUKS_CIPHER_ALGS: readonly string[] = ["des", "3des"];
/** The cipher modes. */
export const CIPHER_MODES: readonly CipherMode[] = ["ecb", "cbc", "xts", "ctr"];
/** The IV generators. */
export const IVGEN_ALGS: readonly IvgenAlg[] = ["plain", "plain64", "essiv"];
/** The hash algorithms. */
export const HASH_ALGS: readonly HashAlg[] = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160"];

/** Digest length in bytes of each hash. */
export const DIGEST_LENGTH: Readonly<Record<HashAlg, number>> = {
  md5: 16,
  sha1: 20,
  sha224: 28,
  sha256: 32,
  sha384: 48,
  sha512: 64,
  ripemd160: 20,
};

/** Key length in bytes of each cipher. */
export const CIPHER_KEY_LENGTH: Readonly<Record<CipherAlg, number>> = { "aes-128": 16, "aes-192": 24, "aes-256": 32 };

/** Everything that decides how sectors are encrypted. */
export interface CipherSpec {
  /** Block cipher. */
  alg: CipherAlg;
  /** Mode. */
  mode: CipherMode;
  /** IV generator. */
  ivgen: IvgenAlg;
  /** Hash of the ESSIV generator (also kept, unused, for plain/plain64 when the header names one). */
  ivgenHash?: HashAlg;
}

/** Bytes of key material a spec needs (XTS takes two keys). */
export function keyLength(spec: Pick<CipherSpec, "alg" | "mode">): number {
  return CIPHER_KEY_LENGTH[spec.alg] * (spec.mode === "xts" ? 2 : 1);
}

/** IV length of a mode: one cipher block, none for ECB. */
export function ivLength(mode: CipherMode): number {
  return mode === "ecb" ? 0 : 16;
}

/**
 * The ESSIV cipher for `alg` and `hash` (QEMU's dm-crypt quirk): AES with a
 * key as long as the hash's digest, so aes-128 with sha256 uses AES-256.
 * Digests that are no AES key length (sha1's 20 bytes) are refused.
 */
export function essivCipher(alg: CipherAlg, hash: HashAlg): CipherAlg {
  const n = DIGEST_LENGTH[hash];
  const found = CIPHER_ALGS.find((a) => CIPHER_KEY_LENGTH[a] === n);
  if (!found) throw new BlockError("ENOTSUP", `No AES cipher with key size ${n} available (ESSIV with hash '${hash}' and cipher '${alg}')`);
  return found;
}

/** Checks a cipher algorithm option value (`cipher-alg`). */
export function parseCipherAlg(value: string, option = "cipher-alg"): CipherAlg {
  if ((CIPHER_ALGS as readonly string[]).includes(value)) return value as CipherAlg;
  if (UNAVAILABLE_CIPHER_ALGS.includes(value)) {
    throw new BlockError(
      "ENOTSUP",
      `Cipher algorithm '${value}' (option '${option}') is not available: node:crypto has no ${value.split("-")[0]} cipher (available: ${
        CIPHER_ALGS.join(", ")
      })`,
    );
  }
  if (NON_LUKS_CIPHER_ALGS.includes(value)) throw new BlockError("ENOTSUP", `Algorithm '${value}' not supported (option '${option}')`);
  throw new BlockError("EINVAL", `Parameter '${option}' does not accept value '${value}'`);
}

/** Checks a cipher mode option value (`cipher-mode`). */
export function parseCipherMode(value: string, option = "cipher-mode"): CipherMode {
  if ((CIPHER_MODES as readonly string[]).includes(value)) return value as CipherMode;
  throw new BlockError("EINVAL", `Parameter '${option}' does not accept value '${value}'`);
}

/** Checks an IV generator option value (`ivgen-alg`). */
export function parseIvgenAlg(value: string, option = "ivgen-alg"): IvgenAlg {
  if ((IVGEN_ALGS as readonly string[]).includes(value)) return value as IvgenAlg;
  throw new BlockError("EINVAL", `Parameter '${option}' does not accept value '${value}'`);
}

/** Checks a hash option value (`hash-alg`, `ivgen-hash-alg`). */
export function parseHashAlg(value: string, option = "hash-alg"): HashAlg {
  if ((HASH_ALGS as readonly string[]).includes(value)) return value as HashAlg;
  throw new BlockError("EINVAL", `Parameter '${option}' does not accept value '${value}'`);
}

/** Key sizes (bytes) QEMU's LUKS code knows for each header cipher name. */
const LUKS_CIPHER_SIZES: Readonly<Record<string, readonly number[]>> = {
  aes: [16, 24, 32],
  cast5: [16],
  serpent: [16, 24, 32],
  twofish: [16, 24, 32],
};

/**
 * QEMU's name for the cipher behind a LUKS header's `cipher-name` and
 * `key-bytes` (`aes` with 64 key bytes in XTS mode is `aes-256`; `twofish`
 * with 16 is `twofish-128`). Combinations QEMU does not know are ENOTSUP
 * naming both fields.
 */
export function cipherNameFromHeader(name: string, mode: CipherMode, keyBytes: number): string {
  const per = mode === "xts" ? keyBytes / 2 : keyBytes;
  if (LUKS_CIPHER_SIZES[name]?.includes(per)) return `${name}-${per * 8}`;
  throw new BlockError("ENOTSUP", `Algorithm ${name} with key size ${per} bytes not supported (LUKS fields cipher-name and key-bytes)`);
}

/** The cipher this implementation runs for a QEMU cipher name, or undefined (cast5, serpent, twofish). */
export function runnableCipher(qemuName: string): CipherAlg | undefined {
  return (CIPHER_ALGS as readonly string[]).includes(qemuName) ? qemuName as CipherAlg : undefined;
}

/** The ENOTSUP error for a cipher QEMU knows but node:crypto cannot run. */
export function unavailableCipher(qemuName: string): BlockError {
  const family = qemuName.split("-")[0];
  return new BlockError(
    "ENOTSUP",
    `Cannot use LUKS cipher '${qemuName}': node:crypto has no ${family} cipher (only aes images can be read or written here)`,
  );
}

/**
 * Splits a header `cipher-mode` string (`cbc-essiv:sha256`) into mode, IV
 * generator and IV hash; names this implementation lacks are ENOTSUP.
 *
 * @example
 * ```ts
 * import { parseModeSpec } from "./algorithms.ts";
 * console.log(parseModeSpec("cbc-essiv:sha256")); // { mode: "cbc", ivgen: "essiv", ivgenHash: "sha256" }
 * ```
 */
export function parseModeSpec(text: string): { mode: CipherMode; ivgen: IvgenAlg; ivgenHash?: HashAlg } {
  const dash = text.indexOf("-");
  if (dash < 0) throw new BlockError("EINVAL", `Unexpected cipher mode string format ${text} (LUKS field cipher-mode)`);
  const modeName = text.slice(0, dash);
  let ivName = text.slice(dash + 1);
  let ivgenHash: HashAlg | undefined;
  const colon = ivName.indexOf(":");
  if (colon >= 0) {
    const h = ivName.slice(colon + 1);
    ivName = ivName.slice(0, colon);
    if (!(HASH_ALGS as readonly string[]).includes(h)) {
      throw new BlockError("ENOTSUP", `Hash algorithm ${h} not supported (LUKS field cipher-mode '${text}')`);
    }
    ivgenHash = h as HashAlg;
  }
  if (!(CIPHER_MODES as readonly string[]).includes(modeName)) {
    throw new BlockError("ENOTSUP", `Cipher mode ${modeName} not supported (LUKS field cipher-mode '${text}')`);
  }
  if (!(IVGEN_ALGS as readonly string[]).includes(ivName)) {
    throw new BlockError("ENOTSUP", `IV generator ${ivName} not supported (LUKS field cipher-mode '${text}')`);
  }
  if (ivName === "essiv" && !ivgenHash) {
    throw new BlockError("EINVAL", `Missing IV generator hash specification (LUKS field cipher-mode '${text}')`);
  }
  return { mode: modeName as CipherMode, ivgen: ivName as IvgenAlg, ivgenHash };
}

/** The header `cipher-mode` string for a spec (`xts-plain64`, `cbc-essiv:sha256`). */
export function modeSpecString(spec: CipherSpec): string {
  return `${spec.mode}-${spec.ivgen}${spec.ivgenHash ? `:${spec.ivgenHash}` : ""}`;
}
