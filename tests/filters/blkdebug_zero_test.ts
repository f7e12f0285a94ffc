// blkdebug refuses a write-zeroes piece smaller than its preferred alignment (max of align and opt-write-zero) as QEMU's
// blkdebug_co_pwrite_zeroes does, so the layer above writes zero buffers there (iotest 204). Each case runs the same qemu-io
// command with the real qemu-io and our drop-in on identical qcow2 images over a backing file, through a blkdebug node above the
// qcow2 node, and compares the output and the layout (`qemu-img map --output=json`, real qemu-img, offsets left out).
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuIo } from "../../cli/qemu-io.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

async function image(dir: string, tag: string): Promise<string> {
  const base = `${dir}/${tag}.base.qcow2`;
  const top = `${dir}/${tag}.qcow2`;
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "8M"]);
  await runOk("qemu-io", ["-c", "write -P 11 0 8M", base]);
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
  return top;
}

const CASES: [string, string][] = [
  ["align=512,opt-write-zero=1M,max-write-zero=1M", "write -z 1536k 3M"],
  ["align=512,opt-write-zero=3M,max-write-zero=3M", "write -z 1M 4M"],
  ["align=4k", "write -z 4k 8k"],
  ["align=512,opt-write-zero=1M", "write -z 1M 512k"],
];

for (const [limits, cmd] of CASES) {
  Deno.test({
    name: `blkdebug write-zeroes with ${limits}: '${cmd}' leaves the layout qemu-io leaves`,
    ignore: QEMU,
    async fn() {
      await using d = await tempDir();
      const q = await image(d.path, "q");
      const b = await image(d.path, "b");
      const open = (p: string) => `open -o driver=blkdebug,image.driver=qcow2,${limits} blkdebug::${p}`;
      const quiet = (s: string) => s.split("\n").filter((l) => !l.includes("ops/sec")).join("\n");
      const real = await run("qemu-io", ["-c", open(q), "-c", cmd, "-c", "read -P 0 1M 1M"]);
      let out = "";
      const code = await qemuIo(["-c", open(b), "-c", cmd, "-c", "read -P 0 1M 1M"], {
        stdout: (s) => void (out += s),
        stderr: (s) => void (out += s),
      });
      assertEquals([code, quiet(out)], [real.code, quiet(real.stdout + real.stderr)]);
      const map = async (p: string) => (await runOk("qemu-img", ["map", "--output=json", p])).stdout.replace(/, "offset": \d+/g, "");
      assertEquals(await map(b), await map(q));
    },
  });
}
