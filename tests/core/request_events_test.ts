/**
 * Request begin/end notifications (`{kind: "request"}` node events), the
 * throttle filter's waits and blkdebug's injected errors as node events.
 */

import assert from "node:assert/strict";
import { BlockError, type BlockNode, type NodeEvent, open } from "../../mod.ts";
import { createFakeClock } from "../../filters/throttle.ts";

type RequestEvent = Extract<NodeEvent, { kind: "request" }>;

function listen(nodes: BlockNode[]): NodeEvent[] {
  const seen: NodeEvent[] = [];
  for (const n of nodes) n.addListener((e) => seen.push(e));
  return seen;
}

const requests = (seen: NodeEvent[]) => seen.filter((e): e is RequestEvent => e.kind === "request");

Deno.test("pwrite() on a listened node reports begin and end with op, offset, length and the top-level request", async () => {
  await using n = await open({ driver: "memory", size: 65536 });
  const seen = listen([n]);
  await n.pwrite(4096, new Uint8Array(512));
  const r = requests(seen);
  assert.deepEqual(r.map((e) => [e.phase, e.op, e.offset, e.length]), [["begin", "write", 4096, 512], ["end", "write", 4096, 512]]);
  assert.equal(r[0].req, r[1].req);
  assert.deepEqual({ op: r[0].req.op, offset: r[0].req.offset, length: r[0].req.length }, { op: "write", offset: 4096, length: 512 });
  assert.ok(r[1].time >= r[0].time);
  assert.equal(r[1].error, undefined);
});

Deno.test("requests passed down the graph carry the top-level request id on every node", async () => {
  await using top = await open({ driver: "raw", offset: 1024, file: { driver: "memory", size: 65536 } });
  const seen = listen([top, top.file!]);
  await top.pread(0, new Uint8Array(512));
  const r = requests(seen);
  const begins = r.filter((e) => e.phase === "begin");
  assert.deepEqual(begins.map((e) => [e.node.name, e.offset]), [[top.name, 0], [top.file!.name, 1024]]);
  assert.equal(begins[0].req.id, begins[1].req.id);
  // The child's span lies inside the parent's.
  const [pb, cb, ce, pe] = r;
  assert.deepEqual([pb.node, cb.node, ce.node, pe.node], [top, top.file, top.file, top]);
});

Deno.test("every operation (read, write, write-zeroes, discard, flush, block-status, truncate) reports its span", async () => {
  await using n = await open({ driver: "memory", size: 65536 });
  const seen = listen([n]);
  await n.pread(0, new Uint8Array(512));
  await n.pwrite(0, new Uint8Array(512), { fua: true });
  await n.pwriteZeroes(0, 512);
  await n.pdiscard(0, 512);
  await n.flush();
  await n.blockStatus(0, 512);
  await n.truncate(131072);
  const ops = requests(seen).filter((e) => e.phase === "begin").map((e) => e.op);
  assert.deepEqual(new Set(ops), new Set(["read", "write", "write-zeroes", "discard", "flush", "block-status", "truncate"]));
  assert.equal(requests(seen).find((e) => e.op === "write" && e.phase === "begin")!.fua, true);
});

Deno.test("a failing request's end event carries the error", async () => {
  await using n = await open({ driver: "raw", file: { driver: "memory", size: 4096 } });
  const seen = listen([n]);
  await assert.rejects(n.pwrite(8192, new Uint8Array(512)), BlockError);
  const end = requests(seen).find((e) => e.phase === "end")!;
  assert.ok(end.error instanceof BlockError && end.error.code === "EIO");
});

Deno.test("removing the listener stops request events", async () => {
  await using n = await open({ driver: "memory", size: 4096 });
  const seen: NodeEvent[] = [];
  const off = n.addListener((e) => seen.push(e));
  await n.pwrite(0, new Uint8Array(512));
  off();
  await n.pwrite(0, new Uint8Array(512));
  assert.equal(requests(seen).length, 2);
});

Deno.test("throttle reports a wait as a throttle begin/end pair inside the request's span", async () => {
  const clock = createFakeClock();
  await using n = await open({ driver: "throttle", limits: { "iops-total": 10 }, clock, file: { driver: "memory", size: 65536 } });
  const seen = listen([n]);
  const reads = [0, 1, 2].map((i) => n.pread(i * 512, new Uint8Array(512)));
  await clock.advance(0);
  await clock.advance(150);
  await Promise.all(reads);
  const waits = seen.filter((e) => e.kind === "throttle");
  assert.deepEqual(waits.map((e) => e.kind === "throttle" && e.phase), ["begin", "end"]);
  const w = waits[0] as Extract<NodeEvent, { kind: "throttle" }>;
  assert.equal(w.bytes, 512);
  assert.equal(w.write, false);
  const third = requests(seen).filter((e) => e.req.id === w.req!.id);
  assert.deepEqual(third.map((e) => e.phase), ["begin", "end"]);
  assert.ok(third[0].time <= waits[0].time && waits[1].time <= third[1].time);
});

Deno.test("blkdebug reports an injected error as an inject event naming the code, op and arming event", async () => {
  await using img = await open({
    driver: "raw",
    file: {
      driver: "blkdebug",
      "inject-error": [{ event: "pwritev", errno: "ENOSPC", once: true }],
      image: { driver: "memory", size: 65536 },
    },
  });
  const dbg = img.file!;
  const seen = listen([dbg]);
  await assert.rejects(img.pwrite(0, new Uint8Array(512)), (e: BlockError) => e.code === "ENOSPC");
  const inj = seen.filter((e) => e.kind === "inject") as Extract<NodeEvent, { kind: "inject" }>[];
  assert.equal(inj.length, 1);
  assert.deepEqual([inj[0].code, inj[0].op, inj[0].offset, inj[0].length, inj[0].event], ["ENOSPC", "write", 0, 512, "pwritev"]);
  assert.equal(inj[0].req?.op, "write");
});
