/**
 * Persistent bitmaps next to the qcow2 features of the `qcow2` branch
 * (amend, raw data files), with QEMU as the reference.
 */
import assert from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const CLI = new URL("../../../cli/main.ts", import.meta.url).pathname;
import { assertClean, openQcow2 } from "./_util.ts";
import { ourDirty, qemuBitmaps, qemuDirty } from "./_bitmap_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");
const ignoreNbd = skipUnless("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo");

Deno.test({
  name: "qcow2 amend() size= resizes the persistent bitmaps: a write past the old end is dirty in what qemu-nbd exports",
  ignore: ignoreNbd,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
    await runOk("qemu-img", ["bitmap", "--add", path, "b0"]);
    const at = 50 * 2 ** 30;
    let ours: string[];
    {
      await using n = await openQcow2(path);
      await n.amend({ size: "100G" });
      await n.pwrite(at, new Uint8Array(4096).fill(1));
      ours = await ourDirty(n, "b0");
    }
    assert.deepEqual(ours, [`${at}+65536`]);
    assert.deepEqual(await qemuDirty(path, "b0"), ours);
    await assertClean(path);
  },
});

Deno.test({
  name: "qcow2 open read-write keeps data_file_raw and the bitmaps (qemu-img info still shows both)",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${dir.path}/a.data,data_file_raw=on`, path, "1M"]);
    await runOk("qemu-img", ["bitmap", "--add", path, "b0"]);
    {
      await using n = await openQcow2(path);
      await n.pwrite(0, new Uint8Array(512).fill(7));
    }
    const info = JSON.parse((await runOk("qemu-img", ["info", "--output=json", path])).stdout);
    assert.equal(info["format-specific"].data["data-file-raw"], true);
    assert.deepEqual(await qemuBitmaps(path), [{ flags: ["auto"], name: "b0", granularity: 65536 }]);
    await assertClean(path);
  },
});

Deno.test({
  name: "qcow2 snapshot -a refuses an image with dirty bitmaps (enabled or not) as qemu-img snapshot -a does",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const out: string[] = [];
    for (const prog of ["qemu-img", "blkgraph"]) {
      const path = `${dir.path}/${prog}.qcow2`;
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
      await runOk("qemu-img", ["bitmap", "--add", "--disable", path, "b0"]);
      await runOk("qemu-img", ["snapshot", "-c", "s1", path]);
      const args = ["snapshot", "-a", "s1", path];
      const r = prog === "qemu-img" ? await run("qemu-img", args) : await run(Deno.execPath(), ["run", "-A", CLI, ...args]);
      assert.equal(r.code, 1);
      out.push(r.stderr.replace(/^(qemu-img|blkgraph): /, ""));
    }
    assert.equal(out[1], out[0]);
  },
});
