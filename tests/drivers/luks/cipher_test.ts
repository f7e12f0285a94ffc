/**
 * The crypto layer's primitives: XTS against the IEEE 1619 test vectors,
 * CBC, CTR and ECB against `node:crypto`'s own modes run one sector at a
 * time (the slow, obviously correct way), ESSIV and plain IVs, PBKDF2
 * against RFC vectors, and the AF splitter.
 *
 * XTS vectors: IEEE 1619-2007 annex B vectors 1, 2, 4 and 10 (ciphertexts
 * re-derived with OpenSSL through Python's `cryptography`).
 */

import assert from "node:assert/strict";
import nodeCrypto from "node:crypto";
import { afMerge, afSplit } from "../../../drivers/_crypto/afsplit.ts";
import type { CipherAlg, CipherMode, CipherSpec, HashAlg, IvgenAlg } from "../../../drivers/_crypto/algorithms.ts";
import { pbkdf2 } from "../../../drivers/_crypto/pbkdf.ts";
import { SectorCipher } from "../../../drivers/_crypto/sector_cipher.ts";

const hex = (s: string) => new Uint8Array(s.match(/../g)!.map((b) => parseInt(b, 16)));
const toHex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");

function xtsVector(key1: string, key2: string, sector: number, pt: Uint8Array, unit: number): Uint8Array {
  const c = new SectorCipher({ alg: key1.length === 32 ? "aes-128" : "aes-256", mode: "xts", ivgen: "plain64" }, hex(key1 + key2), {
    sectorSize: unit,
  });
  const data = pt.slice();
  c.encrypt(data, sector);
  const back = data.slice();
  c.decrypt(back, sector);
  assert.deepEqual(back, pt, "decrypt(encrypt(x)) = x");
  return data;
}

Deno.test("SectorCipher XTS matches IEEE 1619 vector 1 (zero keys, 32-byte unit)", () => {
  const c = xtsVector("0".repeat(32), "0".repeat(32), 0, new Uint8Array(32), 32);
  assert.equal(toHex(c), "917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e");
});

Deno.test("SectorCipher XTS matches IEEE 1619 vector 2 (data unit 0x3333333333)", () => {
  const c = xtsVector("11".repeat(16), "22".repeat(16), 0x3333333333, new Uint8Array(32).fill(0x44), 32);
  assert.equal(toHex(c), "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0");
});

const RAMP = new Uint8Array(512).map((_, i) => i & 0xff);

Deno.test("SectorCipher XTS-AES-128 matches IEEE 1619 vector 4 (one 512-byte sector)", () => {
  const c = xtsVector("27182818284590452353602874713526", "31415926535897932384626433832795", 0, RAMP, 512);
  assert.equal(toHex(c.subarray(0, 32)), "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c");
  assert.equal(toHex(c.subarray(480)), "eb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568");
});

Deno.test("SectorCipher XTS-AES-256 matches IEEE 1619 vector 10 (sector 0xff)", () => {
  const k1 = "2718281828459045235360287471352662497757247093699959574966967627";
  const k2 = "3141592653589793238462643383279502884197169399375105820974944592";
  const c = xtsVector(k1, k2, 0xff, RAMP, 512);
  assert.equal(toHex(c.subarray(0, 32)), "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b");
  assert.equal(toHex(c.subarray(480)), "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151");
});

/** The IV of one sector, computed independently of SectorCipher. */
function referenceIv(spec: CipherSpec, key: Uint8Array, sector: number): Uint8Array {
  const iv = new Uint8Array(16);
  const v = new DataView(iv.buffer);
  v.setUint32(0, sector % 2 ** 32, true);
  if (spec.ivgen !== "plain") v.setUint32(4, Math.floor(sector / 2 ** 32), true);
  if (spec.ivgen !== "essiv") return iv;
  const salt = nodeCrypto.createHash(spec.ivgenHash ?? "sha256").update(key).digest();
  const e = nodeCrypto.createCipheriv(`aes-${salt.length * 8}-ecb`, salt, null).setAutoPadding(false);
  return new Uint8Array(e.update(iv));
}

/** One sector with node:crypto's native mode, one cipher object per sector (the slow reference). */
function referenceSector(spec: CipherSpec, key: Uint8Array, sector: number, data: Uint8Array, enc: boolean): Uint8Array {
  if (spec.mode === "ecb") {
    const c = (enc ? nodeCrypto.createCipheriv : nodeCrypto.createDecipheriv)(`${spec.alg}-ecb`, key, null).setAutoPadding(false);
    return new Uint8Array(c.update(data));
  }
  const iv = referenceIv(spec, key, sector);
  if (spec.mode === "ctr") return new Uint8Array(nodeCrypto.createCipheriv(`${spec.alg}-ctr`, key, iv).update(data));
  const c = (enc ? nodeCrypto.createCipheriv : nodeCrypto.createDecipheriv)(`${spec.alg}-cbc`, key, iv).setAutoPadding(false);
  return new Uint8Array(c.update(data));
}

const REFERENCE_SPECS: CipherSpec[] = [];
for (const mode of ["cbc", "ctr", "ecb"] as CipherMode[]) {
  for (const alg of ["aes-128", "aes-256"] as CipherAlg[]) {
    for (const ivgen of ["plain", "plain64", "essiv"] as IvgenAlg[]) {
      if (mode === "ecb" && ivgen !== "plain64") continue;
      REFERENCE_SPECS.push({ alg, mode, ivgen, ivgenHash: ivgen === "essiv" ? "sha256" : undefined });
    }
  }
}
REFERENCE_SPECS.push({ alg: "aes-128", mode: "cbc", ivgen: "essiv", ivgenHash: "md5" });

for (const spec of REFERENCE_SPECS) {
  const name = `${spec.alg}-${spec.mode}-${spec.ivgen}${spec.ivgenHash ? ":" + spec.ivgenHash : ""}`;
  Deno.test(`SectorCipher ${name} equals node:crypto's mode run one sector at a time`, () => {
    const key = nodeCrypto.randomBytes(spec.alg === "aes-128" ? 16 : 32);
    // Sector numbers past 2^32 check the plain (32-bit) and plain64 IVs; 40 sectors cross the lane threshold.
    for (const [first, n] of [[5, 3], [2 ** 32 - 2, 4], [7, 40]]) {
      const plain = new Uint8Array(nodeCrypto.randomBytes(n * 512));
      const ours = plain.slice();
      const c = new SectorCipher(spec, key);
      c.encrypt(ours, first);
      for (let s = 0; s < n; s++) {
        const want = referenceSector(spec, key, first + s, plain.subarray(s * 512, (s + 1) * 512), true);
        assert.deepEqual(ours.subarray(s * 512, (s + 1) * 512), want, `sector ${first + s} encrypts as node:crypto's ${spec.mode}`);
      }
      c.decrypt(ours, first);
      assert.deepEqual(ours, plain);
    }
  });
}

Deno.test("SectorCipher aes-192-cbc (no native cipher in Deno) round-trips and chains like CBC", () => {
  const key = nodeCrypto.randomBytes(24);
  const c = new SectorCipher({ alg: "aes-192", mode: "cbc", ivgen: "plain64" }, key);
  const plain = new Uint8Array(nodeCrypto.randomBytes(3 * 512));
  const data = plain.slice();
  c.encrypt(data, 9);
  // CBC by hand from single ECB blocks.
  const ecb = nodeCrypto.createCipheriv("aes-192-ecb", key, null).setAutoPadding(false);
  for (let s = 0; s < 3; s++) {
    let prev = referenceIv({ alg: "aes-192", mode: "cbc", ivgen: "plain64" }, key, 9 + s);
    for (let j = 0; j < 32; j++) {
      const o = s * 512 + j * 16;
      const x = plain.slice(o, o + 16).map((b, i) => b ^ prev[i]);
      prev = new Uint8Array(ecb.update(x));
      assert.deepEqual(data.subarray(o, o + 16), prev);
    }
  }
  c.decrypt(data, 9);
  assert.deepEqual(data, plain);
});

Deno.test("SectorCipher works on buffers that are not 4-byte aligned and across 64 KiB chunks", () => {
  const spec: CipherSpec = { alg: "aes-256", mode: "xts", ivgen: "plain64" };
  const key = nodeCrypto.randomBytes(64);
  const backing = new Uint8Array(300 * 512 + 1);
  const data = backing.subarray(1);
  nodeCrypto.randomFillSync(data);
  const plain = data.slice();
  const c = new SectorCipher(spec, key);
  c.encrypt(data, 77);
  const aligned = plain.slice();
  new SectorCipher(spec, key).encrypt(aligned, 77);
  assert.deepEqual(data, aligned);
  // A sector encrypts the same alone as inside a batch.
  const one = plain.slice(200 * 512, 201 * 512);
  c.encrypt(one, 277);
  assert.deepEqual(one, aligned.subarray(200 * 512, 201 * 512));
  c.decrypt(data, 77);
  assert.deepEqual(data, plain);
});

Deno.test("SectorCipher refuses a wrong key length, partial sectors and use after destroy", () => {
  const spec: CipherSpec = { alg: "aes-256", mode: "xts", ivgen: "plain64" };
  assert.throws(() => new SectorCipher(spec, new Uint8Array(32)), /Invalid key length 32 for aes-256-xts: expected 64 bytes/);
  const c = new SectorCipher(spec, new Uint8Array(64).fill(1));
  assert.throws(() => c.encrypt(new Uint8Array(100), 0), /not a multiple of the 512-byte sector/);
  c.destroy();
  assert.throws(() => c.encrypt(new Uint8Array(512), 0), /destroyed/);
});

Deno.test("pbkdf2() matches the RFC 6070 (SHA-1) and RFC 7914 (SHA-256) vectors", async () => {
  const te = new TextEncoder();
  assert.equal(toHex(await pbkdf2("sha1", te.encode("password"), te.encode("salt"), 2, 20)), "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957");
  assert.equal(
    toHex(await pbkdf2("sha256", te.encode("passwd"), te.encode("salt"), 1, 64)),
    "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783",
  );
});

for (const hash of ["md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160"] as HashAlg[]) {
  Deno.test(`pbkdf2() with ${hash} equals node:crypto's pbkdf2Sync (empty passphrase too)`, async () => {
    const salt = nodeCrypto.randomBytes(32);
    for (const pw of [new Uint8Array(0), new TextEncoder().encode("hunter2")]) {
      for (const len of [20, 64]) {
        const want = new Uint8Array(nodeCrypto.pbkdf2Sync(pw, salt, 1000, len, hash));
        assert.deepEqual(await pbkdf2(hash, pw, salt, 1000, len), want);
      }
    }
  });
}

Deno.test("pbkdf2() refuses 0 iterations", async () => {
  await assert.rejects(pbkdf2("sha256", new Uint8Array(1), new Uint8Array(32), 0, 32), /Invalid PBKDF2 iteration count 0/);
});

Deno.test("afSplit() output merges back with afMerge(); any changed stripe changes the key", () => {
  const key = new Uint8Array(nodeCrypto.randomBytes(64));
  const split = afSplit("sha256", key, 4000);
  assert.equal(split.length, 64 * 4000);
  assert.deepEqual(afMerge("sha256", split, 64, 4000), key);
  split[12345] ^= 1;
  assert.notDeepEqual(afMerge("sha256", split, 64, 4000), key);
  // sha1's 20-byte digest does not divide 64: the last diffusion block is partial.
  const s1 = afSplit("sha1", key, 3);
  assert.deepEqual(afMerge("sha1", s1, 64, 3), key);
});

Deno.test("sha256Small() and sha1Small() equal node:crypto's digests for every input length up to one block", async () => {
  const { sha1Small, sha256Small, SMALL_MAX } = await import("../../../drivers/_crypto/_sha_small.ts");
  for (let n = 0; n <= SMALL_MAX; n++) {
    for (let round = 0; round < 4; round++) {
      const data = new Uint8Array(nodeCrypto.randomBytes(n));
      assert.equal(toHex(sha256Small(data)), nodeCrypto.createHash("sha256").update(data).digest("hex"), `sha256 of ${n} bytes`);
      assert.equal(toHex(sha1Small(data)), nodeCrypto.createHash("sha1").update(data).digest("hex"), `sha1 of ${n} bytes`);
    }
  }
});
