/**
 * The LUKS1 header codec and its validation: a corrupt header is refused by
 * field name, before any key material is read or any large buffer made, and
 * random corruption never escapes as anything but a BlockError.
 */

import assert from "node:assert/strict";
import { BlockError } from "../../../core/errors.ts";
import { LuksVolume } from "../../../drivers/_crypto/luks.ts";
import {
  decodeLuksHeader,
  encodeLuksHeader,
  isLuks,
  LUKS_HEADER_SIZE,
  LUKS_KEY_ENABLED,
  type LuksHeader,
  qemuKeyslotOffset,
  qemuPayloadOffset,
  validateLuksHeader,
} from "../../../drivers/_crypto/luks_header.ts";

const AREA = 4 << 20;

/** A header as QEMU lays out aes-256-xts-plain64 / sha256 (slot 0 active). */
function qemuLikeHeader(): LuksHeader {
  return {
    version: 1,
    cipherName: "aes",
    cipherMode: "xts-plain64",
    hashSpec: "sha256",
    payloadOffset: qemuPayloadOffset(64),
    keyBytes: 64,
    mkDigest: new Uint8Array(20).fill(1),
    mkDigestSalt: new Uint8Array(32).fill(2),
    mkDigestIter: 1000,
    uuid: "280562ee-a192-4f68-91f6-78c198d01b3c",
    keyslots: Array.from({ length: 8 }, (_, i) => ({
      active: i === 0 ? LUKS_KEY_ENABLED : 0xdead,
      iterations: i === 0 ? 5000 : 0,
      salt: new Uint8Array(32).fill(i),
      keyMaterialOffset: qemuKeyslotOffset(64, i),
      stripes: 4000,
    })),
  };
}

function validate(bytes: Uint8Array, area = AREA) {
  return validateLuksHeader(decodeLuksHeader(bytes), area);
}

/** Encodes a header changed by `edit`, or patches raw bytes. */
function corrupt(edit: (h: LuksHeader) => void): Uint8Array {
  const h = qemuLikeHeader();
  edit(h);
  return encodeLuksHeader(h);
}

Deno.test("encodeLuksHeader() and decodeLuksHeader() round-trip every field; QEMU's layout validates", () => {
  const h = qemuLikeHeader();
  const bytes = encodeLuksHeader(h);
  assert.equal(bytes.length, LUKS_HEADER_SIZE);
  assert.ok(isLuks(bytes));
  assert.deepEqual(decodeLuksHeader(bytes).header, h);
  const layout = validate(bytes);
  assert.deepEqual(layout, {
    cipherAlg: "aes-256",
    mode: "xts",
    ivgen: "plain64",
    ivgenHash: undefined,
    spec: { alg: "aes-256", mode: "xts", ivgen: "plain64", ivgenHash: undefined },
    hash: "sha256",
    payloadOffset: 4040 * 512,
  });
  // The field table's offsets: payload-offset at 104, key-bytes at 108, slot 0 stripes at 208 + 44.
  const v = new DataView(bytes.buffer);
  assert.equal(v.getUint32(104), 4040);
  assert.equal(v.getUint32(108), 64);
  assert.equal(v.getUint32(208 + 44), 4000);
  assert.equal(v.getUint32(208 + 48 + 40), 8 + 504);
});

const CASES: [string, (h: LuksHeader) => void, RegExp, string?][] = [
  ["version 2", (h) => (h.version = 2), /LUKS version 2 is not supported \(field version/, "ENOTSUP"],
  ["an unknown hash-spec", (h) => (h.hashSpec = "whirlpool"), /Hash algorithm whirlpool not supported \(LUKS field hash-spec\)/, "ENOTSUP"],
  [
    "a cipher-mode without IV generator",
    (h) => (h.cipherMode = "xts"),
    /Unexpected cipher mode string format xts \(LUKS field cipher-mode\)/,
  ],
  ["an unknown cipher mode", (h) => (h.cipherMode = "lrw-plain64"), /Cipher mode lrw not supported/, "ENOTSUP"],
  ["an unknown IV generator", (h) => (h.cipherMode = "xts-benbi"), /IV generator benbi not supported/, "ENOTSUP"],
  ["essiv without a hash", (h) => (h.cipherMode = "cbc-essiv"), /Missing IV generator hash specification/],
  [
    "essiv with sha1 (no 20-byte AES key)",
    (h) => Object.assign(h, { cipherMode: "cbc-essiv:sha1", keyBytes: 32 }),
    /No AES cipher with key size 20/,
    "ENOTSUP",
  ],
  ["a cipher QEMU does not know", (h) => (h.cipherName = "blowfish"), /Algorithm blowfish with key size 32 bytes not supported/, "ENOTSUP"],
  ["absurd key-bytes", (h) => (h.keyBytes = 0x7fffffff), /field key-bytes is 2147483647, expected 16 to 64/],
  ["key-bytes that fit no AES key", (h) => (h.keyBytes = 40), /Algorithm aes with key size 20 bytes not supported/, "ENOTSUP"],
  ["mk-digest-iter 0", (h) => (h.mkDigestIter = 0), /field mk-digest-iter is 0, expected 1 to/],
  ["absurd mk-digest-iter", (h) => (h.mkDigestIter = 0xffffffff), /field mk-digest-iter is 4294967295/],
  [
    "a payload inside the header area",
    (h) => (h.payloadOffset = 4),
    /field payload-offset is 4 sectors: the payload overlaps the 4096-byte header area/,
  ],
  [
    "a payload past the end of the image",
    (h) => (h.payloadOffset = 100000),
    /field payload-offset is 100000 sectors \(51200000 bytes\), past the end of the 4194304-byte image/,
  ],
  ["a corrupt key slot state", (h) => (h.keyslots[3].active = 0x1234), /key slot 3 field active is 0x1234/],
  ["stripes 0", (h) => (h.keyslots[5].stripes = 0), /key slot 5 field stripes is 0, expected 1 to 65536/],
  ["absurd stripes", (h) => (h.keyslots[1].stripes = 0xffffffff), /key slot 1 field stripes is 4294967295/],
  ["an active slot with 0 iterations", (h) => (h.keyslots[0].iterations = 0), /key slot 0 field iterations is 0/],
  ["an active slot with absurd iterations", (h) => (h.keyslots[0].iterations = 0xfffffff0), /key slot 0 field iterations is 4294967280/],
  [
    "key material over the header",
    (h) => (h.keyslots[0].keyMaterialOffset = 1),
    /key slot 0 field key-material-offset is 1 sectors: the key material overlaps the LUKS header/,
  ],
  [
    "key material over the payload",
    (h) => (h.keyslots[7].keyMaterialOffset = 4000),
    /key slot 7 field key-material-offset is 4000 sectors: its 504 sectors of key material overlap the payload at sector 4040/,
  ],
  [
    "overlapping key material",
    (h) => (h.keyslots[2].keyMaterialOffset = h.keyslots[1].keyMaterialOffset + 8),
    /key material of key slots 1 and 2 overlaps/,
  ],
];

for (const [what, edit, message, code] of CASES) {
  Deno.test(`validateLuksHeader() refuses ${what}, naming the field`, () => {
    assert.throws(() => validate(corrupt(edit)), (e: unknown) => {
      assert.ok(e instanceof BlockError, `a BlockError, not ${e}`);
      assert.match(e.message, message);
      assert.equal(e.code, code ?? "EINVAL");
      return true;
    });
  });
}

Deno.test("validateLuksHeader() describes a twofish header (QEMU can run it); using it is ENOTSUP before any PBKDF2", async () => {
  const bytes = corrupt((h) => (h.cipherName = "twofish"));
  const layout = validate(bytes);
  assert.equal(layout.cipherAlg, "twofish-256");
  assert.equal(layout.spec, undefined);
  const area = new Uint8Array(AREA);
  area.set(bytes);
  let reads = 0;
  const io = {
    size: () => AREA,
    read: (o: number, n: number) => (reads++, Promise.resolve(area.slice(o, o + n))),
    write: () => Promise.resolve(),
    flush: () => Promise.resolve(),
  };
  const v = await LuksVolume.open(io);
  assert.equal(v.info()["cipher-alg"], "twofish-256");
  await assert.rejects(v.unlock(new Uint8Array(3)), /Cannot use LUKS cipher 'twofish-256': node:crypto has no twofish cipher/);
  assert.equal(reads, 1, "only the header was read");
});

Deno.test("validateLuksHeader() refuses a wrong magic and strings without NUL terminator", () => {
  const bytes = encodeLuksHeader(qemuLikeHeader());
  const bad = bytes.slice();
  bad[0] = 0x4d;
  assert.throws(() => validate(bad), /Volume is not in LUKS format \(field magic\)/);
  const unterminated = bytes.slice();
  unterminated.fill(0x61, 8, 40); // cipher-name: 32 'a's
  assert.throws(() => validate(unterminated), /field cipher-name is not NUL terminated/);
  assert.equal(isLuks(bad), false);
});

Deno.test("LuksVolume.open() refuses an image shorter than the header, naming both sizes", async () => {
  const io = {
    size: () => 100,
    read: () => Promise.resolve(new Uint8Array(100)),
    write: () => Promise.resolve(),
    flush: () => Promise.resolve(),
  };
  await assert.rejects(LuksVolume.open(io), /the image is 100 bytes, shorter than the 592-byte header/);
});

Deno.test("validateLuksHeader() on 3000 randomly corrupted headers: valid or a BlockError, never another exception", () => {
  const good = encodeLuksHeader(qemuLikeHeader());
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  let refused = 0;
  for (let n = 0; n < 3000; n++) {
    const b = good.slice();
    const flips = 1 + Math.floor(rand() * 4);
    for (let i = 0; i < flips; i++) b[Math.floor(rand() * 208 + (rand() < 0.5 ? 0 : 384 * rand()))] ^= 1 << Math.floor(rand() * 8);
    try {
      validate(b, AREA * (rand() < 0.1 ? 0.01 : 1));
    } catch (e) {
      if (!(e instanceof BlockError)) throw new Error(`corruption ${n} escaped as ${e}`);
      refused++;
    }
  }
  assert.ok(refused > 1000, `most corruptions are refused (${refused})`);
});
