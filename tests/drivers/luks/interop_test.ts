/**
 * luks interoperability with QEMU 7.2 and cryptsetup, both ways, for every
 * cipher / mode / IV generator / hash family QEMU offers that node:crypto
 * can run: images qemu-img creates and qemu-io writes read identically
 * through blkgraph (compared with `qemu-img convert`'s plaintext), what
 * blkgraph writes reads back identically in QEMU, blkgraph creates QEMU's
 * exact layout, and cryptsetup treats blkgraph's images as it treats QEMU's.
 */

import assert from "node:assert/strict";
import { decodeLuksHeader, LUKS_HEADER_SIZE } from "../../../drivers/_crypto/luks_header.ts";
import { hasTool, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import {
  assertSameBytes,
  createLuks,
  cryptsetupTest,
  luksDump,
  noise,
  openLuks,
  PASS0,
  QEMU_SECRETS,
  qemuCreateLuks,
  qemuIoOk,
  qemuSpec,
} from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");
const KiB = 1024;
const SIZE = 4 * 1024 * KiB;

/** The option sets tested: QEMU's default and one per cipher/mode/IV/hash family. */
const COMBOS = [
  "",
  "cipher-alg=aes-128,ivgen-alg=plain",
  "cipher-alg=aes-192,ivgen-alg=essiv",
  "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv",
  "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=plain,ivgen-hash-alg=sha1,hash-alg=sha512",
  "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=md5",
  "cipher-alg=aes-128,cipher-mode=ecb",
  "cipher-mode=ctr",
  "cipher-alg=aes-128,cipher-mode=ctr,ivgen-alg=essiv,hash-alg=sha1",
];

function optionsOf(combo: string): Record<string, string> {
  return Object.fromEntries(combo ? combo.split(",").map((kv) => kv.split("=") as [string, string]) : []);
}

/** The whole plaintext as QEMU sees it. */
async function qemuPlaintext(path: string, dir: string): Promise<Uint8Array> {
  const out = `${dir}/plain-${crypto.randomUUID()}.raw`;
  await runOk("qemu-img", ["convert", ...QEMU_SECRETS, "--image-opts", qemuSpec(path), "-O", "raw", out]);
  try {
    return await Deno.readFile(out);
  } finally {
    await Deno.remove(out);
  }
}

async function blkgraphPlaintext(path: string): Promise<Uint8Array> {
  await using node = await openLuks(path, "sec0", true);
  const out = new Uint8Array(node.length);
  await node.pread(0, out);
  return out;
}

/** The header fields that do not depend on randomness or CPU speed. */
function layoutFields(bytes: Uint8Array): Record<string, unknown> {
  const { header: h } = decodeLuksHeader(bytes);
  return {
    cipherName: h.cipherName,
    cipherMode: h.cipherMode,
    hashSpec: h.hashSpec,
    payloadOffset: h.payloadOffset,
    keyBytes: h.keyBytes,
    uuidLength: h.uuid.length,
    slots: h.keyslots.map((s) => ({
      active: s.active,
      keyMaterialOffset: s.keyMaterialOffset,
      stripes: s.stripes,
      hasIters: s.iterations >= 1000,
    })),
  };
}

const WRITES: [number, number][] = [[0, 64 * KiB], [1024 * KiB + 512, 3000], [SIZE - 4096, 4096]];

for (const combo of COMBOS) {
  Deno.test({
    name: `luks (${combo || "defaults"}): QEMU and blkgraph read each other's data identically; blkgraph creates qemu-img's layout`,
    ignore,
    async fn() {
      await using dir = await tempDir();
      // QEMU's image: what qemu-io writes reads identically through blkgraph, and the other way round.
      const theirs = `${dir.path}/q.luks`;
      await qemuCreateLuks(theirs, SIZE, combo);
      const cmds: string[] = [];
      for (const [i, [off, len]] of WRITES.entries()) {
        const src = `${dir.path}/w${i}.bin`;
        await Deno.writeFile(src, noise(len, 100 + i));
        cmds.push(`write -s ${src} ${off} ${len}`);
      }
      await qemuIoOk(theirs, ...cmds);
      const expect = await qemuPlaintext(theirs, dir.path);
      assertSameBytes(await blkgraphPlaintext(theirs), expect, "blkgraph's read of QEMU's data");
      {
        await using node = await openLuks(theirs);
        for (const [i, [off, len]] of [[300, 5000], [2048 * KiB, 128 * KiB]].entries()) {
          const d = noise(len, 200 + i);
          await node.pwrite(off, d);
          expect.set(d, off);
        }
      }
      assertSameBytes(await qemuPlaintext(theirs, dir.path), expect, "QEMU's read of blkgraph's writes");

      // blkgraph's image: the same layout and qemu-img info, QEMU reads it, cryptsetup treats it alike.
      const ours = `${dir.path}/b.luks`;
      await createLuks(ours, SIZE, optionsOf(combo));
      const head = async (p: string) => (await Deno.readFile(p)).subarray(0, LUKS_HEADER_SIZE);
      assert.deepEqual(layoutFields(await head(ours)), layoutFields(await head(theirs)));
      assert.equal((await Deno.stat(ours)).size, (await Deno.stat(theirs)).size);
      const data = noise(SIZE, 7);
      {
        await using node = await openLuks(ours);
        await node.pwrite(0, data);
      }
      assertSameBytes(await qemuPlaintext(ours, dir.path), data, "QEMU's read of blkgraph's image");
      assert.deepEqual(await comparableInfo(ours), await comparableInfo(theirs));
      if (hasTool("cryptsetup")) {
        assert.match(await luksDump(ours), /Version:\s+1[\s\S]*Key Slot 0: ENABLED/);
        const code = await cryptsetupTest(ours, PASS0);
        assert.equal(code, await cryptsetupTest(theirs, PASS0), "cryptsetup --test-passphrase: same exit code as for QEMU's image");
        if (code === 0) assert.equal(await cryptsetupTest(ours, "wrong"), 2);
      }
    },
  });
}

/** qemu-img info --output=json without what differs between any two images (uuid, iterations, disk use). */
async function comparableInfo(path: string): Promise<Record<string, unknown>> {
  const j = JSON.parse((await runOk("qemu-img", ["info", "--output=json", path])).stdout);
  const d = j["format-specific"].data;
  const slots = d.slots.map((s: Record<string, unknown>) => ({ ...s, iters: s.iters === undefined ? undefined : 0 }));
  return { ...j, filename: "", "actual-size": 0, "format-specific": { ...d, uuid: "", "master-key-iters": 0, slots } };
}

Deno.test({
  name: "luks: qemu-img check reports what it reports for QEMU's own luks images (no checks for the format)",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/b.luks`;
    await createLuks(path, SIZE);
    const r = await run("qemu-img", ["check", ...QEMU_SECRETS, "--image-opts", qemuSpec(path)]);
    assert.equal(r.code, 63);
    assert.match(r.stderr, /This image format does not support checks/);
  },
});

Deno.test({
  name: "luks: blkgraph reads a default qemu-img image (aes-256-xts, 2 s of PBKDF2) with the same secret",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/default.luks`;
    await qemuCreateLuks(path, 1024 * KiB, "iter-time=2000");
    await qemuIoOk(path, "write -P 0xa5 4k 8k");
    await using node = await openLuks(path, "sec0", true);
    const buf = new Uint8Array(8 * KiB);
    await node.pread(4 * KiB, buf);
    assert.ok(buf.every((b) => b === 0xa5));
  },
});

Deno.test({
  name: "luks: a twofish image from qemu-img is described as qemu-img info does, and refused by name when opened for I/O",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/twofish.luks`;
    await qemuCreateLuks(path, 1024 * KiB, "cipher-alg=twofish-128");
    const { cli } = await import("../../cli/_run.ts");
    const ours = await cli(["info", "--output=json", path]);
    assert.equal(ours.stdout, (await runOk("qemu-img", ["info", "--output=json", path])).stdout);
    await assert.rejects(openLuks(path), /Cannot use LUKS cipher 'twofish-128': node:crypto has no twofish cipher/);
  },
});
