import "../_helpers/test_drivers.ts";
import assert from "node:assert/strict";
import { BlockError, BlockNode, type NodeEvent, open } from "../../mod.ts";
import { sinks, spies } from "../_helpers/test_drivers.ts";

Deno.test("pread() and pwrite() round-trip bytes on a memory node", async () => {
  await using n = await open({ driver: "memory", size: 4096 });
  await n.pwrite(100, new Uint8Array([1, 2, 3]));
  const buf = new Uint8Array(5);
  await n.pread(99, buf);
  assert.deepEqual([...buf], [0, 1, 2, 3, 0]);
});

Deno.test("read() and write() work in 512-byte sectors", async () => {
  await using n = await open({ driver: "memory", size: 4096 });
  await n.write(2, new Uint8Array(512).fill(7));
  const buf = new Uint8Array(512);
  await n.pread(1024, buf);
  assert.equal(buf[0], 7);
  await assert.rejects(n.write(0, new Uint8Array(100)), (e: BlockError) => e.code === "EINVAL");
});

Deno.test("pwrite() refuses a negative or unsafe offset with EINVAL", async () => {
  await using n = await open({ driver: "memory", size: 4096 });
  await assert.rejects(n.pwrite(-1, new Uint8Array(1)), (e: BlockError) => e.code === "EINVAL" && /offset/.test(e.message));
  await assert.rejects(n.pwrite(2 ** 60, new Uint8Array(1)), (e: BlockError) => e.code === "EINVAL");
});

Deno.test("pread() past the end of a format node fails with EIO naming the length", async () => {
  await using n = await open({ driver: "raw", file: { driver: "memory", size: 4096 } });
  await assert.rejects(n.pread(4000, new Uint8Array(200)), (e: BlockError) => e.code === "EIO" && /length 4096/.test(e.message));
});

Deno.test("pread() past the end of a protocol node reads zeros", async () => {
  await using n = await open({ driver: "memory", size: 10 });
  await n.pwrite(0, new Uint8Array(10).fill(9));
  const buf = new Uint8Array(20).fill(1);
  await n.pread(5, buf);
  assert.deepEqual([...buf.subarray(0, 5)], [9, 9, 9, 9, 9]);
  assert.ok(buf.subarray(5).every((b) => b === 0));
});

Deno.test("pwrite() past the end of a protocol node grows it", async () => {
  await using n = await open({ driver: "memory", size: 0 });
  await n.pwrite(1000, new Uint8Array(24));
  assert.equal(n.length, 1024);
});

Deno.test("pwrite() on a read-only node fails with EROFS", async () => {
  await using n = await open({ driver: "memory", size: 4096, "read-only": true });
  await assert.rejects(n.pwrite(0, new Uint8Array(1)), (e: BlockError) => e.code === "EROFS" && /read-only/.test(e.message));
});

Deno.test("unaligned pread() is padded to the driver's alignment", async () => {
  await using n = await open({ driver: "test-spy", tag: "align-read", align: 512 });
  const buf = new Uint8Array(10);
  await n.pread(1000, buf);
  await n.pread(1020, buf);
  assert.deepEqual(spies.get("align-read")!.calls, [{ op: "read", offset: 512, length: 512 }, { op: "read", offset: 512, length: 1024 }]);
});

Deno.test("unaligned pwrite() does read-modify-write of head and tail", async () => {
  await using n = await open({ driver: "test-spy", tag: "rmw", align: 512 });
  const spy = spies.get("rmw")!;
  spy.data.fill(0xee);
  await n.pwrite(510, new Uint8Array(1000).fill(1));
  const ops = spy.calls.map((c) => `${c.op}@${c.offset}+${c.length}`);
  assert.deepEqual(ops, ["read@0+512", "read@1024+512", "write@0+1536"]);
  assert.equal(spy.data[509], 0xee);
  assert.equal(spy.data[510], 1);
  assert.equal(spy.data[1509], 1);
  assert.equal(spy.data[1510], 0xee);
});

Deno.test("unaligned pwrite() inside one block reads that block once", async () => {
  await using n = await open({ driver: "test-spy", tag: "rmw1", align: 512 });
  await n.pwrite(10, new Uint8Array(20));
  const ops = spies.get("rmw1")!.calls.map((c) => `${c.op}@${c.offset}+${c.length}`);
  assert.deepEqual(ops, ["read@0+512", "write@0+512"]);
});

Deno.test("requests larger than max-transfer are split", async () => {
  await using n = await open({ driver: "test-spy", tag: "split", "max-transfer": 4096 });
  await n.pwrite(0, new Uint8Array(10000));
  const lens = spies.get("split")!.calls.map((c) => c.length);
  assert.deepEqual(lens, [4096, 4096, 1808]);
});

// The serialisation tests hold one request inside the driver at the spy's
// gate, then start an overlapping request and, after it, a non-overlapping
// "sentinel" request that runs to completion: had the overlapping request not
// been made to wait, it would have reached the driver before the sentinel
// ended. Deterministic: no timers decide anything.

Deno.test("a write overlapping a write in flight reaches the driver only after it completes", async () => {
  await using n = await open({ driver: "test-spy", tag: "ww", size: 16384 });
  const spy = spies.get("ww")!;
  spy.hold.arm(0, 2048);
  const a = n.pwrite(0, new Uint8Array(2048).fill(0xaa));
  await spy.hold.reached;
  const b = n.pwrite(1024, new Uint8Array(2048).fill(0xbb));
  await n.pwrite(8192, new Uint8Array(512).fill(0xcc));
  assert.ok(!spy.log.includes("write 1024+2048 begin"), "the overlapping write waits while the first is held");
  spy.hold.release();
  await Promise.all([a, b]);
  assert.deepEqual(spy.log.filter((l) => !l.startsWith("write 8192")), [
    "write 0+2048 begin",
    "write 0+2048 end",
    "write 1024+2048 begin",
    "write 1024+2048 end",
  ]);
  const d = spy.data;
  assert.ok(d.subarray(0, 1024).every((x) => x === 0xaa) && d.subarray(1024, 3072).every((x) => x === 0xbb), "never interleaved");
});

Deno.test("a read overlapping a write in flight waits for it and sees all of it", async () => {
  await using n = await open({ driver: "test-spy", tag: "rw", size: 16384 });
  const spy = spies.get("rw")!;
  spy.hold.arm(0, 2048);
  const w = n.pwrite(0, new Uint8Array(2048).fill(0xcc));
  await spy.hold.reached; // the first half is written, the second is not
  const buf = new Uint8Array(2048);
  const r = n.pread(1024, buf);
  await n.pread(8192, new Uint8Array(512));
  assert.ok(!spy.log.includes("read 1024+2048 begin"), "the read waits while the write is held");
  spy.hold.release();
  await Promise.all([w, r]);
  assert.ok(spy.log.indexOf("write 0+2048 end") < spy.log.indexOf("read 1024+2048 begin"));
  assert.ok(buf.subarray(0, 1024).every((x) => x === 0xcc) && buf.subarray(1024).every((x) => x === 0), "the whole write, then zeros");
});

Deno.test("a write overlapping a read in flight waits for it, so the read sees none of it", async () => {
  await using n = await open({ driver: "test-spy", tag: "wr", size: 16384 });
  const spy = spies.get("wr")!;
  spy.hold.arm(0, 2048);
  const buf = new Uint8Array(2048);
  const r = n.pread(0, buf);
  await spy.hold.reached;
  const w = n.pwrite(1024, new Uint8Array(2048).fill(0xdd));
  await n.pwrite(8192, new Uint8Array(512));
  assert.ok(!spy.log.includes("write 1024+2048 begin"), "the write waits while the read is held");
  spy.hold.release();
  await Promise.all([r, w]);
  assert.ok(spy.log.indexOf("read 0+2048 end") < spy.log.indexOf("write 1024+2048 begin"));
  assert.ok(buf.every((x) => x === 0), "the read saw nothing of the later write");
});

Deno.test("overlapping reads run concurrently", async () => {
  await using n = await open({ driver: "test-spy", tag: "rr", size: 16384 });
  const spy = spies.get("rr")!;
  spy.hold.arm(0, 2048);
  const a = n.pread(0, new Uint8Array(2048));
  await spy.hold.reached;
  await n.pread(1024, new Uint8Array(2048)); // completes while the first is held
  spy.hold.release();
  await a;
  assert.deepEqual(spy.log, ["read 0+2048 begin", "read 1024+2048 begin", "read 1024+2048 end", "read 0+2048 end"]);
});

Deno.test("non-overlapping writes run concurrently", async () => {
  await using n = await open({ driver: "test-spy", tag: "par", size: 8192 });
  const spy = spies.get("par")!;
  spy.hold.arm(0, 512);
  const a = n.pwrite(0, new Uint8Array(512));
  await spy.hold.reached;
  await n.pwrite(4096, new Uint8Array(512)); // completes while the first is held
  spy.hold.release();
  await a;
  assert.deepEqual(spy.log, ["write 0+512 begin", "write 4096+512 begin", "write 4096+512 end", "write 0+512 end"]);
});

Deno.test("requests reach the driver in the order they were submitted", async () => {
  await using n = await open({ driver: "test-spy", tag: "order", size: 16384 });
  const spy = spies.get("order")!;
  await Promise.all([n.pwrite(0, new Uint8Array(512)), n.pread(4096, new Uint8Array(512)), n.pwrite(8192, new Uint8Array(512))]);
  assert.deepEqual(spy.calls.map((c) => `${c.op} ${c.offset}`), ["write 0", "read 4096", "write 8192"]);
});

Deno.test("a FUA write is followed by a flush when the driver lacks FUA", async () => {
  await using n = await open({ driver: "test-spy", tag: "fua-emul" });
  await n.pwrite(0, new Uint8Array(512), { fua: true });
  assert.deepEqual(spies.get("fua-emul")!.calls.map((c) => c.op), ["write", "flush"]);
});

Deno.test("a FUA write goes straight to a driver that supports FUA", async () => {
  await using n = await open({ driver: "test-spy", tag: "fua-native", fua: "on" });
  await n.pwrite(0, new Uint8Array(512), { fua: true });
  assert.deepEqual(spies.get("fua-native")!.calls, [{ op: "write", offset: 0, length: 512, fua: true }]);
});

Deno.test("flush() skips the disk when nothing was written since the last flush", async () => {
  await using n = await open({ driver: "test-spy", tag: "flushskip" });
  await n.flush();
  await n.pwrite(0, new Uint8Array(1));
  await n.flush();
  await n.flush();
  assert.deepEqual(spies.get("flushskip")!.calls.map((c) => c.op), ["write", "flush"]);
  assert.equal(n.stats.flushes, 1);
  assert.equal(n.stats.flushesSkipped, 2);
});

Deno.test("pwriteSync() writes then flushes", async () => {
  await using n = await open({ driver: "test-spy", tag: "wsync" });
  await n.pwriteSync(0, new Uint8Array(8));
  assert.deepEqual(spies.get("wsync")!.calls.map((c) => c.op), ["write", "flush"]);
});

Deno.test("cache=unsafe makes flush a no-op", async () => {
  await using n = await open({ driver: "test-spy", tag: "unsafe", cache: "unsafe" });
  await n.pwriteSync(0, new Uint8Array(8));
  assert.deepEqual(spies.get("unsafe")!.calls.map((c) => c.op), ["write"]);
});

Deno.test("cache=writethrough makes every write durable", async () => {
  await using n = await open({ driver: "raw", file: { driver: "test-spy", tag: "wt" } }, { cache: "writethrough" });
  await n.pwrite(0, new Uint8Array(8));
  assert.deepEqual(spies.get("wt")!.calls.map((c) => c.op), ["write", "flush"]);
});

Deno.test("a filter without callbacks passes every operation to its child", async () => {
  await using n = await open({ driver: "test-pass", file: { driver: "test-spy", tag: "pass" } });
  await n.pwrite(0, new Uint8Array(4).fill(3));
  const buf = new Uint8Array(4);
  await n.pread(0, buf);
  await n.flush();
  assert.deepEqual([...buf], [3, 3, 3, 3]);
  assert.deepEqual(spies.get("pass")!.calls.map((c) => c.op), ["write", "read", "flush"]);
  assert.equal(n.length, 65536);
});

Deno.test("pwriteZeroes() falls back to writing zero buffers", async () => {
  await using n = await open({ driver: "test-spy", tag: "zero" });
  const spy = spies.get("zero")!;
  spy.data.fill(1);
  await n.pwriteZeroes(10, 100);
  assert.ok(spy.data.subarray(10, 110).every((b) => b === 0));
  assert.equal(spy.data[9], 1);
  assert.equal(spy.data[110], 1);
});

Deno.test("pwriteZeroes() with noFallback fails with ENOTSUP when there is no fast path", async () => {
  await using n = await open({ driver: "test-spy", tag: "zero-nf" });
  await assert.rejects(n.pwriteZeroes(0, 512, { noFallback: true }), (e: BlockError) => e.code === "ENOTSUP");
});

Deno.test("event() is delivered to the file child and seen by listeners", async () => {
  const seen: string[] = [];
  await using n = await open({ driver: "test-events", file: { driver: "test-sink", tag: "ev-child", size: 4096 } });
  const off = n.addListener((e: NodeEvent) => e.kind !== "request" && seen.push(e.kind === "blkdbg" ? e.event : e.kind));
  await n.pwrite(0, new Uint8Array(512));
  off();
  await n.pwrite(0, new Uint8Array(512));
  assert.deepEqual(seen, ["l2_update"]);
  // Each write: the format's l2_update passed down, then the core's own pwritev/pwritev_done at the file node (QEMU's BLKDBG_PWRITEV*).
  assert.deepEqual(sinks.get("ev-child"), ["l2_update", "pwritev", "pwritev_done", "l2_update", "pwritev", "pwritev_done"]);
});

Deno.test("close() closes children and frees the node name", async () => {
  const n = await open({ driver: "raw", "node-name": "closeme", file: { driver: "memory", size: 512 } });
  const file = n.file!;
  await n.close();
  assert.ok(n.closed && file.closed);
  const again = await open({ driver: "memory", "node-name": "closeme" });
  await again.close();
});

Deno.test("operations on a closed node fail with a clear error", async () => {
  const n = await open({ driver: "memory", size: 512 });
  await n.close();
  await assert.rejects(n.pread(0, new Uint8Array(1)), /closed/);
});

Deno.test("blockStatus() of a protocol node reports data at the same offset", async () => {
  await using n = await open({ driver: "memory", size: 4096 });
  const st = await n.blockStatus(0, 4096);
  assert.equal(st.data, true);
  assert.equal(st.hostOffset, 0);
  assert.ok(st.file instanceof BlockNode);
});

Deno.test("truncate() resizes a memory node and refuses bad sizes", async () => {
  await using n = await open({ driver: "memory", size: 4096 });
  await n.truncate(8192);
  assert.equal(await n.getLength(), 8192);
  await assert.rejects(n.truncate(-1), (e: BlockError) => e.code === "EINVAL");
});

Deno.test("a listener on the top node sees the disk flushes its flush causes below it, and stats.flushes counts them", async () => {
  await using top = await open({ driver: "test-pass", file: { driver: "test-pass", file: { driver: "memory", size: 4096 } } });
  const seen: string[] = [];
  top.addListener((e) => e.kind === "flush" && seen.push(e.node.driver.name));
  await top.pwrite(0, new Uint8Array(512).fill(1));
  await top.flush();
  await top.flush(); // nothing written since: skipped at the memory node
  assert.deepEqual(seen, ["memory"]);
  assert.equal(top.stats.flushes, 1);
  assert.equal(top.stats.flushRequests, 2);
  assert.equal(top.flushCount, 1);
  const leaf = top.file!.file!;
  assert.equal(leaf.stats.flushes, 1);
});

Deno.test("stats.flushes of a node does not count disk flushes other nodes' requests cause below it", async () => {
  await using top = await open({ driver: "test-pass", file: { driver: "memory", size: 4096 } });
  const leaf = top.file!;
  await leaf.pwrite(0, new Uint8Array(512).fill(2));
  await leaf.flush(); // the leaf's own request
  assert.equal(leaf.stats.flushes, 1);
  assert.equal(top.stats.flushes, 0);
  assert.equal(top.flushCount, 1, "flushCount counts every flush below");
});
