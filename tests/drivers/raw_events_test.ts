// The raw format node raises read_aio / write_aio on its file child, as QEMU's raw_co_preadv / raw_co_pwritev do, so a blkdebug
// rule under raw fires (iotest 289 puts such a node under qcow2 as its data file). qemu-io is the reference.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuIo } from "../../cli/qemu-io.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

Deno.test({
  name: "a blkdebug inject-error rule on read_aio or write_aio below a raw node fails the requests qemu-io's fail",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const img = `${d.path}/r.raw`;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", img, "1M"]);
    for (const ev of ["write_aio", "read_aio"]) {
      const spec = `driver=raw,file.driver=blkdebug,file.image.filename=${img},file.inject-error.0.event=${ev}`;
      const args = ["--image-opts", spec, "-c", "write 0 4k", "-c", "read 0 4k", "-c", "write -z 8k 4k"];
      const q = await run("qemu-io", args);
      let out = "";
      const code = await qemuIo(args, { stdout: (s) => void (out += s), stderr: (s) => void (out += s) });
      const lines = (s: string) => s.split("\n").filter((l) => !l.includes("ops/sec"));
      assertEquals([code, lines(out)], [q.code, lines(q.stdout + q.stderr)], ev);
    }
  },
});
