import assert from "node:assert/strict";
import { type BlockError, open } from "../../mod.ts";
import { pattern } from "../_helpers/qemu.ts";

Deno.test("memory node starts zeroed at the given size", async () => {
  await using n = await open({ driver: "memory", size: "64k" });
  assert.equal(n.length, 65536);
  const buf = new Uint8Array(65536).fill(1);
  await n.pread(0, buf);
  assert.deepEqual(buf, new Uint8Array(65536));
});

Deno.test("memory node round-trips a pattern", async () => {
  await using n = await open({ driver: "memory", size: 1 << 20 });
  await n.pwrite(1000, pattern(3000, 0x9c));
  const buf = new Uint8Array(3002);
  await n.pread(999, buf);
  assert.equal(buf[0], 0);
  assert.deepEqual(buf.subarray(1, 3001), pattern(3000, 0x9c));
  assert.equal(buf[3001], 0);
});

Deno.test("memory node grows on a write past the end", async () => {
  await using n = await open({ driver: "memory" });
  assert.equal(n.length, 0);
  await n.pwrite(200000, pattern(10, 3));
  assert.equal(n.length, 200010);
  const buf = new Uint8Array(20);
  await n.pread(199995, buf);
  assert.deepEqual([...buf.subarray(0, 5)], [0, 0, 0, 0, 0]);
  assert.deepEqual(buf.subarray(5, 15), pattern(10, 3));
});

Deno.test("memory node refuses to grow past its limit with ENOSPC", async () => {
  await using n = await open({ driver: "memory", size: 4096 });
  await assert.rejects(n.pwrite(2 ** 32, pattern(1, 1)), (e: BlockError) => e.code === "ENOSPC" && /limit/.test(e.message));
  assert.equal(n.length, 4096);
});

Deno.test("memory node pwriteZeroes() zeroes the range", async () => {
  await using n = await open({ driver: "memory", size: 8192 });
  await n.pwrite(0, pattern(8192, 0xff));
  await n.pwriteZeroes(1024, 2048);
  const buf = new Uint8Array(8192);
  await n.pread(0, buf);
  assert.deepEqual(buf.subarray(1024, 3072), new Uint8Array(2048));
  assert.equal(buf[1023], 0xff);
  assert.equal(buf[3072], 0xff);
});

Deno.test("memory node pdiscard() makes the range read zeros", async () => {
  await using n = await open({ driver: "memory", size: 8192 });
  await n.pwrite(0, pattern(8192, 0xff));
  await n.pdiscard(4096, 4096);
  const buf = new Uint8Array(4096);
  await n.pread(4096, buf);
  assert.deepEqual(buf, new Uint8Array(4096));
});

Deno.test("memory node truncate() shrinks, and growing again reads zeros", async () => {
  await using n = await open({ driver: "memory", size: 8192 });
  await n.pwrite(0, pattern(8192, 0x42));
  await n.truncate(1000);
  assert.equal(n.length, 1000);
  await n.truncate(8192);
  const buf = new Uint8Array(8192);
  await n.pread(0, buf);
  assert.deepEqual(buf.subarray(0, 1000), pattern(1000, 0x42));
  assert.deepEqual(buf.subarray(1000), new Uint8Array(7192));
});

Deno.test("memory node flush() succeeds and is counted once per batch", async () => {
  await using n = await open({ driver: "memory", size: 4096 });
  await n.pwrite(0, pattern(512, 1));
  await n.flush();
  await n.flush();
  assert.equal(n.stats.flushes, 1);
});

Deno.test("memory node rejects an unknown option naming it", async () => {
  await assert.rejects(open({ driver: "memory", colour: "blue" }), (e: BlockError) => e.code === "EINVAL" && /colour/.test(e.message));
});

Deno.test("memory node rejects a size that is not a size", async () => {
  await assert.rejects(open({ driver: "memory", size: "big" }), (e: BlockError) => e.code === "EINVAL" && /'size'/.test(e.message));
});

Deno.test("raw over memory is a plain window", async () => {
  await using n = await open({ driver: "raw", offset: 512, size: 1024, file: { driver: "memory", size: 4096 } });
  assert.equal(n.length, 1024);
  await n.pwrite(0, pattern(1024, 5));
  const below = n.file!;
  const buf = new Uint8Array(4096);
  await below.pread(0, buf);
  assert.deepEqual(buf.subarray(512, 1536), pattern(1024, 5));
  assert.equal(buf[511], 0);
  assert.equal(buf[1536], 0);
});
