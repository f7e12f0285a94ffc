import assert from "node:assert/strict";
import { open } from "../../mod.ts";
import { cli } from "../cli/_run.ts";
import { runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

Deno.test("null-co is a disk of 'size' bytes (1 GiB by default) that drops writes and reads zeros", async () => {
  await using a = await open("null-co://");
  assert.equal(a.length, 1 << 30);
  await using n = await open({ driver: "null-co", size: 65536 });
  await n.pwrite(0, new Uint8Array(512).fill(7));
  const buf = new Uint8Array(512).fill(9);
  await n.pread(0, buf);
  assert.deepEqual([...new Set(buf)], [0]);
  assert.equal((await n.blockStatus(0, 65536)).data, true);
  await using z = await open({ driver: "null-aio", size: 4096, "read-zeroes": true });
  assert.equal((await z.blockStatus(0, 4096)).zero, true);
  await assert.rejects(open("null-co://x"), /only allowed filename/);
});

Deno.test({
  name: "convert from a read-zeroes null-co image: -S 512 allocates nothing, -S 0 everything, as qemu-img (iotest 150)",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    const src = "json:{ 'driver': 'null-co', 'size': 1048576, 'read-zeroes': true }";
    for (const s of ["512", "0"]) {
      await runOk("qemu-img", ["convert", "-O", "qcow2", "-S", s, src, `${d.path}/q.qcow2`]);
      const r = await cli(["convert", "-O", "qcow2", "-S", s, src, `${d.path}/b.qcow2`]);
      assert.equal(r.code, 0, r.stderr);
      const map = async (p: string) => (await runOk("qemu-img", ["map", "--output=json", p])).stdout.replaceAll(/"offset": \d+/g, "");
      assert.equal(await map(`${d.path}/b.qcow2`), await map(`${d.path}/q.qcow2`), `-S ${s}`);
    }
  },
});
