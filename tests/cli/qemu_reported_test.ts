// Where QEMU's driver prints the details of an error with error_report and returns only an errno, the drop-ins print
// the same lines first: qcow2's snapshot goto ("Snapshot L1 table offset invalid", then "Could not apply snapshot
// 'test': Failed to load snapshot: Invalid argument") and the downgrade's expansion of zero clusters ("Snapshot L1 table
// too large", then "Failed to turn zero into data clusters: File too large"), as iotest 080 shows them.
import assert from "node:assert/strict";
import { BlockError, qemuReportedLines } from "../../mod.ts";
import { qemuImg } from "../../cli/qemu-img.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

/** The drop-in's output with standard error merged into standard output, as the iotests capture it. */
async function dropIn(args: string[]): Promise<{ code: number; out: string }> {
  let out = "";
  const code = await qemuImg(args, { stdout: (s) => void (out += s), stderr: (s) => void (out += s) });
  return { code, out };
}

async function qemu(args: string[]): Promise<{ code: number; out: string }> {
  const r = await run("sh", ["-c", `qemu-img ${args.map((a) => `'${a}'`).join(" ")} 2>&1`]);
  return { code: r.code, out: r.stdout };
}

/** A qcow2 image (made by qemu-img) with one snapshot whose table entry has `field` (0: L1 offset, 8: L1 size) poked. */
async function damaged(path: string, field: 0 | 8, bytes: number[]): Promise<void> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "64M"]);
  await runOk("qemu-io", ["-c", "write 0 512", path]);
  await runOk("qemu-img", ["snapshot", "-c", "test", path]);
  const f = await Deno.open(path, { read: true, write: true });
  try {
    const head = new Uint8Array(72);
    await f.read(head);
    const table = Number(new DataView(head.buffer).getBigUint64(64));
    await f.seek(table + field, Deno.SeekMode.Start);
    await f.write(new Uint8Array(bytes));
  } finally {
    f.close();
  }
}

const DAMAGE: [string, 0 | 8, number[]][] = [
  ["misaligned L1 offset", 0, [0, 0, 0, 0, 0, 0x40, 0x02, 0]],
  ["huge L1 size", 8, [0x10, 0, 0, 0]],
];

Deno.test({
  name: "qemu-img snapshot -a and amend -o compat=0.10 of a snapshot with a bad L1 table print QEMU's reported line first, as qemu-img",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    for (const [what, field, bytes] of DAMAGE) {
      for (const args of [["snapshot", "-a", "test"], ["amend", "-o", "compat=0.10"]]) {
        const [ours, theirs] = [`${d.path}/ours.qcow2`, `${d.path}/theirs.qcow2`];
        await damaged(theirs, field, bytes);
        await Deno.copyFile(theirs, ours);
        const q = await qemu([...args, theirs]);
        const r = await dropIn([...args, ours]);
        assert.deepEqual(r, { code: q.code, out: q.out.replaceAll(theirs, ours) }, `${what}: ${args.join(" ")}`);
        assert.equal(r.out.trimEnd().split("\n").length, 2, `${what}: ${args.join(" ")}: ${r.out}`);
      }
    }
  },
});

Deno.test({
  name: "qemu-img amend -o compat=0.10 over an unaligned L2 table or cluster offset marks the image corrupt and fails in qemu-img's words",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    // iotest 060's cases: the L1 entry (at 0x30000) or the L2 entry (at 0x40000, a zero cluster) of guest cluster 0.
    for (const [at, entry] of [[0x30000, [0x80, 0, 0, 0, 0, 0x04, 0x2a, 0]], [0x40000, [0x80, 0, 0, 0, 0, 0x05, 0x2a, 0x01]]] as const) {
      const [ours, theirs] = [`${d.path}/ours.qcow2`, `${d.path}/theirs.qcow2`];
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", theirs, "64M"]);
      await runOk("qemu-io", ["-c", "write 0 64k", theirs]);
      const f = await Deno.open(theirs, { write: true });
      await f.seek(at, Deno.SeekMode.Start);
      await f.write(new Uint8Array(entry));
      f.close();
      await Deno.copyFile(theirs, ours);
      const q = await qemu(["amend", "-o", "compat=0.10", theirs]);
      const r = await dropIn(["amend", "-o", "compat=0.10", ours]);
      assert.deepEqual(r, q, `entry at 0x${at.toString(16)}`);
      assert.match(r.out, /^qcow2: Marking image as corrupt: .*\nqemu-img: Failed to turn zero into data clusters: Input\/output error\n$/);
    }
  },
});

Deno.test("qemuReportedLines() collects the reported lines along the cause chain, innermost first", () => {
  const inner = new BlockError("EINVAL", "inner", { qemuReported: ["first"] });
  const middle = new BlockError("EINVAL", "middle", { cause: inner, qemuReported: ["second", "third"] });
  const outer = new Error("outer", { cause: middle });
  assert.deepEqual(qemuReportedLines(outer), ["first", "second", "third"]);
  assert.deepEqual(qemuReportedLines(new BlockError("EIO", "plain")), []);
  assert.deepEqual(qemuReportedLines("not an error"), []);
});
