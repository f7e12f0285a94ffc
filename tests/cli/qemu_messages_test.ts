// Messages of the qemu-img / qemu-io drop-ins that scripts (and QEMU's iotests) match word for word: each case runs the real
// tool and ours on the same input and compares exit code and stderr.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuImg } from "../../cli/qemu-img.ts";
import { qemuIo } from "../../cli/qemu-io.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

type Entry = typeof qemuImg;

/** Runs a drop-in in-process, `cwd` = `dir`, so relative names print as the real tool prints them. */
async function ours(entry: Entry, args: string[], dir: string) {
  let stdout = "";
  let stderr = "";
  const before = Deno.cwd();
  Deno.chdir(dir);
  try {
    const code = await entry(args, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s) });
    return { code, stdout, stderr };
  } finally {
    Deno.chdir(before);
  }
}

Deno.test({
  name: "-o help for a format blkgraph only recognises (bochs) says the driver cannot create or amend, as qemu-img does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await runOk("qemu-img", ["create", "-q", "-f", "raw", `${d.path}/a.raw`, "1M"]);
    for (
      const args of [
        ["create", "-f", "bochs", "-o", "help", "x.img"],
        ["create", "-f", "bochs", "-o", "help"],
        ["convert", "-O", "bochs", "-o", "help", "a.raw", "y.img"],
        ["amend", "-f", "bochs", "-o", "help", "a.raw"],
      ]
    ) {
      const q = await run("qemu-img", args, { cwd: d.path });
      const r = await ours(qemuImg, args, d.path);
      assertEquals([r.code, r.stdout, r.stderr], [q.code, q.stdout, q.stderr], args.join(" "));
    }
  },
});

Deno.test({
  name: "an unknown backing format in the image header is refused in qemu-io's words: Unknown driver 'foo'",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await runOk("qemu-img", ["create", "-q", "-f", "raw", `${d.path}/base.raw`, "1M"]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", `${d.path}/t.qcow2`, "1M"]);
    // The backing-format header extension (0xe2792aca, length 3, "raw") now names a driver nobody has.
    const img = await Deno.readFile(`${d.path}/t.qcow2`);
    const ext = [0xe2, 0x79, 0x2a, 0xca, 0, 0, 0, 3, ...new TextEncoder().encode("raw")];
    const at = img.findIndex((_, i) => ext.every((b, j) => img[i + j] === b));
    img.set(new TextEncoder().encode("foo"), at + 8);
    await Deno.writeFile(`${d.path}/t.qcow2`, img);
    const q = await run("qemu-io", ["-c", "read 0 4k", "t.qcow2"], { cwd: d.path });
    const r = await ours(qemuIo, ["-c", "read 0 4k", "t.qcow2"], d.path);
    assertEquals([r.code, r.stdout, r.stderr], [q.code, q.stdout, q.stderr]);
  },
});
