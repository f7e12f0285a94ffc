/**
 * Encrypted qcow2 (`encrypt.format=luks` and legacy `aes`), both ways with
 * QEMU 7.2: images qemu-img creates and qemu-io writes read identically
 * through blkgraph; what blkgraph writes (in place, into new clusters, with
 * copy-on-write from a backing file) reads identically in QEMU and passes
 * `qemu-img check`; blkgraph creates qemu-img's metadata byte for byte;
 * `info` matches; `amend -o encrypt.*` manages LUKS key slots.
 */

import assert from "node:assert/strict";
import { BlockError } from "../../../core/errors.ts";
import { open } from "../../../core/open.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { cli } from "../../cli/_run.ts";
import { assertSameBytes, dropTestSecrets, noise, PASS0, QEMU_SECRETS, qemuImgKeyslots, testSecrets } from "../luks/_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");
const KiB = 1024;
const SIZE = 4 * 1024 * KiB;
const spec = (path: string, secret = "sec0") => `driver=qcow2,encrypt.key-secret=${secret},file.filename=${path}`;

async function qemuCreate(path: string, o: string, backing?: string): Promise<void> {
  const args = ["create", "-q", "-f", "qcow2", ...QEMU_SECRETS, "-o", `encrypt.key-secret=sec0,${o}`];
  if (backing) args.push("-b", backing, "-F", "raw");
  const r = await qemuImgKeyslots([...args, path, String(SIZE)]);
  assert.equal(r.code, 0, r.stderr);
}

async function openEnc(path: string, secret = "sec0", readOnly = false) {
  testSecrets();
  return await open({ driver: "qcow2", "encrypt.key-secret": secret, file: { driver: "file", filename: path } }, { readOnly });
}

async function qemuPlaintext(path: string, dir: string): Promise<Uint8Array> {
  const out = `${dir}/plain-${crypto.randomUUID()}.raw`;
  await runOk("qemu-img", ["convert", ...QEMU_SECRETS, "--image-opts", spec(path), "-O", "raw", out]);
  try {
    return await Deno.readFile(out);
  } finally {
    await Deno.remove(out);
  }
}

async function ourPlaintext(path: string): Promise<Uint8Array> {
  await using node = await openEnc(path, "sec0", true);
  const out = new Uint8Array(node.length);
  await node.pread(0, out);
  return out;
}

async function assertChecks(path: string): Promise<void> {
  const r = await run("qemu-img", ["check", ...QEMU_SECRETS, "--image-opts", spec(path)]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
}

const COMBOS = [
  "encrypt.format=luks,encrypt.iter-time=10",
  "encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,cluster_size=4k",
  "encrypt.format=aes",
  "encrypt.format=aes,compat=0.10,cluster_size=512",
];

for (const combo of COMBOS) {
  Deno.test({
    name: `qcow2 ${combo}: QEMU and blkgraph read each other's data identically, COW from a backing file included`,
    ignore,
    async fn() {
      await using dir = await tempDir();
      const base = `${dir.path}/base.raw`;
      await Deno.writeFile(base, noise(SIZE, 1));
      const path = `${dir.path}/e.qcow2`;
      await qemuCreate(path, combo, base);
      const src = `${dir.path}/w.bin`;
      await Deno.writeFile(src, noise(70 * KiB, 2));
      const q = await run("qemu-io", [...QEMU_SECRETS, "--image-opts", spec(path), "-c", `write -s ${src} 100k 70k`]);
      assert.equal(q.code, 0, q.stderr);
      const expect = await qemuPlaintext(path, dir.path);
      assertSameBytes(await ourPlaintext(path), expect, "blkgraph's read of QEMU's image");
      {
        await using node = await openEnc(path);
        // In place (QEMU's cluster), copy-on-write into new clusters, and an unaligned write.
        for (const [off, len, seed] of [[110 * KiB, 8 * KiB, 3], [1024 * KiB + 512, 3000, 4], [3 * 1024 * KiB, 200 * KiB, 5]]) {
          const d = noise(len, seed);
          await node.pwrite(off, d);
          expect.set(d, off);
        }
      }
      assertSameBytes(await qemuPlaintext(path, dir.path), expect, "QEMU's read of blkgraph's writes");
      await assertChecks(path);
    },
  });

  Deno.test({
    name: `qcow2 ${combo}: blkgraph creates qemu-img's layout byte for byte; info matches; QEMU reads blkgraph's data`,
    ignore,
    async fn() {
      testSecrets();
      await using dir = await tempDir();
      const ours = `${dir.path}/b.qcow2`;
      const theirs = `${dir.path}/q.qcow2`;
      const options = Object.fromEntries(`encrypt.key-secret=sec0,${combo}`.split(",").map((kv) => kv.split("=")));
      const { createImage } = await import("../../../core/open.ts");
      await createImage(ours, "qcow2", SIZE, { options });
      await qemuCreate(theirs, combo);
      const a = await Deno.readFile(ours);
      const b = await Deno.readFile(theirs);
      assert.equal(a.length, b.length);
      const luks = combo.includes("luks");
      // Everything but the LUKS header (random keys and salts) is identical.
      const h = new DataView(a.buffer);
      const cs = 2 ** h.getUint32(20);
      let skip: [number, number] = [0, 0];
      if (luks) {
        const info = JSON.parse((await runOk("qemu-img", ["info", "--output=json", ours])).stdout);
        assert.equal(info["format-specific"].data.encrypt.format, "luks");
        const pos = [...a.subarray(0, cs)].findIndex((_, i) => h.getUint32(i) === 0x0537be77 && i % 8 === 0 && i >= 72);
        skip = [Number(h.getBigUint64(pos + 8)), Number(h.getBigUint64(pos + 16))];
      }
      for (let i = 0; i < a.length; i += cs) {
        if (i >= skip[0] && i < skip[0] + skip[1]) continue;
        assertSameBytes(a.subarray(i, i + cs), b.subarray(i, i + cs), `cluster ${i / cs}`);
      }
      const data = noise(SIZE, 9);
      {
        await using node = await openEnc(ours);
        await node.pwrite(0, data);
      }
      assertSameBytes(await qemuPlaintext(ours, dir.path), data, "QEMU's read of blkgraph's image");
      await assertChecks(ours);
      dropTestSecrets();
      for (const fmt of ["human", "json"]) {
        const o = await cli(["info", `--output=${fmt}`, theirs]);
        assert.equal(o.stdout, (await runOk("qemu-img", ["info", `--output=${fmt}`, theirs])).stdout);
      }
    },
  });
}

Deno.test({
  name: "qcow2 luks: a wrong passphrase is refused, a missing secret named, compressed writes refused",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/e.qcow2`;
    await qemuCreate(path, "encrypt.format=luks,encrypt.iter-time=10");
    await assert.rejects(
      openEnc(path, "bad"),
      (e: unknown) => e instanceof BlockError && e.code === "EACCES" && /Invalid password/.test(e.message),
    );
    await assert.rejects(
      open({ driver: "qcow2", file: { driver: "file", filename: path } }),
      /Parameter 'encrypt.key-secret' is required for cipher/,
    );
    await using node = await openEnc(path);
    const inst = node.instance as { pwriteCompressed?(o: number, d: Uint8Array, x: object): Promise<void> };
    await assert.rejects(inst.pwriteCompressed!(0, new Uint8Array(65536), {}), /Compression can't be used with encryption/);
  },
});

Deno.test({
  name: "qcow2 luks: amend -o encrypt.state=active,encrypt.new-secret adds a key slot QEMU opens, image stays clean",
  ignore,
  async fn() {
    dropTestSecrets();
    await using dir = await tempDir();
    const path = `${dir.path}/e.qcow2`;
    await qemuCreate(path, "encrypt.format=luks,encrypt.iter-time=10");
    const r = await cli([
      "amend",
      ...QEMU_SECRETS,
      "--image-opts",
      spec(path),
      "-o",
      "encrypt.state=active,encrypt.new-secret=sec1,encrypt.iter-time=10",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const q = await run("qemu-io", [...QEMU_SECRETS, "--image-opts", spec(path, "sec1"), "-c", "read 0 512"]);
    assert.equal(q.code, 0, q.stderr);
    await assertChecks(path);
    const erase = await cli([
      "amend",
      ...QEMU_SECRETS,
      "--image-opts",
      spec(path, "sec1"),
      "-o",
      "encrypt.state=inactive,encrypt.keyslot=0",
    ]);
    assert.equal(erase.code, 0, erase.stderr);
    const gone = await run("qemu-io", [...QEMU_SECRETS, "--image-opts", spec(path, "sec0"), "-c", "read 0 512"]);
    assert.match(gone.stderr, /Invalid password, cannot unlock any keyslot/);
    assert.ok(PASS0.length > 0);
  },
});

Deno.test({
  name: "qcow2 luks: a partial write into a new cluster leaves the rest of the cluster reading zeros, in blkgraph and in QEMU",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/e.qcow2`;
    await qemuCreate(path, "encrypt.format=luks,encrypt.iter-time=10");
    {
      await using node = await openEnc(path);
      await node.pwrite(5 * 64 * KiB + 4096, noise(4096, 11)); // the middle of a new 64 KiB cluster, at the end of the file
    }
    const expect = new Uint8Array(SIZE);
    expect.set(noise(4096, 11), 5 * 64 * KiB + 4096);
    assertSameBytes(await ourPlaintext(path), expect, "blkgraph");
    assertSameBytes(await qemuPlaintext(path, dir.path), expect, "QEMU");
  },
});

Deno.test({
  name: "qcow2 encrypted: map (no host offsets for encrypted clusters) and check print what qemu-img prints",
  ignore,
  async fn() {
    dropTestSecrets();
    await using dir = await tempDir();
    for (const combo of ["encrypt.format=luks,encrypt.iter-time=10", "encrypt.format=aes"]) {
      const path = `${dir.path}/e.qcow2`;
      await Deno.remove(path).catch(() => {});
      await qemuCreate(path, combo);
      await runOk("qemu-io", [...QEMU_SECRETS, "--image-opts", spec(path), "-c", "write -P 0x5a 64k 100k"]);
      const strip = (s: string) => s.replaceAll(/, "compressed": (true|false)/g, "");
      const ours = await cli(["map", "--output=json", ...QEMU_SECRETS, "--image-opts", spec(path)]);
      assert.equal(
        strip(ours.stdout),
        (await runOk("qemu-img", ["map", "--output=json", ...QEMU_SECRETS, "--image-opts", spec(path)])).stdout,
      );
      const check = await cli(["check", path]);
      const q = await run("qemu-img", ["check", ...QEMU_SECRETS, "--image-opts", spec(path)]);
      assert.equal(check.code, q.code);
      assert.equal(check.stdout, q.stdout);
    }
  },
});
