// Narrow and wide refcounts as QEMU handles them (iotest 112 samples these): a snapshot that cannot raise a 1-bit refcount
// leaves its L1 copy leaked, as QEMU allocates and writes the copy before the refcount walk; a 64-bit refcount past 2^53
// goes down by exactly one; `amend -o refcount_bits=N -p` prints qemu-img's progress lines, walk by walk. Each runs the real
// qemu-img/qemu-io and our drop-in on identical images and compares what they print and the images they leave.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuImg } from "../../../cli/qemu-img.ts";
import { qemuIo } from "../../../cli/qemu-io.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

async function ours(fn: typeof qemuImg, args: string[]): Promise<[number, string, string]> {
  let out = "";
  let err = "";
  const code = await fn(args, { stdout: (s) => void (out += s), stderr: (s) => void (err += s) });
  return [code, out, err];
}

async function real(cmd: string, args: string[]): Promise<[number, string, string]> {
  const r = await run(cmd, args);
  return [r.code, r.stdout, r.stderr];
}

const check = async (p: string) => {
  const r = await run("qemu-img", ["check", p]);
  return [r.code, r.stdout, r.stderr];
};

async function twoImages(dir: string, opts: string, size: string, ...cmds: string[]): Promise<[string, string]> {
  const paths: [string, string] = [`${dir}/q.qcow2`, `${dir}/b.qcow2`];
  for (const p of paths) {
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", opts, p, size]);
    for (const c of cmds) await runOk("qemu-io", ["-c", c, p]);
  }
  return paths;
}

Deno.test({
  name: "qcow2 snapshot -c on refcount_bits=1 fails with EINVAL and leaks the L1 copy (cluster 6), as qemu-img does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const [q, b] = await twoImages(d.path, "refcount_bits=1", "64M", "write 0 512");
    assertEquals(await ours(qemuImg, ["snapshot", "-c", "foo", b]), await real("qemu-img", ["snapshot", "-c", "foo", q]));
    const c = await check(b);
    assertEquals(c, await check(q));
    assertEquals(String(c[2]).split("\n")[0], "Leaked cluster 6 refcount=1 reference=0");
  },
});

Deno.test({
  name: "qcow2 64-bit refcount 2^63 of a shared cluster goes down by exactly one on COW (no ERANGE), as in QEMU",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const [q, b] = await twoImages(d.path, "refcount_bits=64", "64M", "write 0 512");
    for (const p of [q, b]) {
      // Refcount of cluster 5 (the data) 2^63, and the L2 entry without COPIED: the next write copies it and frees one reference.
      using f = await Deno.open(p, { write: true });
      await f.seek(0x20028, Deno.SeekMode.Start);
      await f.write(new Uint8Array([0x80, 0, 0, 0, 0, 0, 0, 0]));
      await f.seek(0x40000, Deno.SeekMode.Start);
      await f.write(new Uint8Array([0, 0, 0, 0, 0, 5, 0, 0]));
    }
    const mine = await ours(qemuIo, ["-c", "write 0 512", b]);
    const theirs = await real("qemu-io", ["-c", "write 0 512", q]);
    assertEquals([mine[0], mine[2]], [theirs[0], theirs[2]]);
    assertEquals(await Deno.readFile(b), await Deno.readFile(q));
  },
});

Deno.test({
  name: "qcow2 amend -o refcount_bits=64 -p prints qemu-img's progress lines (66.67% then 50.00%: a third walk) and the same image",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const [q, b] = await twoImages(d.path, "refcount_bits=1,cluster_size=512", "64k", `write 0 ${58 * 512}`);
    const args = (p: string) => ["amend", "-o", "refcount_bits=64", "-p", p];
    const mine = await ours(qemuImg, args(b));
    const theirs = await real("qemu-img", args(q));
    assertEquals(mine, theirs);
    const lines = mine[1].split("\r");
    const at = lines.indexOf("    (66.67/100%)");
    assertEquals(lines[at + 1], "    (50.00/100%)");
    assertEquals(await Deno.readFile(b), await Deno.readFile(q));
  },
});
