/**
 * Persistent dirty bitmaps on an encrypted qcow2 image: bitmaps track guest
 * offsets, so encryption changes nothing in what they record. Checked
 * against QEMU (qemu-io writes, qemu-nbd -B exports) both ways.
 */
import assert from "node:assert/strict";
import { open } from "../../../core/open.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { QEMU_SECRETS, qemuImgKeyslots, testSecrets } from "../luks/_util.ts";
import { ourDirty, qemuDirty } from "./_bitmap_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo");
const MiB = 1 << 20;
const qemuImage = (path: string) => ({ spec: `driver=qcow2,encrypt.key-secret=sec0,file.filename=${path}`, objects: QEMU_SECRETS });

async function createEncrypted(path: string): Promise<void> {
  const r = await qemuImgKeyslots([
    "create",
    "-q",
    "-f",
    "qcow2",
    ...QEMU_SECRETS,
    "-o",
    "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
    path,
    "8M",
  ]);
  assert.equal(r.code, 0, r.stderr);
  await runOk("qemu-img", ["bitmap", ...QEMU_SECRETS, "--add", "--image-opts", qemuImage(path).spec, "b0"]);
}

async function openEncrypted(path: string, readOnly = false) {
  testSecrets();
  return await open({ driver: "qcow2", "encrypt.key-secret": "sec0", file: { driver: "file", filename: path } }, { readOnly });
}

Deno.test({
  name: "qcow2 bitmaps on an encrypted image record guest writes, zero-writes and discards as QEMU's do, and pass qemu-img check",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const ours = `${dir.path}/ours.qcow2`;
    const theirs = `${dir.path}/theirs.qcow2`;
    await createEncrypted(ours);
    await createEncrypted(theirs);
    {
      await using n = await openEncrypted(ours);
      await n.pwrite(65024, new Uint8Array(1024).fill(3)); // straddles two 64 KiB chunks
      await n.pwriteZeroes(3 * MiB, 128 * 1024);
      await n.pdiscard(6 * MiB, 64 * 1024);
    }
    const io = ["write -P 3 65024 1024", "write -z 3M 128k", "discard 6M 64k"].flatMap((c) => ["-c", c]);
    await runOk("qemu-io", [...QEMU_SECRETS, "--image-opts", ...io, qemuImage(theirs).spec]);
    const want = await qemuDirty(theirs, "b0", qemuImage(theirs));
    assert.deepEqual(want, ["0+131072", "3145728+131072", "6291456+65536"]);
    assert.deepEqual(await qemuDirty(ours, "b0", qemuImage(ours)), want);
    {
      await using n = await openEncrypted(theirs, true);
      assert.deepEqual(await ourDirty(n, "b0"), want);
    }
    const r = await run("qemu-img", ["check", ...QEMU_SECRETS, "--image-opts", qemuImage(ours).spec]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  },
});
