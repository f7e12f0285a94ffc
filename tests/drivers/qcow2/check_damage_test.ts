// checkQcow2() on images damaged on disk reports what `qemu-img check`
// reports: leaks, refcounts too low or zero, two COPIED entries for one
// cluster, L2 entries past the end or misaligned, a misaligned refcount
// block, a bad snapshot L1 table — the same counters, messages and exit
// code. Recorded fixtures stand in without QEMU (_qemu_image.ts).
import assert from "node:assert/strict";
import { checkExitCode } from "../../../drivers/qcow2/check.ts";
import { tempDir } from "../../_helpers/qemu.ts";
import { sha256 } from "../../_helpers/fixtures.ts";
import { qemuImage, qemuRun } from "./_qemu_image.ts";
import {
  assertAgrees,
  assertRepairedClean,
  be64,
  busy,
  copy,
  create,
  firstL2,
  io,
  ourCheck,
  qemuMessages,
  readAt,
  setRefcount16,
  u64,
  writeAt,
} from "./_check_util.ts";

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
