// The drop-in qemu-io prints a cache write-back that failed at close in QEMU's words, one error_report line per cache
// ("qemu-io: Failed to flush the L2 table cache: Input/output error"), as qcow2_inactivate does (iotest 026), on the same
// image and blkdebug rule as the real qemu-io; both images then check clean.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuIo } from "../../cli/qemu-io.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

Deno.test({
  name: "qemu-io drop-in: failed cache write-back at close prints qcow2_inactivate's two lines, as the real qemu-io",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const conf = `${d.path}/blkdebug.conf`;
    await Deno.writeTextFile(conf, '[inject-error]\nevent = "l2_update"\nerrno = "28"\nonce = "off"\n');
    const paths = [`${d.path}/q.qcow2`, `${d.path}/b.qcow2`];
    for (const p of paths) await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=1024", p, "1G"]);
    const args = (p: string) => ["--cache", "writeback", "-f", "qcow2", "-c", "write 0 128k", `blkdebug:${conf}:${p}`];
    const real = await run("qemu-io", args(paths[0]));
    let err = "";
    const code = await qemuIo(args(paths[1]), { stdout: () => {}, stderr: (s) => void (err += s) });
    assertEquals([code, err], [real.code, real.stderr]);
    assertEquals(
      err,
      "qemu-io: Failed to flush the L2 table cache: No space left on device\n" +
        "qemu-io: Failed to flush the refcount block cache: No space left on device\n",
    );
    for (const p of paths) assertEquals((await run("qemu-img", ["check", "-q", p])).stderr.includes("ERROR"), false);
  },
});
