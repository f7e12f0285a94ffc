// Extended L2 entries QEMU's qcow2_get_subcluster_type calls invalid (an allocated cluster with a subcluster both
// allocated and zero; an unallocated one with any allocation bit): a read or a write reaching one marks the image corrupt
// in QEMU's words ("Invalid cluster entry found  (L2 offset: 0x40000, L2 index: 0x1)", two spaces when reading, one when
// writing) and fails with EIO, whichever subcluster it asks for (iotest 271). Same stderr as the real qemu-io.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuIo } from "../../../cli/qemu-io.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const entries: [string, bigint, bigint, number][] = [
  ["allocated, subcluster 0 allocated and zero", 0x8000000000060000n, 0x00000001ffffffffn, 1],
  ["unallocated, allocation bit", 0n, 0x0000000000000001n, 0],
  ["unallocated, subcluster 0 allocated and zero", 0n, 0x0000000100000001n, 1],
];

for (const [what, word, bitmap, idx] of entries) {
  for (const cmd of ["read -q 0 128k", "write -q 0 192k"]) {
    Deno.test({
      name: `qcow2 extended L2 entry ${idx} (${what}): '${cmd}' fails as qemu-io does, image marked corrupt in its words`,
      ignore: skipUnless("qemu-img", "qemu-io"),
      async fn() {
        await using d = await tempDir();
        const [q, b] = [`${d.path}/q.qcow2`, `${d.path}/b.qcow2`];
        for (const p of [q, b]) {
          await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "extended_l2=on", p, "1M"]);
          await runOk("qemu-io", ["-c", "write -q 64k 64k", p]);
          const e = new Uint8Array(16);
          const v = new DataView(e.buffer);
          v.setBigUint64(0, word);
          v.setBigUint64(8, bitmap);
          using f = await Deno.open(p, { write: true });
          await f.seek(0x40000 + idx * 16, Deno.SeekMode.Start);
          await f.write(e);
        }
        const real = await run("qemu-io", ["-c", cmd, q]);
        let out = "";
        let err = "";
        const code = await qemuIo(["-c", cmd, b], { stdout: (s) => void (out += s), stderr: (s) => void (err += s) });
        assertEquals([code, out, err], [real.code, real.stdout, real.stderr]);
      },
    });
  }
}
