/**
 * The luks driver on its own: open with a secret, wrong and missing
 * passphrases, description-only opens, reads and writes, lengths, resizing,
 * creation options, and the worker-thread cipher pool.
 */

import assert from "node:assert/strict";
import { BlockError } from "../../../core/errors.ts";
import { open } from "../../../core/open.ts";
import { defineSecret, removeSecret } from "../../../core/secrets.ts";
import { CipherPool, setCryptoThreads } from "../../../drivers/_crypto/cipher_pool.ts";
import { SectorCipher } from "../../../drivers/_crypto/sector_cipher.ts";
import { tempDir } from "../../_helpers/qemu.ts";
import { assertSameBytes, createLuks, noise, openLuks, testSecrets } from "./_util.ts";

const MiB = 1 << 20;

Deno.test("luks writes read back; the file holds ciphertext, not the data", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  await createLuks(path, 4 * MiB);
  const data = noise(200 * 1024, 1);
  {
    await using node = await openLuks(path);
    assert.equal(node.length, 4 * MiB);
    await node.pwrite(12345, data);
    const back = new Uint8Array(data.length);
    await node.pread(12345, back);
    assert.deepEqual(back, data);
  }
  const file = await Deno.readFile(path);
  const payload = 2068480;
  assert.notDeepEqual(file.subarray(payload + 12345, payload + 12345 + 64), data.subarray(0, 64));
  await using again = await openLuks(path, "sec0", true);
  const back = new Uint8Array(data.length);
  await again.pread(12345, back);
  assert.deepEqual(back, data);
});

Deno.test("luks refuses a wrong passphrase with EACCES 'Invalid password, cannot unlock any keyslot'", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  await createLuks(path, MiB);
  await assert.rejects(openLuks(path, "bad"), (e: unknown) => {
    assert.ok(e instanceof BlockError);
    assert.equal(e.code, "EACCES");
    assert.equal(e.message, "Invalid password, cannot unlock any keyslot");
    return true;
  });
});

Deno.test("luks needs key-secret to open for I/O; a described-only open (noIo) works without it and refuses reads", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  await createLuks(path, MiB);
  await assert.rejects(open({ driver: "luks", file: { driver: "file", filename: path } }), /Parameter 'key-secret' is required for cipher/);
  await using node = await open({ driver: "luks", file: { driver: "file", filename: path } }, { readOnly: true, noIo: true });
  const info = await node.info();
  assert.equal(info.encrypted, true);
  assert.equal((info["format-specific"] as { type: string }).type, "luks");
  await assert.rejects(
    node.pread(0, new Uint8Array(512)),
    /Cannot read 512 bytes at offset 0: parameter 'key-secret' is required for cipher/,
  );
});

Deno.test("luks names an unknown secret id and refuses a passphrase that is not UTF-8", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  await createLuks(path, MiB);
  await assert.rejects(openLuks(path, "nope"), /No secret with id 'nope' found \(named by option 'key-secret'\)/);
  defineSecret("latin1", { data: "/w==", format: "base64" }); // 0xff
  try {
    await assert.rejects(openLuks(path, "latin1"), /Data from secret latin1 is not valid UTF-8/);
  } finally {
    removeSecret("latin1");
  }
});

Deno.test("luks uses a passphrase up to its first NUL byte, as QEMU's C string does", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  defineSecret("nul", { data: "aGkAdGhlcmU=", format: "base64" }); // "hi\0there"
  defineSecret("hi", { data: "hi" });
  try {
    await createLuks(path, MiB, { "key-secret": "nul" });
    (await openLuks(path, "hi")).close();
  } finally {
    removeSecret("nul");
    removeSecret("hi");
  }
});

Deno.test("luks read-only nodes refuse writes with EROFS", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  await createLuks(path, MiB);
  await using node = await openLuks(path, "sec0", true);
  await assert.rejects(node.pwrite(0, new Uint8Array(512)), (e: unknown) => e instanceof BlockError && e.code === "EROFS");
});

Deno.test("luks unaligned writes keep the bytes around them (the core's read-modify-write over 512-byte sectors)", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  await createLuks(path, MiB);
  await using node = await openLuks(path);
  const base = noise(8192, 3);
  await node.pwrite(0, base);
  await node.pwrite(1000, new Uint8Array(700).fill(0xee));
  const back = new Uint8Array(8192);
  await node.pread(0, back);
  base.fill(0xee, 1000, 1700);
  assert.deepEqual(back, base);
});

Deno.test("luks length follows the file (rounded up to sectors, as QEMU); truncate resizes the payload", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  await createLuks(path, 1000);
  {
    await using node = await openLuks(path);
    assert.equal(node.length, 1024);
    await node.truncate(3 * MiB);
    assert.equal(node.length, 3 * MiB);
    await node.pwrite(3 * MiB - 512, new Uint8Array(512).fill(9));
    await node.truncate(2 * MiB);
  }
  assert.equal((await Deno.stat(path)).size, 2068480 + 2 * MiB);
  await using node = await openLuks(path);
  assert.equal(node.length, 2 * MiB);
});

Deno.test("luks block status reports every sector as data (QEMU's answer for luks)", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  await createLuks(path, MiB);
  await using node = await openLuks(path, "sec0", true);
  const st = await node.blockStatus(4096, MiB - 4096);
  assert.deepEqual({ ...st }, { offset: 4096, length: MiB - 4096, data: true, zero: false, allocated: true, depth: 0 });
});

Deno.test("luks creation refuses unknown options, bad values and ciphers node:crypto lacks, naming them", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.luks`;
  const cases: [Record<string, string | number>, RegExp][] = [
    [{ "cluster_size": "64k" }, /Unknown option 'cluster_size' for format 'luks'/],
    [
      { "cipher-alg": "twofish-128" },
      /Cipher algorithm 'twofish-128' \(option 'cipher-alg'\) is not available: node:crypto has no twofish cipher/,
    ],
    [{ "cipher-alg": "serpent-256" }, /node:crypto has no serpent cipher/],
    [{ "cipher-alg": "sm4" }, /Parameter 'cipher-alg' does not accept value 'sm4'/],
    [{ "cipher-mode": "ofb" }, /Parameter 'cipher-mode' does not accept value 'ofb'/],
    [{ "ivgen-alg": "benbi" }, /Parameter 'ivgen-alg' does not accept value 'benbi'/],
    [{ "hash-alg": "sha3-256" }, /Parameter 'hash-alg' does not accept value 'sha3-256'/],
    [{ "ivgen-alg": "essiv", "ivgen-hash-alg": "sha1" }, /No AES cipher with key size 20 available/],
    [{ "iter-time": 0 }, /Invalid value '0' for option 'iter-time'/],
    [{ preallocation: "metadata" }, /Invalid value 'metadata' for option 'preallocation' of format 'luks': expected off, falloc or full/],
  ];
  for (const [o, msg] of cases) await assert.rejects(createLuks(path, MiB, o), msg, JSON.stringify(o));
  testSecrets();
  const { createImage } = await import("../../../core/open.ts");
  await assert.rejects(createImage(path, "luks", MiB, { options: {} }), /Parameter 'key-secret' is required for cipher/);
});

Deno.test("luks preallocation=full allocates the whole file; falloc and off do not write data", async () => {
  await using dir = await tempDir();
  for (const mode of ["off", "falloc", "full"]) {
    const path = `${dir.path}/${mode}.luks`;
    await createLuks(path, 8 * MiB, { preallocation: mode });
    const st = await Deno.stat(path);
    assert.equal(st.size, 2068480 + 8 * MiB);
    if (mode === "off") assert.ok(st.blocks! * 512 < 4 * MiB, `${mode}: sparse`);
    else assert.ok(st.blocks! * 512 >= 8 * MiB, `${mode}: allocated`);
  }
});

Deno.test("CipherPool with worker threads produces exactly the calling thread's ciphertext, also under concurrency", async () => {
  const spec = { alg: "aes-256", mode: "xts", ivgen: "plain64" } as const;
  const key = crypto.getRandomValues(new Uint8Array(64));
  const pool = new CipherPool(spec, key, { threads: 2 });
  const local = new SectorCipher(spec, key);
  try {
    assert.equal(pool.threads, 2);
    const inputs = Array.from({ length: 6 }, (_, i) => noise((i + 1) * 256 * 1024, 50 + i));
    const ours = inputs.map((d) => d.slice());
    await Promise.all(ours.map((d, i) => pool.encrypt(d, i * 10000)));
    inputs.forEach((d, i) => {
      const want = d.slice();
      local.encrypt(want, i * 10000);
      assert.deepEqual(ours[i], want, `job ${i}`);
    });
    await Promise.all(ours.map((d, i) => pool.decrypt(d, i * 10000)));
    assert.deepEqual(ours, inputs);
  } finally {
    await pool.close();
  }
  await assert.rejects(pool.encrypt(new Uint8Array(512), 0), /closed/);
});

Deno.test("luks with and without crypto threads reads back concurrent writes", async () => {
  await using dir = await tempDir();
  for (const threads of [0, 1]) {
    setCryptoThreads(threads);
    const path = `${dir.path}/t${threads}.luks`;
    await createLuks(path, 8 * MiB);
    try {
      await using node = await openLuks(path);
      const writes = Array.from({ length: 16 }, (_, i) => ({ off: i * 512 * 1024, data: noise(256 * 1024 + (i % 3) * 512, 70 + i) }));
      await Promise.all(writes.map((w) => node.pwrite(w.off, w.data)));
      const backs = await Promise.all(writes.map(async (w) => {
        const b = new Uint8Array(w.data.length);
        await node.pread(w.off, b);
        return b;
      }));
      writes.forEach((w, i) => assertSameBytes(backs[i], w.data, `threads=${threads} write ${i}`));
      const all = new Uint8Array(8 * MiB);
      await node.pread(0, all);
      writes.forEach((w, i) =>
        assertSameBytes(all.subarray(w.off, w.off + w.data.length), w.data, `threads=${threads} whole-image read, write ${i}`)
      );
    } finally {
      setCryptoThreads(undefined);
    }
  }
});
