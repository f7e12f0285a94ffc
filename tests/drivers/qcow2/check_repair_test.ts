// checkQcow2() repairs as `qemu-img check -r` does: repair=leaks and
// repair=all write the bytes qemu-img writes and keep the guest data,
// repair=leaks refuses a zero refcount, repairImage() cleans a dirty
// lazy-refcounts image, and a read-only node is not repaired. Recorded
// fixtures stand in without QEMU (_qemu_image.ts).
import assert from "node:assert/strict";
import { open } from "../../../mod.ts";
import { checkExitCode, checkQcow2, repairImage } from "../../../drivers/qcow2/check.ts";
import { run, tempDir } from "../../_helpers/qemu.ts";
import { sha256 } from "../../_helpers/fixtures.ts";
import { qemuImage, qemuRun } from "./_qemu_image.ts";
import { assertAgrees, assertRepairedClean, busy, copy, create, firstL2, ourCheck, setRefcount16, u64 } from "./_check_util.ts";

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

Deno.test("checkQcow2() refuses to repair a read-only node", async () => {
  await using file = await open({ driver: "memory", size: 65536 }, { readOnly: true });
  await assert.rejects(checkQcow2(file, { repair: "leaks" }), /read-only/);
});
