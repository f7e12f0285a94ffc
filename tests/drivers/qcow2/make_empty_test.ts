// commit empties the top image as QEMU's qcow2_make_empty does: at once (make_completely_empty) where it can, raising QEMU's
// events on the way, so a blkdebug rule on each of them fails commit at the same step and leaves the image in the same state
// (iotest 098). Each case runs the same commit with the real qemu-img and with our drop-in on identical images, then compares
// stderr and exit code, the output of reopening the image (its dirty-image repair) and `qemu-img check` (all real QEMU tools).
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuImg } from "../../../cli/qemu-img.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

async function chain(dir: string, tag: string, create: string[]): Promise<string> {
  const base = `${dir}/${tag}.base.qcow2`;
  const top = `${dir}/${tag}.qcow2`;
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...create, base, "64M"]);
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...create, "-b", base, "-F", "qcow2", top, "64M"]);
  await runOk("qemu-io", ["-c", "write 0 64k", "-c", "write -P 3 32M 128k", top]);
  return top;
}

async function commitBoth(dir: string, event: string | undefined, create: string[]): Promise<void> {
  const conf = `${dir}/blkdebug.conf`;
  await Deno.writeTextFile(conf, event ? `[inject-error]\nevent = "${event}"\n` : "");
  const q = await chain(dir, "q", create);
  const b = await chain(dir, "b", create);
  const real = await run("qemu-img", ["commit", `blkdebug:${conf}:${q}`]);
  let out = "";
  const code = await qemuImg(["commit", `blkdebug:${conf}:${b}`], { stdout: (s) => void (out += s), stderr: (s) => void (out += s) });
  const name = (s: string, p: string) => s.replaceAll(p, "TOP");
  assertEquals([code, name(out, b)], [real.code, name(real.stdout + real.stderr, q)], `commit, ${event}`);
  const after = async (p: string) => {
    const reopen = await run("qemu-io", ["-c", "close", p]);
    const chk = await run("qemu-img", ["check", p]);
    // Where the base's clusters land is commit's copy order, not make_empty's: offsets are left out.
    const map = (await run("qemu-img", ["map", "--output=json", p])).stdout.replace(/, "offset": \d+/g, "");
    return [reopen.stdout + reopen.stderr, chk.code, chk.stdout + chk.stderr, map, (await Deno.stat(p)).size];
  };
  assertEquals(await after(b), await after(q), `after commit, ${event}`);
}

for (const event of [undefined, "l1_update", "empty_image_prepare", "reftable_update", "refblock_alloc"]) {
  Deno.test({
    name: `commit empties the top as qemu-img does${event ? `, and fails as it does when ${event} fails` : ""} (iotest 098)`,
    ignore: QEMU,
    async fn() {
      await using d = await tempDir();
      await commitBoth(d.path, event, []);
    },
  });
}

Deno.test({
  name: "commit of a top with 4k clusters and a multi-cluster L1 table empties it as qemu-img does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await commitBoth(d.path, undefined, ["-o", "cluster_size=4k"]);
  },
});

Deno.test({
  name: "commit of a compat=0.10 top discards its clusters instead, as qemu-img does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await commitBoth(d.path, "l1_update", ["-o", "compat=0.10"]);
  },
});
