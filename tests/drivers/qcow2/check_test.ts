// checkQcow2() against `qemu-img check`: the same counters, messages and
// exit code on clean images, damaged images (patched on disk) and after
// repairs; repairs leave the guest data unchanged. Where QEMU is installed
// each image is made and checked live; where it is not, the test uses the
// fixture tests/testdata/make.sh made with the same commands and the
// `qemu-img check` runs recorded on it (_qemu_image.ts).
import assert from "node:assert/strict";
import { open } from "../../../mod.ts";
import { checkExitCode, checkQcow2, type CheckResult, repairImage } from "../../../drivers/qcow2/check.ts";
import { formatCheckHuman } from "../../../cli/check.ts";
import { run, runOk, tempDir } from "../../_helpers/qemu.ts";
import { sha256 } from "../../_helpers/fixtures.ts";
import { assertReadsLikeQemu, type QemuImage, qemuImage, qemuRun } from "./_qemu_image.ts";
import { openQcow2 } from "./_util.ts";

async function ourCheck(path: string, repair?: "leaks" | "all"): Promise<CheckResult> {
  await using file = await open({ driver: "file", filename: path }, { readOnly: !repair });
  return await checkQcow2(file, { repair });
}

/** `qemu-img check --output=json` on the image (live or recorded): exit code and parsed JSON. */
async function qemuCheck(img: QemuImage): Promise<{ code: number; json: Record<string, number> }> {
  const r = await qemuRun(img, "check --output=json @IMG@");
  return { code: r.code, json: r.stdout ? JSON.parse(r.stdout) : {} };
}

/** Asserts our check and qemu-img's agree on every counter and the exit code. */
async function assertAgrees(img: QemuImage): Promise<CheckResult> {
  const ours = await ourCheck(img.path);
  const theirs = await qemuCheck(img);
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

/** qemu-img check's stderr lines (the per-cluster messages), live or recorded. */
async function qemuMessages(img: QemuImage, repair?: "leaks" | "all"): Promise<string[]> {
  const r = await qemuRun(img, repair ? `check -r ${repair} @IMG@` : "check @IMG@");
  return r.stderr.split("\n").filter((l) => l !== "");
}

/**
 * Asserts a repaired image is clean and still holds `base`'s guest data: by
 * qemu-img check and compare where QEMU is installed; offline by our check
 * and the content qemu-img converted from the undamaged fixture.
 */
async function assertRepairedClean(path: string, base: QemuImage): Promise<void> {
  if (base.live) {
    assert.equal((await run("qemu-img", ["check", path])).code, 0);
    await runOk("qemu-img", ["compare", base.path, path]);
    return;
  }
  assert.equal(checkExitCode(await ourCheck(path)), 0);
  await using node = await openQcow2(path, {}, true);
  await assertReadsLikeQemu(node, base);
}

/** Copies an image's file under another name in its directory; returns the copy's path. */
async function copy(img: QemuImage, name: string): Promise<string> {
  const to = `${img.path.slice(0, img.path.lastIndexOf("/"))}/${name}`;
  await Deno.copyFile(img.path, to);
  return to;
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

/** An image with data, a snapshot, overwritten data and a compressed cluster (make.sh's `busy`). */
async function busyImage(path: string, opts = "", clusterSize = "64k"): Promise<void> {
  await create(path, "64M", opts);
  await io(path, "write -P 1 0 1M", "write -P 2 10M 300k");
  await runOk("qemu-img", ["snapshot", "-c", "s1", path]);
  await io(path, "write -P 3 512k 1M", `write -c -P 4 20M ${clusterSize}`);
}

/** The busy-64k image, or fixture `name` (made from busy-64k by `damage`), live or unpacked. */
function busy(dir: string, name = "busy-64k.qcow2", damage: (path: string) => Promise<void> = async () => {}): Promise<QemuImage> {
  return qemuImage(dir, name, async (path) => {
    await busyImage(path);
    await damage(path);
  });
}

for (const cs of ["512", "4k", "64k", "2M"]) {
  Deno.test({
    name: `checkQcow2() agrees with qemu-img check on a clean image with ${cs} clusters`,
    async fn() {
      await using dir = await tempDir();
      const img = await qemuImage(dir.path, `busy-${cs}.qcow2`, (p) => busyImage(p, `cluster_size=${cs}`, cs));
      const r = await assertAgrees(img);
      assert.equal(checkExitCode(r), 0);
      assert.ok(r.allocatedClusters > 0);
    },
  });
}

for (const bits of [1, 2, 4, 8, 32, 64]) {
  Deno.test({
    name: `checkQcow2() agrees with qemu-img check on a clean image with ${bits}-bit refcounts`,
    async fn() {
      await using dir = await tempDir();
      const img = await qemuImage(dir.path, `refcount${bits}.qcow2`, async (path) => {
        await create(path, "64M", `refcount_bits=${bits},cluster_size=4k`);
        await io(path, "write -P 1 0 256k", "write -P 2 5M 64k");
        if (bits > 1) await runOk("qemu-img", ["snapshot", "-c", "s1", path]);
        await io(path, "write -P 3 0 64k");
      });
      assert.equal(checkExitCode(await assertAgrees(img)), 0);
    },
  });
}

Deno.test({
  name: "checkQcow2() agrees with qemu-img check on a compressed image (qemu-img convert -c)",
  async fn() {
    await using dir = await tempDir();
    const img = await qemuImage(dir.path, "busy-compressed.qcow2", async (path) => {
      await busyImage(`${dir.path}/a.qcow2`);
      await runOk("qemu-img", ["convert", "-c", "-O", "qcow2", `${dir.path}/a.qcow2`, path]);
    });
    const r = await assertAgrees(img);
    assert.equal(r.compressedClusters, r.allocatedClusters);
  },
});

Deno.test({
  name: "checkQcow2() agrees with qemu-img check on extended L2 and version 2 images",
  async fn() {
    await using dir = await tempDir();
    await assertAgrees(await qemuImage(dir.path, "busy-extl2.qcow2", (p) => busyImage(p, "extended_l2=on,cluster_size=64k")));
    await assertAgrees(await qemuImage(dir.path, "busy-v2.qcow2", (p) => busyImage(p, "compat=0.10")));
  },
});

Deno.test({
  name: "checkQcow2() counts persistent bitmaps, and reports them leaked when the autoclear bit is off",
  async fn() {
    await using dir = await tempDir();
    const bitmaps = async (path: string) => {
      await create(path, "64M");
      await runOk("qemu-img", ["bitmap", "--add", path, "b1"]);
      await runOk("qemu-img", ["bitmap", "--add", "-g", "512k", path, "b2"]);
      await io(path, "write -P 1 0 4M");
    };
    assert.equal(checkExitCode(await assertAgrees(await qemuImage(dir.path, "bitmaps.qcow2", bitmaps))), 0);
    // A program without bitmap support clears autoclear bit 0: the bitmap clusters leak.
    const cleared = await qemuImage(dir.path, "bitmaps-cleared.qcow2", async (path) => {
      await bitmaps(path);
      const autoclear = await readAt(path, 88, 8);
      autoclear[7] &= ~1;
      await writeAt(path, 88, autoclear);
    });
    const r = await assertAgrees(cleared);
    assert.ok(r.leaks > 0);
  },
});

Deno.test({
  name: "checkQcow2() agrees with qemu-img check on images with an external data file",
  async fn() {
    await using dir = await tempDir();
    for (const raw of ["off", "on"]) {
      const img = await qemuImage(dir.path, `datafile-raw-${raw}.qcow2`, async (path) => {
        await create(path, "64M", `data_file=${dir.path}/data-${raw}.data,data_file_raw=${raw}`);
        await io(path, "write -P 1 0 1M", "write -P 2 30M 64k");
      });
      assert.equal(checkExitCode(await assertAgrees(img)), 0);
    }
  },
});

Deno.test({
  name: "checkQcow2() reports injected leaks with qemu-img's messages",
  async fn() {
    await using dir = await tempDir();
    const img = await busy(dir.path, "bad-leaks.qcow2", async (path) => {
      await setRefcount16(path, 0, 2);
      await setRefcount16(path, 3, 3);
    });
    const r = await assertAgrees(img);
    assert.equal(r.leaks, 2);
    assert.equal(checkExitCode(r), 3);
    assert.deepEqual(r.messages, await qemuMessages(img));
    assert.ok(r.messages.includes("Leaked cluster 0 refcount=2 reference=1"));
  },
});

Deno.test({
  name: "checkQcow2() reports a refcount that is too low, and a zero one, as qemu-img does",
  async fn() {
    await using dir = await tempDir();
    const img = await busy(dir.path, "bad-lowref.qcow2", async (path) => {
      const l2 = await firstL2(path);
      const data = Number(BigInt(await u64(path, l2)) & 0x00fffffffffffe00n) / 65536;
      await setRefcount16(path, data, 1); // shared with the snapshot: should be 2
      await setRefcount16(path, l2 / 65536 - 1, 0);
    });
    const r = await assertAgrees(img);
    assert.equal(checkExitCode(r), 2);
    assert.deepEqual(r.messages, await qemuMessages(img));
  },
});

Deno.test({
  name: "checkQcow2() reports two L2 entries with COPIED pointing at one cluster",
  async fn() {
    await using dir = await tempDir();
    const img = await qemuImage(dir.path, "bad-copied.qcow2", async (path) => {
      await create(path, "64M");
      await io(path, "write -P 1 0 128k");
      const l2 = await firstL2(path);
      await writeAt(path, l2 + 8, await readAt(path, l2, 8));
    });
    const r = await assertAgrees(img);
    assert.equal(r.corruptions, 1); // refcount=1 reference=2
    assert.equal(r.leaks, 1); // the cluster entry 1 pointed at before
    assert.deepEqual(r.messages, await qemuMessages(img));
    // Repair: the shared cluster gets refcount 2 and both entries lose COPIED.
    const ours = await copy(img, "ours.qcow2");
    const fixed = await ourCheck(ours, "all");
    const theirs = await qemuRun(img, "check -r all @IMG@");
    assert.deepEqual(fixed.messages, theirs.stderr.split("\n").filter((l) => l !== ""));
    assert.equal(checkExitCode(fixed), theirs.code);
    assert.equal(sha256(await Deno.readFile(ours)), theirs.imageSha256, "our repair writes the bytes qemu-img check -r all writes");
  },
});

Deno.test({
  name: "checkQcow2() reports L2 entries past the end of the file and misaligned ones",
  async fn() {
    await using dir = await tempDir();
    const img = await qemuImage(dir.path, "bad-l2.qcow2", async (path) => {
      await create(path, "64M");
      await io(path, "write -P 1 0 192k");
      const l2 = await firstL2(path);
      await writeAt(path, l2, be64(0x8000000010000000n));
      await writeAt(path, l2 + 8, be64(0x8000000000050200n));
    });
    const r = await assertAgrees(img);
    assert.deepEqual(r.messages, await qemuMessages(img));
  },
});

Deno.test({
  name: "checkQcow2() reports a misaligned refcount block like qemu-img, and repair=all rebuilds it",
  async fn() {
    await using dir = await tempDir();
    const orig = await busy(dir.path);
    const img = await busy(dir.path, "bad-refblock.qcow2", async (path) => {
      const reftable = await u64(path, 48);
      await writeAt(path, reftable, be64(BigInt((await u64(path, reftable)) + 512)));
    });
    const r = await assertAgrees(img);
    assert.ok(r.checkErrors > 0);
    const theirs = (await qemuMessages(img)).filter((l) => !l.startsWith("qemu-img:"));
    assert.deepEqual(r.messages, theirs);
    // qemu-img -r all gives up here (the image is marked corrupt, so the new
    // refblocks cannot be written); this repair rebuilds the refcounts.
    const ours = await copy(img, "ours.qcow2");
    assert.equal((await qemuRun(img, "check -r all @IMG@")).code, 1);
    const fixed = await ourCheck(ours, "all");
    assert.equal(checkExitCode(fixed), 0);
    assert.equal((await u64(ours, 72)) & 2, 0);
    await assertRepairedClean(ours, orig);
  },
});

Deno.test({
  name: "checkQcow2() reports a misaligned or huge snapshot L1 table like qemu-img (iotest 080)",
  async fn() {
    await using dir = await tempDir();
    for (const [at, patch, name] of [[0, be64(0x400200n), "offset"], [8, new Uint8Array([0x10, 0, 0, 0]), "size"]] as const) {
      const img = await busy(dir.path, `bad-snap-l1-${name}.qcow2`, async (path) => {
        await writeAt(path, (await u64(path, 64)) + at, patch);
      });
      const r = await assertAgrees(img);
      assert.equal(r.corruptions, 1);
      assert.deepEqual(r.messages, await qemuMessages(img));
    }
  },
});

Deno.test({
  name: "checkQcow2() repair=leaks fixes leaks as qemu-img check -r leaks does (the same bytes); data unchanged",
  async fn() {
    await using dir = await tempDir();
    const orig = await busy(dir.path);
    const img = await busy(dir.path, "bad-leaks5.qcow2", async (path) => {
      await setRefcount16(path, 0, 2);
      await setRefcount16(path, 3, 5);
    });
    const ours = await copy(img, "ours.qcow2");
    const r = await ourCheck(ours, "leaks");
    assert.equal(r.leaksFixed, 2);
    assert.equal(r.leaks, 0);
    assert.equal(checkExitCode(r), 0);
    const theirs = await qemuRun(img, "check -r leaks @IMG@");
    assert.equal(theirs.code, 0);
    assert.equal(sha256(await Deno.readFile(ours)), theirs.imageSha256, "our repair writes the bytes qemu-img check -r leaks writes");
    await assertRepairedClean(ours, orig);
  },
});

Deno.test({
  name: "checkQcow2() repair=all rebuilds broken refcounts as qemu-img check -r all does",
  async fn() {
    await using dir = await tempDir();
    const orig = await busy(dir.path);
    const img = await busy(dir.path, "bad-rebuild.qcow2", async (path) => {
      const l2 = await firstL2(path);
      await setRefcount16(path, 5, 1);
      await setRefcount16(path, l2 / 65536, 0);
      await setRefcount16(path, 2, 3);
    });
    const ours = await copy(img, "ours.qcow2");
    const r = await ourCheck(ours, "all");
    const theirs = await qemuRun(img, "check -r all @IMG@");
    assert.deepEqual(r.messages, theirs.stderr.split("\n").filter((l) => l !== ""));
    assert.equal(checkExitCode(r), theirs.code);
    await assertRepairedClean(ours, orig);
    // The rebuilt refcount structure is where QEMU puts it.
    assert.equal(sha256(await Deno.readFile(ours)), theirs.imageSha256, "our rebuild writes the bytes qemu-img check -r all writes");
  },
});

Deno.test({
  name: "checkQcow2() repair=leaks refuses to fix a zero refcount with qemu-img's messages and exit code",
  async fn() {
    await using dir = await tempDir();
    const img = await busy(dir.path, "bad-zero-refcount.qcow2", (path) => setRefcount16(path, 5, 0));
    const ours = await copy(img, "ours.qcow2");
    const r = await ourCheck(ours, "leaks");
    const theirs = await qemuRun(img, "check -r leaks @IMG@");
    // qemu-img ends with "qemu-img: Check failed: ..." (the CLI's line, not the check's messages).
    assert.deepEqual(r.messages, theirs.stderr.split("\n").filter((l) => l !== "" && !l.startsWith("qemu-img:")));
    assert.ok(r.messages.includes("ERROR need to rebuild refcount structures"));
    assert.equal(checkExitCode(r), theirs.code);
    assert.equal(sha256(await Deno.readFile(ours)), theirs.imageSha256, "neither repair changes the image");
  },
});

Deno.test({
  name: "repairImage() makes a dirty lazy-refcounts image clean and clears the dirty bit",
  async fn() {
    await using dir = await tempDir();
    const img = await qemuImage(dir.path, "dirty-killed.qcow2", async (path) => {
      await create(path, "64M", "lazy_refcounts=on");
      // Kill qemu-io after the write: the refcounts are never written.
      await run("qemu-io", ["-c", "write -P 7 0 1M", "-c", "sigraise 9", path]);
    });
    assert.equal((await u64(img.path, 72)) & 1, 1);
    const before = await assertAgrees(img);
    assert.ok(before.corruptions > 0);
    const ours = await copy(img, "ours.qcow2");
    {
      await using file = await open({ driver: "file", filename: ours });
      const r = await repairImage(file);
      assert.equal(r.corruptions, 0);
      assert.ok(r.corruptionsFixed > 0);
    }
    assert.equal((await u64(ours, 72)) & 1, 0);
    // The same guest data (1M of 7) as qemu-img reads from the dirty image, and clean.
    await assertRepairedClean(ours, img);
  },
});

Deno.test({
  name: "formatCheckHuman() prints what qemu-img check prints",
  async fn() {
    await using dir = await tempDir();
    const leak = (path: string) => setRefcount16(path, 3, 2);
    const images = [
      await busy(dir.path),
      await busy(dir.path, "bad-human.qcow2", leak),
      await busy(dir.path, "bad-human2.qcow2", async (path) => {
        await leak(path);
        await setRefcount16(path, 5, 1);
      }),
    ];
    for (const img of images) {
      assert.equal(formatCheckHuman(await ourCheck(img.path), img.path), (await qemuRun(img, "check @IMG@")).stdout, img.fixture);
    }
    const last = images[2];
    const ours = await copy(last, "ours.qcow2");
    const fixed = formatCheckHuman(await ourCheck(ours, "all"), last.path);
    assert.equal(fixed, (await qemuRun(last, "check -r all @IMG@")).stdout);
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
