import assert from "node:assert/strict";
import { drive, parseStraceSummary, randomOffsets, steppedOffsets, sumCalls, totalCalls } from "../../bench/_drive.ts";
import { open } from "../../mod.ts";

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
