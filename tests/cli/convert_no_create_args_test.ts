/**
 * `convert -n` (skip creating the target) takes qemu-img's argument checks in
 * qemu-img's order: -o options are creation options, so they are refused;
 * -B needs no backing format, as nothing is created; --target-image-opts
 * needs -n. Each compared with qemu-img on the same arguments.
 */

import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

/** qemu-img's and our exit status and error text for the same convert arguments. */
async function both(args: string[]): Promise<[[number, string], [number, string]]> {
  const q = await run("qemu-img", ["convert", ...args]);
  const o = await cli(["convert", ...args]);
  return [[q.code, q.stderr], [o.code, o.stderr.replace(/^blkgraph:/gm, "qemu-img:")]];
}

Deno.test({
  name: "convert -n with -o, -n -B without -F, and --target-image-opts without -n answer as qemu-img does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const [src, dst, base] = ["t.qcow2", "t.orig", "t.base"].map((f) => `${d.path}/${f}`);
    for (const f of [src, dst, base]) await runOk("qemu-img", ["create", "-q", "-f", "qcow2", f, "4M"]);
    await runOk("qemu-io", ["-c", "write -P 7 0 64k", src]);
    const [q1, o1] = await both(["-O", "qcow2", "-o", "preallocation=metadata", "-n", src, dst]);
    assertEquals(o1, q1);
    assertEquals(q1, [1, "qemu-img: -o has no effect when skipping image creation\n"]);
    const [q2, o2] = await both(["-O", "qcow2", "-B", base, "-n", src, dst]);
    assertEquals(o2, q2);
    assertEquals(q2[0], 0);
    assertEquals((await run("qemu-img", ["compare", src, dst])).code, 0);
    const [q3, o3] = await both(["-O", "qcow2", "--target-image-opts", src, dst]);
    assertEquals(o3, q3);
    assertEquals(q3, [1, "qemu-img: --target-image-opts requires use of -n flag\n"]);
  },
});
