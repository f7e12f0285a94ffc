// Freeing clusters that fails (a blkdebug error on the refcount update) leaves them leaked and is reported, not thrown, as
// QEMU's qcow2_free_clusters prints "qcow2_free_clusters failed: <strerror>" and goes on (iotest 217). The same `snapshot -d` runs
// with the real qemu-img and with our drop-in on identical images; stderr, the exit code and the check of the result must agree.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuImg } from "../../../cli/qemu-img.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

async function image(path: string): Promise<void> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "64M"]);
  await runOk("qemu-io", ["-c", "write 0 64k", path]);
  await runOk("qemu-img", ["snapshot", "-c", "foo", path]);
}

Deno.test({
  name: "snapshot -d whose cluster_free fails prints qemu's 'qcow2_free_clusters failed' line, then fails as qemu-img (iotest 217)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const conf = `${d.path}/blkdebug.conf`;
    await Deno.writeTextFile(conf, '[inject-error]\nevent = "cluster_free"\nerrno = "5"\n');
    const q = `${d.path}/q.qcow2`;
    const b = `${d.path}/b.qcow2`;
    await image(q);
    await image(b);
    const real = await run("qemu-img", ["snapshot", "-d", "foo", `blkdebug:${conf}:${q}`]);
    let err = "";
    const code = await qemuImg(["snapshot", "-d", "foo", `blkdebug:${conf}:${b}`], {
      stdout: () => {},
      stderr: (s) => void (err += s),
    });
    assertEquals([code, err], [real.code, real.stderr]);
    const chk = async (p: string) => {
      const r = await run("qemu-img", ["check", p]);
      return [r.code, r.stdout];
    };
    assertEquals(await chk(b), await chk(q));
  },
});
