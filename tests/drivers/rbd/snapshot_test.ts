import assert from "node:assert/strict";
import { type BlockError, open } from "../../../mod.ts";
import { cephConf, imageName, rbdCreate, rbdExport, rbdFilename, rbdInfo, skipUnlessCeph } from "../../_helpers/ceph.ts";
import { pattern, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { cli } from "../../cli/_run.ts";

const ignore = skipUnlessCeph() || skipUnless("qemu-img", "qemu-io");
const MiB = 1 << 20;

async function snapNames(conf: string, image: string): Promise<string[]> {
  const r = await runOk("rbd", ["-c", conf, "snap", "ls", "--format", "json", `rbd/${image}`]);
  return JSON.parse(r.stdout).map((s: { name: string }) => s.name);
}

async function ok(args: string[]): Promise<string> {
  const r = await cli(args);
  assert.equal(r.code, 0, `blkgraph ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

Deno.test({ name: "snapshot -c, -a and -d on an rbd raw image create, roll back to and remove RBD snapshots", ignore }, async () => {
  await using dir = await tempDir();
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "4M");
  const name = rbdFilename(conf, image);
  await ok(["io", "-f", "raw", "-c", "write -P 0x0a 0 64k", name]);
  await ok(["snapshot", "-c", "before", name]);
  assert.deepEqual(await snapNames(conf, image), ["before"]);
  await ok(["io", "-f", "raw", "-c", "write -P 0x0b 0 64k", name]);
  assert.equal((await rbdExport(conf, image, dir.path))[0], 0x0b);
  await ok(["snapshot", "-a", "before", name]);
  assert.equal((await rbdExport(conf, image, dir.path))[0], 0x0a);
  await ok(["snapshot", "-d", "before", name]);
  assert.deepEqual(await snapNames(conf, image), []);
});

Deno.test({ name: "snapshot -l and info list RBD snapshots exactly as qemu-img does", ignore }, async () => {
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "4M");
  await runOk("rbd", ["-c", conf, "snap", "create", `rbd/${image}@first`]);
  await runOk("rbd", ["-c", conf, "resize", `rbd/${image}`, "--size", "8M"]);
  await runOk("qemu-img", ["snapshot", "-c", "second", rbdFilename(conf, image)]);
  const name = rbdFilename(conf, image);
  assert.equal(await ok(["snapshot", "-l", name]), (await runOk("qemu-img", ["snapshot", "-l", name])).stdout);
  // qemu-img names the image json:{...} (the options it parsed); everything else matches.
  const ours = JSON.parse(await ok(["info", "--output=json", name]));
  const theirs = JSON.parse((await runOk("qemu-img", ["info", "--output=json", name])).stdout);
  assert.equal(ours.filename, name);
  delete ours.filename;
  delete theirs.filename;
  assert.deepEqual(ours, theirs);
  assert.deepEqual(ours.snapshots.map((s: { name: string; "vm-state-size": number }) => [s.name, s["vm-state-size"]]), [
    ["first", 4 * MiB],
    ["second", 8 * MiB],
  ]);
  const human = (s: string) => s.split("\n").filter((l) => !l.startsWith("image:")).join("\n");
  assert.equal(human(await ok(["info", name])), human((await runOk("qemu-img", ["info", name])).stdout));
});

Deno.test({ name: "snapshot errors on rbd read as qemu-img's", ignore }, async () => {
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "1M");
  const name = rbdFilename(conf, image);
  await runOk("rbd", ["-c", conf, "snap", "create", `rbd/${image}@taken`]);
  // The last line each tool prefixes with its name (qemu-img warns about probing first).
  const last = (s: string) => s.split("\n").filter((l) => /^(blkgraph|qemu-img): /.test(l)).pop()?.replace(/^\S+ /, "");
  for (const args of [["-c", "taken"], ["-a", "missing"], ["-d", "missing"], ["-c", ""], ["-l", "-c", "x"]]) {
    const ours = await cli(["snapshot", ...args, name]);
    const theirs = await run("qemu-img", ["snapshot", ...args, name]);
    assert.deepEqual([ours.code, last(ours.stderr)], [theirs.code, last(theirs.stderr)], args.join(" "));
  }
});

Deno.test({ name: "snapshotGoto() restores the snapshot's size and contents on the node", ignore }, async () => {
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "4M");
  await using img = await open(rbdFilename(conf, image), { format: "raw" });
  await img.pwrite(MiB, pattern(4096, 0x31));
  await img.snapshots.create({ id: "", name: "s", vmStateSize: 0, dateSec: 0, dateNsec: 0, vmClockNsec: 0 });
  await img.truncate(8 * MiB);
  await img.pwrite(MiB, pattern(4096, 0x32));
  await img.snapshots.goto("s");
  assert.equal(img.length, 4 * MiB);
  assert.equal((await rbdInfo(conf, image)).size, 4 * MiB);
  const back = new Uint8Array(4096);
  await img.pread(MiB, back);
  assert.ok(back.every((b) => b === 0x31));
  assert.deepEqual((await img.snapshots.list()).map((s) => [s.id, s.name, s.vmStateSize]), [["s", "s", 4 * MiB]]);
  await img.snapshots.delete("s");
  assert.deepEqual(await img.snapshots.list(), []);
});

Deno.test({ name: "a snapshot is flushed data: writes made before snapshotCreate are in it", ignore }, async () => {
  await using dir = await tempDir();
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "4M");
  await using img = await open(`${rbdFilename(conf, image)}:rbd_cache_policy=writeback:rbd_cache_max_dirty_age=60`, { format: "raw" });
  await img.pwrite(0, pattern(8192, 0x44));
  await img.snapshots.create({ id: "", name: "s", vmStateSize: 0, dateSec: 0, dateNsec: 0, vmClockNsec: 0 });
  await img.pwrite(0, pattern(8192, 0x45));
  await runOk("rbd", ["-c", conf, "export", `rbd/${image}@s`, `${dir.path}/s.raw`]);
  assert.equal((await Deno.readFile(`${dir.path}/s.raw`))[0], 0x44);
});

Deno.test({ name: "reading from @snap sees the snapshot, as qemu-io does, while the image moves on", ignore }, async () => {
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "2M");
  await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x51 0 1M", rbdFilename(conf, image)]);
  await runOk("rbd", ["-c", conf, "snap", "create", `rbd/${image}@s1`]);
  await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x52 0 1M", rbdFilename(conf, image)]);
  await using snap = await open(rbdFilename(conf, `${image}@s1`), { format: "raw", readOnly: true });
  const buf = new Uint8Array(MiB);
  await snap.pread(0, buf);
  assert.ok(buf.every((b) => b === 0x51));
  await assert.rejects(snap.pwrite(0, buf), (e: BlockError) => e.code === "EROFS");
  const q = await run("qemu-io", ["-f", "raw", "-r", "-c", "read -P 0x51 0 1M", rbdFilename(conf, `${image}@s1`)]);
  assert.doesNotMatch(q.stdout, /verification failed/);
});

Deno.test({ name: "snapshot -c on a qcow2 image on rbd is the qcow2's business: no RBD snapshot is taken", ignore }, async () => {
  const conf = await cephConf();
  const image = imageName();
  const name = rbdFilename(conf, image);
  await ok(["create", "-q", "-f", "qcow2", name, "4M"]);
  const r = await cli(["snapshot", "-c", "s1", name]);
  if (r.code === 0) {
    // A qcow2 driver with internal snapshots: the snapshot is in the qcow2, as qemu-img makes it.
    assert.match(await ok(["snapshot", "-l", name]), /s1/);
  } else assert.match(r.stderr, /driver 'qcow2' cannot create snapshots yet/);
  assert.deepEqual(await snapNames(conf, image), []);
});
