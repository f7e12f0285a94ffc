// checkQcow2() on undamaged images agrees with `qemu-img check`: the same
// counters and exit code for every cluster size and refcount width,
// compressed, extended-L2, version-2 and external-data-file images, and
// persistent bitmaps. Where QEMU is not installed the recorded fixtures of
// tests/testdata/make.sh stand in (_qemu_image.ts).
import assert from "node:assert/strict";
import { checkExitCode } from "../../../drivers/qcow2/check.ts";
import { runOk, tempDir } from "../../_helpers/qemu.ts";
import { qemuImage } from "./_qemu_image.ts";
import { assertAgrees, busyImage, create, io, readAt, writeAt } from "./_check_util.ts";

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
