import assert from "node:assert/strict";
import { type BlockError, CorruptImageError } from "../../../mod.ts";
import { run, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { openQcow2, qemuCreate, qemuIo } from "./_util.ts";

/** Moves the host offset of the first L2 entry of L2 table 0 by 512 bytes (misaligned). */
async function misalignFirstCluster(path: string): Promise<void> {
  const img = await Deno.readFile(path);
  const v = new DataView(img.buffer);
  const l1 = Number(v.getBigUint64(40));
  const l2 = Number(v.getBigUint64(l1) & 0x00fffffffffffe00n);
  v.setBigUint64(l2, v.getBigUint64(l2) + 512n);
  await Deno.writeFile(path, img);
}

Deno.test({
  name: "qcow2 marks an image corrupt when it finds corruption read-write, and refuses changes after",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/a.qcow2`;
    await qemuCreate(path, "1M");
    await qemuIo(path, "write -P 1 0 64k");
    await misalignFirstCluster(path);
    {
      await using img = await openQcow2(path);
      await assert.rejects(img.pread(0, new Uint8Array(512)), (e: Error) => e instanceof CorruptImageError && /unaligned/.test(e.message));
      await assert.rejects(
        img.pwrite(65536, new Uint8Array(512)),
        (e: BlockError) => e.code === "ENOMEDIUM" && /marked corrupt/.test(e.message),
      );
    }
    const info = JSON.parse((await run("qemu-img", ["info", "--output=json", path])).stdout);
    assert.equal(info["format-specific"].data.corrupt, true);
    // Read-only opens still work, read-write ones are refused, as with QEMU.
    {
      await using ro = await openQcow2(path, {}, true);
      await ro.pread(65536, new Uint8Array(512));
    }
    await assert.rejects(openQcow2(path), /corrupt/);
  },
});

Deno.test({
  name: "qcow2 does not mark a read-only image corrupt",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/a.qcow2`;
    await qemuCreate(path, "1M");
    await qemuIo(path, "write -P 1 0 64k");
    await misalignFirstCluster(path);
    {
      await using ro = await openQcow2(path, {}, true);
      await assert.rejects(ro.pread(0, new Uint8Array(512)), CorruptImageError);
    }
    const info = JSON.parse((await run("qemu-img", ["info", "--output=json", path])).stdout);
    assert.equal(info["format-specific"].data.corrupt, false);
  },
});
