// Write-zeroes (no unmap) over a cluster a snapshot shares: QEMU's zero_in_l2_slice keeps the L2 entry, host offset and all, and only
// sets the zero flag (extended L2: all subclusters' zero bits), whether or not the entry has OFLAG_COPIED; the refcount stays. So a
// compressed write there afterwards fails (EIO: the entry has a host offset), and a normal write copies on write (opfuzz case 1343).
// blkgraph's qemu-io must leave the file qemu-io leaves, byte for byte, at every step.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuIo } from "../../../cli/qemu-io.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const quiet = { stdout: () => {}, stderr: () => {} };

for (const o of ["cluster_size=512", "cluster_size=65536,extended_l2=on"]) {
  Deno.test({
    name: `qcow2 -o ${o}: write -z over a cluster a snapshot shares keeps its host offset, as qemu-io, and write -c there fails EIO`,
    ignore: skipUnless("qemu-img", "qemu-io"),
    async fn() {
      await using d = await tempDir();
      const [q, b] = [`${d.path}/q.qcow2`, `${d.path}/b.qcow2`];
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", o, q, "1M"]);
      await runOk("qemu-io", ["-f", "qcow2", "-c", "write -q -P 4 0 128k", q]);
      await runOk("qemu-img", ["snapshot", "-c", "s", q]);
      await Deno.copyFile(q, b); // one snapshot, one creation time
      for (
        const [cmd, ok] of [["write -q -z 64k 64k", true], ["write -q -c -P 9 64k 64k", false], ["write -q -P 7 64k 512", true]] as const
      ) {
        const r = await run("qemu-io", ["-f", "qcow2", "-c", cmd, q]);
        assertEquals(r.stdout.includes("write failed"), !ok, r.stdout);
        let out = "";
        assertEquals(await qemuIo(["-f", "qcow2", "-c", cmd, b], { ...quiet, stdout: (s: string) => void (out += s) }), r.code, cmd);
        assertEquals(out.includes("write failed"), !ok, `${cmd}: ${out}`);
        assertEquals(await Deno.readFile(b), await Deno.readFile(q), cmd);
      }
    },
  });
}
