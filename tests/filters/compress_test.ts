import assert from "node:assert/strict";
import { type BlockError, createImage, open } from "../../mod.ts";
import { cli } from "../cli/_run.ts";
import { qemuCheck, run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const spec = (fmt: string, path: string) => ({ driver: "compress", file: { driver: fmt, file: { driver: "file", filename: path } } });
const imageOpts = (fmt: string, path: string) => `driver=compress,file.driver=${fmt},file.file.driver=file,file.file.filename=${path}`;

Deno.test("compress turns every write into compressed cluster writes, padding partial clusters with the data there", async () => {
  await using d = await tempDir();
  const base = `${d.path}/base.qcow2`;
  const img = `${d.path}/a.qcow2`;
  await createImage(base, "qcow2", 1 << 20, { options: { cluster_size: 65536 } });
  {
    await using n = await open(base);
    await n.pwrite(0, new Uint8Array(65536 * 2).fill(0x11));
  }
  await createImage(img, "qcow2", 1 << 20, { options: { cluster_size: 65536, backing_file: base, backing_fmt: "qcow2" } });
  {
    await using n = await open(spec("qcow2", img));
    assert.equal(n.limits.requestAlignment, 65536);
    await n.pwrite(65536 + 100, new Uint8Array(65536).fill(0x22)); // clusters 1 and 2, padded from the backing file
  }
  await using n = await open(img, { readOnly: true });
  assert.equal((await n.check()).compressedClusters, 2);
  const got = new Uint8Array(65536 * 3);
  await n.pread(0, got);
  const want = new Uint8Array(65536 * 3).fill(0x11, 0, 65536 * 2);
  want.fill(0x22, 65536 + 100, 2 * 65536 + 100);
  assert.deepEqual(got, want);
});

Deno.test("compress refuses with EIO a write onto a cluster the image already holds, as qemu-io's compress driver does", async () => {
  await using d = await tempDir();
  const img = `${d.path}/a.qcow2`;
  await createImage(img, "qcow2", 1 << 20, { options: { cluster_size: 65536 } });
  {
    await using n = await open(img);
    await n.pwrite(0, new Uint8Array(65536 * 2).fill(0x11));
  }
  {
    await using n = await open(spec("qcow2", img));
    await assert.rejects(n.pwrite(65536 + 100, new Uint8Array(65536).fill(0x22)), (e: BlockError) => e.code === "EIO");
  }
  await using n = await open(img, { readOnly: true });
  const got = new Uint8Array(65536 * 2);
  await n.pread(0, got);
  assert.deepEqual(got, new Uint8Array(65536 * 2).fill(0x11));
  assert.equal((await n.check()).corruptions, 0);
});

Deno.test("compress refuses a child that cannot compress, naming its driver as QEMU does", async () => {
  await using d = await tempDir();
  const img = `${d.path}/a.raw`;
  await createImage(img, "raw", 1 << 20);
  await assert.rejects(
    open(spec("raw", img)),
    (e: BlockError) => e.code === "ENOTSUP" && e.message === "Compression is not supported for underlying format: raw",
  );
  await assert.rejects(
    open({ driver: "compress", file: { driver: "file", filename: img } }),
    (e: BlockError) => e.message === "Compression is not supported for underlying format: file",
  );
});

Deno.test("compress refuses a writable open of an image whose size is not whole clusters, and allows a read-only one", async () => {
  await using d = await tempDir();
  const img = `${d.path}/a.qcow2`;
  await createImage(img, "qcow2", 100000);
  await assert.rejects(
    open(spec("qcow2", img)),
    (e: BlockError) =>
      e.code === "EPERM" &&
      e.message === "Cannot get 'write' permission without 'resize': Image size is not a multiple of request alignment",
  );
  await using n = await open(spec("qcow2", img), { readOnly: true });
  assert.equal(n.length, 100352); // whole sectors
});

Deno.test({
  name: "compress writes the same clusters compressed as qemu-io's compress driver (iotest 214), and fails opens with its messages",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const cs = 0x10000;
    const writes = [`write -P 0xbb 0 ${3 * cs + cs / 2}`, `write -P 0xcc ${4 * cs + cs / 4} ${3 * cs + cs / 2}`];
    const ours = `${d.path}/ours.qcow2`;
    const theirs = `${d.path}/theirs.qcow2`;
    for (const p of [ours, theirs]) await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `cluster_size=${cs}`, p, "2M"]);
    for (const w of writes) {
      await runOk("qemu-io", ["-c", w, "--image-opts", imageOpts("qcow2", theirs)]);
      const r = await cli(["io", "-c", w, "--image-opts", imageOpts("qcow2", ours)]);
      assert.equal(r.code, 0, r.stderr);
    }
    const [a, b] = [await qemuCheck(ours), await qemuCheck(theirs)];
    assert.equal(a.json["compressed-clusters"], 8);
    assert.equal(a.json["compressed-clusters"], b.json["compressed-clusters"]);
    assert.equal(a.code, 0);
    await runOk("qemu-img", ["compare", "-q", ours, theirs]);

    const raw = `${d.path}/r.raw`;
    const odd = `${d.path}/odd.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", raw, "1M"]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", odd, "100000"]);
    for (const [fmt, path] of [["raw", raw], ["qcow2", odd]]) {
      const q = await run("qemu-io", ["-c", "read 0 512", "--image-opts", imageOpts(fmt, path)]);
      const r = await cli(["io", "-c", "read 0 512", "--image-opts", imageOpts(fmt, path)]);
      assert.notEqual(q.stderr, "");
      assert.equal(r.stderr.replace(/^[^:]*: /, ""), q.stderr.replace(/^[^:]*: /, ""));
    }
  },
});

Deno.test({
  name:
    "compress write of 16 clusters that fails on the first writes clusters 1 to 8 only, as qemu-io's compress driver (qcow2's 8-task pool)",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const cs = 0x10000;
    const ours = `${d.path}/ours.qcow2`;
    const theirs = `${d.path}/theirs.qcow2`;
    for (const p of [ours, theirs]) {
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `cluster_size=${cs}`, p, "2M"]);
      await runOk("qemu-io", ["-c", "write -P 6 0 512", p]);
    }
    const w = `write -P 8 0 ${16 * cs}`;
    const q = await run("qemu-io", ["-c", w, "--image-opts", imageOpts("qcow2", theirs)]);
    const r = await cli(["io", "-c", w, "--image-opts", imageOpts("qcow2", ours)]);
    assert.match(q.stdout + q.stderr, /Input\/output error/);
    assert.match(r.stdout + r.stderr, /Input\/output error/);
    await runOk("qemu-img", ["compare", "-q", ours, theirs]);
    assert.equal((await qemuCheck(ours)).json["compressed-clusters"], 8);
  },
});
