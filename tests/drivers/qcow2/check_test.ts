// checkQcow2() against `qemu-img check`: the same counters, messages and
// exit code on clean images, damaged images (patched on disk) and after
// repairs; repairs leave the guest data unchanged.
import assert from "node:assert/strict";
import { open } from "../../../mod.ts";
import { checkExitCode, checkQcow2, type CheckResult, repairImage } from "../../../drivers/qcow2/check.ts";
import { formatCheckHuman } from "../../../cli/check.ts";
import { qemuCheck, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

async function ourCheck(path: string, repair?: "leaks" | "all"): Promise<CheckResult> {
  await using file = await open({ driver: "file", filename: path }, { readOnly: !repair });
  return await checkQcow2(file, { repair });
}

/** Asserts our check and qemu-img's agree on every counter and the exit code. */
async function assertAgrees(path: string): Promise<CheckResult> {
  const ours = await ourCheck(path);
  const theirs = await qemuCheck(path);
  const j = theirs.json;
  const want = {
    "check-errors": j["check-errors"] ?? 0,
    corruptions: j.corruptions ?? 0,
    leaks: j.leaks ?? 0,
    "image-end-offset": j["image-end-offset"] ?? 0,
    "total-clusters": j["total-clusters"] ?? 0,
    "allocated-clusters": j["allocated-clusters"] ?? 0,
    "fragmented-clusters": j["fragmented-clusters"] ?? 0,
    "compressed-clusters": j["compressed-clusters"] ?? 0,
  };
  const got = {
    "check-errors": ours.checkErrors,
    corruptions: ours.corruptions,
    leaks: ours.leaks,
    "image-end-offset": ours.imageEndOffset,
    "total-clusters": ours.totalClusters,
    "allocated-clusters": ours.allocatedClusters,
    "fragmented-clusters": ours.fragmentedClusters,
    "compressed-clusters": ours.compressedClusters,
  };
  assert.deepEqual(got, want);
  assert.equal(checkExitCode(ours), theirs.code);
  return ours;
}

/** qemu-img check's stderr lines (the per-cluster messages). */
async function qemuMessages(path: string, repair?: string): Promise<string[]> {
  const r = await run("qemu-img", ["check", ...(repair ? ["-r", repair] : []), path]);
  return r.stderr.split("\n").filter((l) => l !== "");
}

async function create(path: string, size: string, opts = ""): Promise<void> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...(opts ? ["-o", opts] : []), path, size]);
}

async function io(path: string, ...cmds: string[]): Promise<void> {
  await runOk("qemu-io", ["-f", "qcow2", ...cmds.flatMap((c) => ["-c", c]), path]);
}

async function readAt(path: string, offset: number, length: number): Promise<Uint8Array> {
  using f = await Deno.open(path, { read: true });
  await f.seek(offset, Deno.SeekMode.Start);
  const buf = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = await f.read(buf.subarray(done));
    if (n === null) break;
    done += n;
  }
  return buf;
}

async function writeAt(path: string, offset: number, data: Uint8Array): Promise<void> {
  using f = await Deno.open(path, { write: true });
  await f.seek(offset, Deno.SeekMode.Start);
  await f.write(data);
}

async function u64(path: string, offset: number): Promise<number> {
  return Number(new DataView((await readAt(path, offset, 8)).buffer).getBigUint64(0));
}

function be64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v);
  return b;
}

/** Sets the 16-bit refcount of `cluster` (image with 64k clusters, default refcount width). */
async function setRefcount16(path: string, cluster: number, value: number): Promise<void> {
  const reftable = await u64(path, 48);
  const block = (await u64(path, reftable)) & ~0x1ff;
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, value);
  await writeAt(path, block + cluster * 2, b);
}

/** Offset of the first L2 table (from L1 entry 0). */
async function firstL2(path: string): Promise<number> {
  const l1 = await u64(path, 40);
  return Number(BigInt(await u64(path, l1)) & 0x00fffffffffffe00n);
}

/** An image with data, a snapshot, overwritten data and a compressed cluster. */
async function busyImage(path: string, opts = "", clusterSize = "64k"): Promise<void> {
  await create(path, "64M", opts);
  await io(path, "write -P 1 0 1M", "write -P 2 10M 300k");
  await runOk("qemu-img", ["snapshot", "-c", "s1", path]);
  await io(path, "write -P 3 512k 1M", `write -c -P 4 20M ${clusterSize}`);
}

for (const cs of ["512", "4k", "64k", "2M"]) {
  Deno.test({
    name: `checkQcow2() agrees with qemu-img check on a clean image with ${cs} clusters`,
    ignore: QEMU,
    async fn() {
      await using dir = await tempDir();
      const path = `${dir.path}/t.qcow2`;
      await busyImage(path, `cluster_size=${cs}`, cs);
      const r = await assertAgrees(path);
      assert.equal(checkExitCode(r), 0);
      assert.ok(r.allocatedClusters > 0);
    },
  });
}

for (const bits of [1, 2, 4, 8, 32, 64]) {
  Deno.test({
    name: `checkQcow2() agrees with qemu-img check on a clean image with ${bits}-bit refcounts`,
    ignore: QEMU,
    async fn() {
      await using dir = await tempDir();
      const path = `${dir.path}/t.qcow2`;
      await create(path, "64M", `refcount_bits=${bits},cluster_size=4k`);
      await io(path, "write -P 1 0 256k", "write -P 2 5M 64k");
      if (bits > 1) await runOk("qemu-img", ["snapshot", "-c", "s1", path]);
      await io(path, "write -P 3 0 64k");
      assert.equal(checkExitCode(await assertAgrees(path)), 0);
    },
  });
}

Deno.test({
  name: "checkQcow2() agrees with qemu-img check on a compressed image (qemu-img convert -c)",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    await busyImage(`${dir.path}/a.qcow2`);
    await runOk("qemu-img", ["convert", "-c", "-O", "qcow2", `${dir.path}/a.qcow2`, `${dir.path}/c.qcow2`]);
    const r = await assertAgrees(`${dir.path}/c.qcow2`);
    assert.equal(r.compressedClusters, r.allocatedClusters);
  },
});

Deno.test({
  name: "checkQcow2() agrees with qemu-img check on extended L2 and version 2 images",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    await busyImage(`${dir.path}/x.qcow2`, "extended_l2=on,cluster_size=64k");
    await assertAgrees(`${dir.path}/x.qcow2`);
    await busyImage(`${dir.path}/v2.qcow2`, "compat=0.10");
    await assertAgrees(`${dir.path}/v2.qcow2`);
  },
});

Deno.test({
  name: "checkQcow2() counts persistent bitmaps, and reports them leaked when the autoclear bit is off",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/t.qcow2`;
    await create(path, "64M");
    await runOk("qemu-img", ["bitmap", "--add", path, "b1"]);
    await runOk("qemu-img", ["bitmap", "--add", "-g", "512k", path, "b2"]);
    await io(path, "write -P 1 0 4M");
    assert.equal(checkExitCode(await assertAgrees(path)), 0);
    // A program without bitmap support clears autoclear bit 0: the bitmap clusters leak.
    const autoclear = await readAt(path, 88, 8);
    autoclear[7] &= ~1;
    await writeAt(path, 88, autoclear);
    const r = await assertAgrees(path);
    assert.ok(r.leaks > 0);
  },
});

Deno.test({
  name: "checkQcow2() agrees with qemu-img check on images with an external data file",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    for (const raw of ["off", "on"]) {
      const path = `${dir.path}/t-${raw}.qcow2`;
      await create(path, "64M", `data_file=${dir.path}/data-${raw}.raw,data_file_raw=${raw}`);
      await io(path, "write -P 1 0 1M", "write -P 2 30M 64k");
      assert.equal(checkExitCode(await assertAgrees(path)), 0);
    }
  },
});

Deno.test({
  name: "checkQcow2() reports injected leaks with qemu-img's messages",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/t.qcow2`;
    await busyImage(path);
    await setRefcount16(path, 0, 2);
    await setRefcount16(path, 3, 3);
    const r = await assertAgrees(path);
    assert.equal(r.leaks, 2);
    assert.equal(checkExitCode(r), 3);
    assert.deepEqual(r.messages, await qemuMessages(path));
    assert.ok(r.messages.includes("Leaked cluster 0 refcount=2 reference=1"));
  },
});

Deno.test({
  name: "checkQcow2() reports a refcount that is too low, and a zero one, as qemu-img does",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/t.qcow2`;
    await busyImage(path);
    const l2 = await firstL2(path);
    const data = Number(BigInt(await u64(path, l2)) & 0x00fffffffffffe00n) / 65536;
    await setRefcount16(path, data, 1); // shared with the snapshot: should be 2
    await setRefcount16(path, l2 / 65536 - 1, 0);
    const r = await assertAgrees(path);
    assert.equal(checkExitCode(r), 2);
    assert.deepEqual(r.messages, await qemuMessages(path));
  },
});

Deno.test({
  name: "checkQcow2() reports two L2 entries with COPIED pointing at one cluster",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/t.qcow2`;
    await create(path, "64M");
    await io(path, "write -P 1 0 128k");
    const l2 = await firstL2(path);
    await writeAt(path, l2 + 8, await readAt(path, l2, 8));
    const r = await assertAgrees(path);
    assert.equal(r.corruptions, 1); // refcount=1 reference=2
    assert.equal(r.leaks, 1); // the cluster entry 1 pointed at before
    assert.deepEqual(r.messages, await qemuMessages(path));
    // Repair: the shared cluster gets refcount 2 and both entries lose COPIED.
    const theirs = `${dir.path}/theirs.qcow2`;
    await Deno.copyFile(path, theirs);
    const fixed = await ourCheck(path, "all");
    assert.deepEqual(fixed.messages, await qemuMessages(theirs, "all"));
    assert.equal(checkExitCode(fixed), 0);
    assert.equal((await qemuCheck(path)).code, 0);
    await runOk("cmp", [path, theirs]);
  },
});

Deno.test({
  name: "checkQcow2() reports L2 entries past the end of the file and misaligned ones",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/t.qcow2`;
    await create(path, "64M");
    await io(path, "write -P 1 0 192k");
    const l2 = await firstL2(path);
    await writeAt(path, l2, be64(0x8000000010000000n));
    await writeAt(path, l2 + 8, be64(0x8000000000050200n));
    const r = await assertAgrees(path);
    assert.deepEqual(r.messages, await qemuMessages(path));
  },
});

Deno.test({
  name: "checkQcow2() reports a misaligned refcount block like qemu-img, and repair=all rebuilds it",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    const orig = `${dir.path}/orig.qcow2`;
    const path = `${dir.path}/t.qcow2`;
    await busyImage(orig);
    await Deno.copyFile(orig, path);
    const reftable = await u64(path, 48);
    await writeAt(path, reftable, be64(BigInt((await u64(path, reftable)) + 512)));
    const r = await assertAgrees(path);
    assert.ok(r.checkErrors > 0);
    const theirs = (await qemuMessages(path)).filter((l) => !l.startsWith("qemu-img:"));
    assert.deepEqual(r.messages, theirs);
    // qemu-img -r all gives up here (the image is marked corrupt, so the new
    // refblocks cannot be written); this repair rebuilds the refcounts.
    const fixed = await ourCheck(path, "all");
    assert.equal(checkExitCode(fixed), 0);
    assert.equal((await u64(path, 72)) & 2, 0);
    assert.equal((await qemuCheck(path)).code, 0);
    await runOk("qemu-img", ["compare", orig, path]);
  },
});

Deno.test({
  name: "checkQcow2() reports a misaligned or huge snapshot L1 table like qemu-img (iotest 080)",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    for (const [at, patch] of [[0, be64(0x400200n)], [8, new Uint8Array([0x10, 0, 0, 0])]] as const) {
      const path = `${dir.path}/t-${at}.qcow2`;
      await busyImage(path);
      await writeAt(path, (await u64(path, 64)) + at, patch);
      const r = await assertAgrees(path);
      assert.equal(r.corruptions, 1);
      assert.deepEqual(r.messages, await qemuMessages(path));
    }
  },
});

Deno.test({
  name: "checkQcow2() repair=leaks fixes leaks; qemu-img check is then clean and data unchanged",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    const orig = `${dir.path}/orig.qcow2`;
    const path = `${dir.path}/t.qcow2`;
    await busyImage(orig);
    await Deno.copyFile(orig, path);
    await setRefcount16(path, 0, 2);
    await setRefcount16(path, 3, 5);
    const r = await ourCheck(path, "leaks");
    assert.equal(r.leaksFixed, 2);
    assert.equal(r.leaks, 0);
    assert.equal(checkExitCode(r), 0);
    assert.equal((await qemuCheck(path)).code, 0);
    await runOk("qemu-img", ["compare", orig, path]);
  },
});

Deno.test({
  name: "checkQcow2() repair=all rebuilds broken refcounts as qemu-img check -r all does",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    const orig = `${dir.path}/orig.qcow2`;
    const ours = `${dir.path}/ours.qcow2`;
    const theirs = `${dir.path}/theirs.qcow2`;
    await busyImage(orig);
    await Deno.copyFile(orig, ours);
    const l2 = await firstL2(ours);
    await setRefcount16(ours, 5, 1);
    await setRefcount16(ours, l2 / 65536, 0);
    await setRefcount16(ours, 2, 3);
    await Deno.copyFile(ours, theirs);
    const r = await ourCheck(ours, "all");
    assert.deepEqual(r.messages, await qemuMessages(theirs, "all"));
    const q = await qemuCheck(theirs);
    assert.equal(checkExitCode(r), q.code);
    assert.equal((await qemuCheck(ours)).code, 0);
    await runOk("qemu-img", ["compare", orig, ours]);
    // The rebuilt refcount structure is where QEMU puts it.
    await runOk("cmp", [ours, theirs]);
  },
});

Deno.test({
  name: "checkQcow2() repair=leaks refuses to fix a zero refcount, like qemu-img (exit 1)",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/t.qcow2`;
    await busyImage(path);
    await setRefcount16(path, 5, 0);
    const r = await ourCheck(path, "leaks");
    assert.equal(r.checkErrors, 1);
    assert.ok(r.messages.includes("ERROR need to rebuild refcount structures"));
    assert.equal(checkExitCode(r), 1);
  },
});

Deno.test({
  name: "repairImage() makes a dirty lazy-refcounts image clean and clears the dirty bit",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/t.qcow2`;
    await create(path, "64M", "lazy_refcounts=on");
    // Kill qemu-io after the write: the refcounts are never written.
    await run("qemu-io", ["-c", "write -P 7 0 1M", "-c", "sigraise 9", path]);
    assert.equal((await u64(path, 72)) & 1, 1);
    const before = await assertAgrees(path);
    assert.ok(before.corruptions > 0);
    {
      await using file = await open({ driver: "file", filename: path });
      const r = await repairImage(file);
      assert.equal(r.corruptions, 0);
      assert.ok(r.corruptionsFixed > 0);
    }
    assert.equal((await u64(path, 72)) & 1, 0);
    assert.equal((await qemuCheck(path)).code, 0);
    await runOk("qemu-io", ["-f", "qcow2", "-c", "read -P 7 0 1M", path]);
  },
});

Deno.test({
  name: "formatCheckHuman() prints what qemu-img check prints",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/t.qcow2`;
    await busyImage(path);
    assert.equal(formatCheckHuman(await ourCheck(path), path), (await run("qemu-img", ["check", path])).stdout);
    await setRefcount16(path, 3, 2);
    assert.equal(formatCheckHuman(await ourCheck(path), path), (await run("qemu-img", ["check", path])).stdout);
    await setRefcount16(path, 5, 1);
    assert.equal(formatCheckHuman(await ourCheck(path), path), (await run("qemu-img", ["check", path])).stdout);
    const copy = `${dir.path}/copy.qcow2`;
    await Deno.copyFile(path, copy);
    const fixed = formatCheckHuman(await ourCheck(path, "all"), path);
    assert.equal(fixed, (await run("qemu-img", ["check", "-r", "all", copy])).stdout);
  },
});

Deno.test("checkExitCode() maps results to qemu-img's exit codes", () => {
  assert.equal(checkExitCode({ checkErrors: 0, corruptions: 0, leaks: 0 }), 0);
  assert.equal(checkExitCode({ checkErrors: 1, corruptions: 3, leaks: 2 }), 1);
  assert.equal(checkExitCode({ checkErrors: 0, corruptions: 3, leaks: 2 }), 2);
  assert.equal(checkExitCode({ checkErrors: 0, corruptions: 0, leaks: 2 }), 3);
});

Deno.test("checkQcow2() refuses to repair a read-only node", async () => {
  await using file = await open({ driver: "memory", size: 65536 }, { readOnly: true });
  await assert.rejects(checkQcow2(file, { repair: "leaks" }), /read-only/);
});
