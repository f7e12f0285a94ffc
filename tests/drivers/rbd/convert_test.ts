import assert from "node:assert/strict";
import { open } from "../../../mod.ts";
import { cephConf, imageName, rbdCreate, rbdExport, rbdFilename, rbdInfo, skipUnlessCeph } from "../../_helpers/ceph.ts";
import { pattern, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { cli } from "../../cli/_run.ts";

const ignore = skipUnlessCeph() || skipUnless("qemu-img", "qemu-io");
const MiB = 1 << 20;

async function ok(args: string[]): Promise<string> {
  const r = await cli(args);
  assert.equal(r.code, 0, `blkgraph ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** A qcow2 with data, a zero run and a hole, written by qemu-io. */
async function sourceQcow2(path: string, size = "24M"): Promise<void> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, size]);
  await runOk("qemu-io", [
    "-f",
    "qcow2",
    "-c",
    "write -P 0x61 0 3M",
    "-c",
    "write -z 3M 1M",
    "-c",
    "write -P 0x62 9M 5M",
    "-c",
    "write -P 0x63 23M 4k",
    path,
  ]);
}

Deno.test(
  { name: "convert -O raw x.qcow2 rbd:pool/img creates the RBD image and matches qemu-img compare and rbd export", ignore },
  async () => {
    await using dir = await tempDir();
    const conf = await cephConf();
    const image = imageName();
    const src = `${dir.path}/src.qcow2`;
    await sourceQcow2(src);
    const target = rbdFilename(conf, image);
    await ok(["convert", "-f", "qcow2", "-O", "raw", src, target]);
    assert.equal((await rbdInfo(conf, image)).size, 24 * MiB);
    await runOk("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", src, target]);
    await runOk("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", src, `${dir.path}/ref.raw`]);
    assert.ok(same(await rbdExport(conf, image, dir.path), await Deno.readFile(`${dir.path}/ref.raw`)));
    // Like qemu-img, an existing target is not overwritten.
    const again = await cli(["convert", "-f", "qcow2", "-O", "raw", src, target]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /exists/);
  },
);

Deno.test({ name: "convert rbd → qcow2 gives an image qemu-img compares equal and checks clean", ignore }, async () => {
  await using dir = await tempDir();
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "20M");
  await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x71 1M 2M", "-c", "write -P 0x72 17M 64k", rbdFilename(conf, image)]);
  const out = `${dir.path}/out.qcow2`;
  await ok(["convert", "-f", "raw", "-O", "qcow2", rbdFilename(conf, image), out]);
  await runOk("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", rbdFilename(conf, image), out]);
  await runOk("qemu-img", ["check", out]);
  // Block status skipped the holes: only the written clusters are allocated.
  const map = JSON.parse((await runOk("qemu-img", ["map", "--output=json", out])).stdout);
  const data = map.filter((e: { data: boolean }) => e.data).reduce((n: number, e: { length: number }) => n + e.length, 0);
  assert.equal(data, 2 * MiB + 64 * 1024);
});

Deno.test({ name: "create -f raw and -f qcow2 on rbd: make RBD images of the size asked that qemu-img reads back", ignore }, async () => {
  const conf = await cephConf();
  const raw = imageName();
  await ok(["create", "-f", "raw", rbdFilename(conf, raw), "1000"]);
  // Rounded up to whole sectors, as qemu-img create makes it (qemu-img create -f raw rbd:... 1000 gives 1024).
  const ref = imageName();
  await runOk("qemu-img", ["create", "-f", "raw", rbdFilename(conf, ref), "1000"]);
  assert.equal((await rbdInfo(conf, raw)).size, (await rbdInfo(conf, ref)).size);
  assert.equal((await rbdInfo(conf, raw)).size, 1024);
  const qc = imageName();
  await ok(["create", "-f", "qcow2", rbdFilename(conf, qc), "64M"]);
  const info = JSON.parse((await runOk("qemu-img", ["info", "--output=json", rbdFilename(conf, qc)])).stdout);
  assert.deepEqual([info.format, info["virtual-size"]], ["qcow2", 64 * MiB]);
  await runOk("qemu-img", ["check", rbdFilename(conf, qc)]);
  const dup = await cli(["create", "-f", "raw", rbdFilename(conf, raw), "1M"]);
  const theirs = await run("qemu-img", ["create", "-f", "raw", rbdFilename(conf, raw), "1M"]);
  assert.deepEqual([dup.code, theirs.code], [1, 1]);
  assert.match(dup.stderr, /exists/);
});

Deno.test(
  { name: "create -f raw -o cluster_size=N on rbd picks the RBD object size, as qemu-img's; qcow2 keeps its own", ignore },
  async () => {
    const conf = await cephConf();
    const [ours, theirs, qc] = [imageName(), imageName(), imageName()];
    await ok(["create", "-q", "-f", "raw", "-o", "cluster_size=1M", rbdFilename(conf, ours), "4M"]);
    await runOk("qemu-img", ["create", "-q", "-f", "raw", "-o", "cluster_size=1M", rbdFilename(conf, theirs), "4M"]);
    const [a, b] = [await rbdInfo(conf, ours), await rbdInfo(conf, theirs)];
    assert.deepEqual([a.object_size, a.order], [b.object_size, b.order]);
    assert.equal(a.object_size, MiB);
    // qcow2's cluster_size is the format's: the RBD image keeps Ceph's default object size.
    await ok(["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", rbdFilename(conf, qc), "4M"]);
    assert.equal((await rbdInfo(conf, qc)).object_size, 4 * MiB);
    const info = JSON.parse((await runOk("qemu-img", ["info", "--output=json", rbdFilename(conf, qc)])).stdout);
    assert.equal(info["cluster-size"], 4096);
  },
);

Deno.test(
  { name: "qcow2 on rbd: what blkgraph writes qemu-io reads, what qemu-io writes blkgraph reads, qemu-img check clean", ignore },
  async () => {
    const conf = await cephConf();
    const image = imageName();
    const name = rbdFilename(conf, image);
    await ok(["create", "-q", "-f", "qcow2", name, "32M"]);
    await ok(["io", "-f", "qcow2", "-c", "write -P 0x81 0 1M", "-c", "write -P 0x82 20M 300k", name]);
    const r = await run("qemu-io", [
      "-f",
      "qcow2",
      "-r",
      "-c",
      "read -P 0x81 0 1M",
      "-c",
      "read -P 0x82 20M 300k",
      "-c",
      "read -P 0 1M 1M",
      name,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /verification failed/);
    await runOk("qemu-io", ["-f", "qcow2", "-c", "write -P 0x83 8M 64k", name]);
    await using img = await open(name, { readOnly: true });
    assert.equal(img.driver.name, "qcow2");
    const buf = new Uint8Array(65536);
    await img.pread(8 * MiB, buf);
    assert.ok(buf.every((b) => b === 0x83));
    await img.close();
    const check = await run("qemu-img", ["check", name]);
    assert.equal(check.code, 0, check.stdout + check.stderr);
  },
);

Deno.test({ name: "filters between raw and rbd (throttle, blkdebug) pass data through unchanged", ignore }, async () => {
  await using dir = await tempDir();
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "4M");
  const spec = {
    driver: "raw",
    file: { driver: "throttle", file: { driver: "blkdebug", image: { driver: "rbd", filename: rbdFilename(conf, image) } } },
  };
  const img = await open(spec);
  try {
    await img.pwrite(4096, pattern(3 * MiB, 0x91));
    await img.pwriteZeroes(MiB, 4096);
    await img.flush();
  } finally {
    await img.close();
  }
  const bytes = await rbdExport(conf, image, dir.path);
  const want = new Uint8Array(4 * MiB).fill(0x91, 4096, 4096 + 3 * MiB).fill(0, MiB, MiB + 4096);
  assert.ok(same(bytes, want));
});
