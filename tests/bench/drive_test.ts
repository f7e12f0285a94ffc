import assert from "node:assert/strict";
import { drive, parseStraceSummary, qemuBenchOffsets, randomOffsets, steppedOffsets, sumCalls, totalCalls } from "../../bench/_drive.ts";
import { open } from "../../mod.ts";
import { run, skipUnless } from "../_helpers/qemu.ts";

const STRACE = `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 92.35    0.599047          39     15092       116 futex
  4.38    0.028408           2      9850           write
  2.70    0.017494           3      5008           pread64
  0.01    0.000010           5         2           fdatasync
------ ----------- ----------- --------- --------- ----------------
100.00    0.648655          21     29952       116 total
`;

Deno.test("parseStraceSummary() reads the calls column by syscall name", () => {
  const c = parseStraceSummary(STRACE);
  assert.equal(c.get("futex"), 15092);
  assert.equal(c.get("pread64"), 5008);
  assert.equal(c.get("fdatasync"), 2);
});

Deno.test("parseStraceSummary() skips the header and the total line", () => {
  const c = parseStraceSummary(STRACE);
  assert.equal(c.has("total"), false);
  assert.equal(c.has("syscall"), false);
  assert.equal(totalCalls(c), 15092 + 9850 + 5008 + 2);
});

Deno.test("sumCalls() adds the named syscalls and ignores absent ones", () => {
  assert.equal(sumCalls(parseStraceSummary(STRACE), ["fdatasync", "fsync", "pread64"]), 5010);
});

Deno.test("randomOffsets() returns aligned offsets inside the image", () => {
  const o = randomOffsets(1000, 4096, 1 << 20);
  assert.equal(o.length, 1000);
  for (const x of o) assert.ok(x % 4096 === 0 && x >= 0 && x + 4096 <= 1 << 20);
});

Deno.test("steppedOffsets() walks by the step", () => {
  assert.deepEqual([...steppedOffsets(3, 65536)], [0, 65536, 131072]);
});

Deno.test("drive() issues one request per offset", async () => {
  const node = await open({ driver: "memory", size: 1 << 20 });
  try {
    await drive(node, "write", 4096, 4, steppedOffsets(16, 4096));
    await drive(node, "read", 4096, 4, steppedOffsets(8, 4096));
    assert.equal(node.stats.writes, 16);
    assert.equal(node.stats.reads, 8);
  } finally {
    await node.close();
  }
});

Deno.test("qemuBenchOffsets() walks by the request size when no step is given", () => {
  assert.deepEqual([...qemuBenchOffsets(5, { size: 4096, length: 16384 })], [0, 4096, 8192, 12288, 0]);
});

Deno.test("qemuBenchOffsets() wraps modulo the image length, as qemu-img 7.2 does", () => {
  assert.deepEqual([...qemuBenchOffsets(6, { size: 4096, step: 266240, length: 1 << 20 })], [0, 266240, 532480, 798720, 16384, 282624]);
});

Deno.test("qemuBenchOffsets() wraps modulo length - size with wrap: usable (qemu-img after ff2ab634)", () => {
  assert.deepEqual([...qemuBenchOffsets(4, { size: 4096, length: 16384, wrap: "usable" })], [0, 4096, 8192, 0]);
});

Deno.test("qemuBenchOffsets() starts at the given offset", () => {
  assert.deepEqual([...qemuBenchOffsets(3, { size: 512, step: 1024, length: 4096, start: 2048 })], [2048, 3072, 0]);
});

Deno.test("qemuBenchOffsets() refuses a walk whose request would run past the image's end", () => {
  assert.throws(() => qemuBenchOffsets(2, { size: 4096, step: 14336, length: 16384 }), RangeError);
});

Deno.test({
  name: "qemuBenchOffsets() gives the offsets qemu-img bench requests, in its order (its trace of blk_co_preadv)",
  ignore: skipUnless("qemu-img"),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "blkgraph-walk-" });
    try {
      const img = `${dir}/walk.raw`;
      const length = (1 << 20) + 65536;
      await Deno.writeFile(img, new Uint8Array(length));
      for (const [size, step, depth] of [[4096, 4096 * 7919, 16], [4096, 0, 1], [65536, 0, 4], [4096, 65536, 16]]) {
        const count = 300;
        const args = ["-T", "blk_co_preadv", "bench", "-f", "raw", "-t", "writeback", "-d", String(depth), "-c", String(count)];
        args.push("-s", String(size), ...(step ? ["-S", String(step)] : []), img);
        const r = await run("qemu-img", args);
        assert.equal(r.code, 0, r.stderr);
        const theirs = [...(r.stdout + r.stderr).matchAll(/blk_co_preadv .* offset (\d+) bytes (\d+)/g)].map((m) => Number(m[1]));
        assert.equal(theirs.length, count, `qemu-img ${args.join(" ")}: the trace did not list every request`);
        assert.deepEqual([...qemuBenchOffsets(count, { size, step, length })], theirs, `qemu-img ${args.join(" ")}`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
