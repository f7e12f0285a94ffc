// Write-zeroes up to an image end that falls inside a cluster (extended L2 entries, iotest 271): the unaligned tail is a
// request of its own, as in QEMU's bdrv_co_do_pwrite_zeroes, and qcow2 sets the zero bits only of the subclusters up to
// the image end (`0003ffff00000000` for a 35 KiB tail of 2 KiB subclusters), not all 32. Same image as qemu-io's, byte for byte.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuIo } from "../../../cli/qemu-io.ts";
import { runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const cases: [string, string, string][] = [
  ["extended_l2=on", "2083k", "write -q -z 2048k 35k"],
  ["extended_l2=on", "2083k", "write -q -z 2040k 43k"],
  ["extended_l2=on", "2083k", "write -q -z -u 2048k 35k"],
  ["cluster_size=65536", "100k", "write -q -z 64k 36k"],
];

for (const [o, size, cmd] of cases) {
  Deno.test({
    name: `qcow2 -o ${o} ${size}: '${cmd}' to the image end leaves the L2 entries qemu-io leaves`,
    ignore: skipUnless("qemu-img", "qemu-io"),
    async fn() {
      await using d = await tempDir();
      const [q, b] = [`${d.path}/q.qcow2`, `${d.path}/b.qcow2`];
      for (const p of [q, b]) await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", o, p, size]);
      await runOk("qemu-io", ["-f", "qcow2", "-c", cmd, q]);
      assertEquals(await qemuIo(["-f", "qcow2", "-c", cmd, b], { stdout: () => {}, stderr: () => {} }), 0);
      assertEquals(await Deno.readFile(b), await Deno.readFile(q));
    },
  });
}
