/**
 * `convert` writes its target with cache=unsafe unless `-t` says otherwise,
 * as qemu-img convert does: no flush after the data (checked with strace on
 * both tools, running the CLI as a process).
 */

import assert from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const ignore = skipUnless("qemu-img", "qemu-io", "strace");
const CLI = new URL("../../cli/main.ts", import.meta.url).pathname;

/** Syscalls (fdatasync, fsync, pwrite64) of `cmd`, in order, by name. */
async function syscalls(cmd: string, args: string[]): Promise<string[]> {
  const r = await run("strace", ["-f", "-qq", "-e", "trace=fdatasync,fsync,pwrite64", cmd, ...args]);
  assert.equal(r.code, 0, r.stderr);
  return [...r.stderr.matchAll(/(?:^|\] )(fdatasync|fsync|pwrite64)\(/gm)].map((m) => m[1]);
}

/** Whether a flush follows the last write. */
function flushedAfterData(calls: string[]): boolean {
  return calls.lastIndexOf("fdatasync") > calls.lastIndexOf("pwrite64") || calls.lastIndexOf("fsync") > calls.lastIndexOf("pwrite64");
}

Deno.test({
  name: "convert does not flush its target after the data unless -t asks for it, as qemu-img convert",
  ignore,
  async fn() {
    await using d = await tempDir();
    const src = `${d.path}/src.raw`;
    await runOk("qemu-img", ["create", "-f", "raw", src, "4M"]);
    await runOk("qemu-io", ["-f", "raw", "-c", "write -P 1 0 1M", src]);
    const q = await syscalls("qemu-img", ["convert", "-f", "raw", "-O", "raw", src, `${d.path}/q.raw`]);
    const o = await syscalls("deno", ["run", "-A", CLI, "convert", "-f", "raw", "-O", "raw", src, `${d.path}/o.raw`]);
    assert.ok(q.includes("pwrite64") && o.includes("pwrite64"));
    assert.equal(flushedAfterData(o), flushedAfterData(q), `qemu-img: ${q.join(" ")}; blkgraph: ${o.join(" ")}`);
    const qt = await syscalls("qemu-img", ["convert", "-t", "writeback", "-f", "raw", "-O", "raw", src, `${d.path}/qt.raw`]);
    const ot = await syscalls("deno", ["run", "-A", CLI, "convert", "-t", "writeback", "-f", "raw", "-O", "raw", src, `${d.path}/ot.raw`]);
    assert.equal(flushedAfterData(ot), flushedAfterData(qt), `-t writeback: qemu-img: ${qt.join(" ")}; blkgraph: ${ot.join(" ")}`);
    assert.notEqual(flushedAfterData(o), flushedAfterData(ot), "the cache mode decides");
  },
});
