/**
 * `convert` without `-W` works as qemu-img convert's default (`-m 8`,
 * aio=threads): the source's chunks are read on worker threads, ahead of the
 * target's writes, which still go out in source order. Checked with
 * `strace -f` on both tools: which thread reads the source, in what order
 * the target is written.
 */

import assert from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const ignore = skipUnless("qemu-img", "strace");
const CLI = new URL("../../cli/main.ts", import.meta.url).pathname;

interface Call {
  tid: number;
  name: "pread64" | "pwrite64";
  path: string;
  length: number;
  offset: number;
}

/** The pread64/pwrite64 calls of `cmd` on `paths` (whatever thread made them) and the main thread's id. */
async function dataCalls(dir: string, cmd: string, args: string[], paths: string[]): Promise<{ main: number; calls: Call[] }> {
  const log = `${dir}/strace.${Math.random().toString(36).slice(2)}`;
  const r = await run("strace", ["-f", "-qq", "-y", "-s", "0", "-o", log, "-e", "trace=pread64,pwrite64", cmd, ...args]);
  assert.equal(r.code, 0, r.stderr);
  const lines = (await Deno.readTextFile(log)).split("\n").filter((l) => l.trim());
  // The first line is the process's own thread (the dynamic loader reads libraries before any thread starts).
  // strace pads the thread id to five columns.
  const main = Number(lines[0].trim().split(/\s+/)[0]);
  const calls: Call[] = [];
  for (const l of lines) {
    // "1234 pread64(5</dir/src.raw>, ""..., 2097152, 0) = 2097152", or its "<unfinished ...>" and "resumed" halves.
    // A read's arguments after the buffer are printed only when it returns.
    const m = /^(\d+)\s+(pread64|pwrite64)\(\d+<([^>]+)>, (?:""(?:\.\.\.)?)?, (\d+), (\d+)/.exec(l) ??
      /^(\d+)\s+(pread64|pwrite64)\(\d+<([^>]+)>,\s+<unfinished/.exec(l);
    if (!m || !paths.includes(m[3])) continue;
    const [length, offset] = m[4] === undefined ? [-1, -1] : [Number(m[4]), Number(m[5])];
    calls.push({ tid: Number(m[1]), name: m[2] as Call["name"], path: m[3], length, offset });
  }
  return { main, calls };
}

const ascending = (xs: number[]) => xs.every((x, i) => i === 0 || x > xs[i - 1]);

Deno.test({
  name: "convert reads the source on worker threads ahead of the target's writes, which go out in order, as qemu-img convert",
  ignore,
  async fn() {
    await using d = await tempDir();
    const src = `${d.path}/src.raw`;
    const data = new Uint8Array(16 << 20);
    for (let i = 0; i < data.length; i += 4096) data[i] = ((i >> 12) % 255) + 1;
    await Deno.writeFile(src, data);
    for (const [tool, cmd, pre] of [["qemu-img", "qemu-img", []], ["blkgraph", Deno.execPath(), ["run", "-A", CLI]]] as const) {
      const dst = `${d.path}/${tool}.raw`;
      const { main, calls } = await dataCalls(d.path, cmd, [...pre, "convert", "-f", "raw", "-O", "raw", src, dst], [src, dst]);
      const reads = calls.filter((c) => c.path === src && c.name === "pread64");
      // The data, not the zeroed first block of the new file (QEMU's allocate_first_block, which both write at creation).
      const writes = calls.filter((c) => c.path === dst && c.name === "pwrite64" && c.length > 4096);
      assert.ok(reads.length >= 8, `${tool}: ${reads.length} reads of the source`);
      assert.deepEqual(reads.filter((c) => c.tid === main), [], `${tool}: the main thread reads the source`);
      assert.ok(writes.length >= 8, `${tool}: ${writes.length} writes of the target`);
      assert.ok(ascending(writes.map((c) => c.offset)), `${tool}: target written out of order: ${writes.map((c) => c.offset).join(" ")}`);
      assert.deepEqual(await Deno.readFile(dst), data, tool);
    }
  },
});

Deno.test({
  name: "convert -c reads its source with synchronous calls on the main thread (no thread hop per cluster)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const src = `${d.path}/src.raw`;
    await runOk("qemu-img", ["create", "-f", "raw", src, "1M"]);
    await Deno.writeFile(src, new Uint8Array(1 << 20).fill(7));
    const dst = `${d.path}/c.qcow2`;
    const { main, calls } = await dataCalls(d.path, Deno.execPath(), [
      "run",
      "-A",
      CLI,
      "convert",
      "-c",
      "-f",
      "raw",
      "-O",
      "qcow2",
      src,
      dst,
    ], [src]);
    const reads = calls.filter((c) => c.name === "pread64");
    assert.equal(reads.length, 16);
    assert.deepEqual(reads.filter((c) => c.tid !== main), []);
  },
});
