/**
 * `traceTo()` and `--trace-format=chrome`: the trace-event JSON passes the
 * format's rules (tests/_helpers/trace_format.ts) and holds one named track
 * per node, a span per request per node, BLKDBG instants, flush spans,
 * throttle waits and injected errors.
 */

import assert from "node:assert/strict";
import { type BlockNode, type NodeEvent, open, traceTo } from "../../mod.ts";
import { createFakeClock } from "../../filters/throttle.ts";
import { skipUnless, tempDir } from "../_helpers/qemu.ts";
import { validateTrace } from "../_helpers/trace_format.ts";
import { cli } from "./_run.ts";

interface Ev {
  name: string;
  cat?: string;
  ph: string;
  ts?: number;
  dur?: number;
  pid: number;
  tid: number;
  args?: Record<string, unknown> & { req?: { id: number; op: string } };
}
interface Doc {
  traceEvents: Ev[];
  otherData: { blkgraph: { graph: { name: string; driver: string; tid: number; children: { role: string; node: string }[] }[] } };
}

async function traced(node: BlockNode, work: () => Promise<void>): Promise<Doc> {
  let json = "";
  const t = traceTo(node, (s) => void (json += s));
  await work();
  t.stop();
  return JSON.parse(json);
}

/** Thread name by tid. */
function threads(doc: Doc): Map<number, string> {
  return new Map(doc.traceEvents.filter((e) => e.name === "thread_name").map((e) => [e.tid, String(e.args!.name)]));
}

Deno.test("traceTo() writes a trace that passes the format's rules with one named track per node", async () => {
  await using img = await open({ driver: "raw", file: { driver: "blkdebug", image: { driver: "memory", size: 1 << 20 } } });
  const doc = await traced(img, async () => {
    await img.pwrite(0, new Uint8Array(4096).fill(1));
    await img.pread(0, new Uint8Array(4096));
    await img.flush();
  });
  assert.deepEqual(validateTrace(doc, { strict: true }), []);
  const names = [...threads(doc).values()];
  assert.deepEqual(names, [`raw ${img.name}`, `blkdebug ${img.file!.name}`, `memory ${img.file!.primaryChild!.name}`]);
  const graph = doc.otherData.blkgraph.graph;
  assert.deepEqual(graph.map((n) => n.driver), ["raw", "blkdebug", "memory"]);
  assert.deepEqual(graph[0].children, [{ role: "file", node: img.file!.name }]);
});

Deno.test("traceTo() writes one complete span per request per node, nested in time down the graph", async () => {
  await using img = await open({ driver: "raw", file: { driver: "memory", size: 1 << 20 } });
  const doc = await traced(img, () => img.pwrite(8192, new Uint8Array(4096)));
  const spans = doc.traceEvents.filter((e) => e.ph === "X" && e.cat === "request");
  assert.equal(spans.length, 2);
  const [top, below] = spans.sort((a, b) => a.ts! - b.ts!);
  const tids = threads(doc);
  assert.equal(tids.get(top.tid), `raw ${img.name}`);
  assert.equal(tids.get(below.tid), `memory ${img.file!.name}`);
  assert.equal(top.args!.req!.id, below.args!.req!.id);
  assert.ok(top.ts! <= below.ts! && below.ts! + below.dur! <= top.ts! + top.dur!, "the child span lies inside the parent span");
  assert.deepEqual([top.name, top.args!.offset, top.args!.length], ["write", 8192, 4096]);
});

Deno.test("traceTo() writes an instant for every BLKDBG event and flush spans on the flushed nodes", async () => {
  const path = await Deno.makeTempFile();
  await Deno.writeFile(path, new Uint8Array(65536));
  await using img = await open({ driver: "raw", file: { driver: "file", filename: path } });
  const blkdbg: string[] = [];
  img.addListener((e: NodeEvent) => e.kind === "blkdbg" && blkdbg.push(e.event));
  const doc = await traced(img, async () => {
    await img.event("l2_update");
    await img.event("refblock_load");
    await img.pwrite(0, new Uint8Array(512));
    await img.flush();
  });
  await Deno.remove(path);
  const instants = doc.traceEvents.filter((e) => e.ph === "i" && e.cat === "blkdbg").map((e) => e.name);
  assert.deepEqual(instants, blkdbg);
  const tids = threads(doc);
  const flushes = doc.traceEvents.filter((e) => e.ph === "X" && e.cat === "flush").map((e) => tids.get(e.tid));
  assert.deepEqual(flushes.sort(), [`file ${img.file!.name}`, `raw ${img.name}`].sort());
  const driverFlush = doc.traceEvents.filter((e) => e.name === "flush (driver)").map((e) => tids.get(e.tid));
  assert.deepEqual(driverFlush, [`file ${img.file!.name}`]);
});

Deno.test("traceTo() marks a throttle wait as a span nested in the throttle node's request", async () => {
  const clock = createFakeClock();
  await using n = await open({ driver: "throttle", limits: { "iops-total": 10 }, clock, file: { driver: "memory", size: 65536 } });
  const doc = await traced(n, async () => {
    const reads = [0, 1, 2].map((i) => n.pread(i * 512, new Uint8Array(512)));
    await clock.advance(0);
    await clock.advance(150);
    await Promise.all(reads);
  });
  assert.deepEqual(validateTrace(doc, { strict: true }), []);
  const wait = doc.traceEvents.filter((e) => e.cat === "throttle");
  assert.equal(wait.length, 1);
  const parent = doc.traceEvents.find((e) => e.cat === "request" && e.tid === wait[0].tid && e.args!.req!.id === wait[0].args!.req!.id)!;
  assert.ok(parent, "the wait shares a track with its request");
  assert.ok(parent.ts! <= wait[0].ts! && wait[0].ts! + wait[0].dur! <= parent.ts! + parent.dur!);
});

Deno.test("traceTo() marks a blkdebug injection and the failed request's error", async () => {
  await using img = await open({
    driver: "raw",
    file: {
      driver: "blkdebug",
      "inject-error": [{ event: "pwritev", errno: "EIO", once: true }],
      image: { driver: "memory", size: 65536 },
    },
  });
  const doc = await traced(img, () => img.pwrite(0, new Uint8Array(512)).catch(() => {}));
  const inj = doc.traceEvents.filter((e) => e.cat === "inject");
  assert.deepEqual(inj.map((e) => [e.name, e.args!.code, e.args!.op]), [["inject EIO", "EIO", "write"]]);
  const failed = doc.traceEvents.filter((e) => e.ph === "X" && typeof e.args!.error === "string");
  assert.equal(failed.length, 2, "the write failed on the blkdebug node and on the raw node above it");
  assert.match(String(failed[0].args!.error), /^EIO: /);
});

Deno.test("traceTo() puts overlapping requests of one node on separate lanes so spans on a lane nest", async () => {
  await using img = await open({ driver: "raw", file: { driver: "memory", size: 1 << 20 } });
  const doc = await traced(img, async () => {
    await Promise.all([0, 1, 2, 3].map((i) => img.pwrite(i * 4096, new Uint8Array(4096))));
  });
  assert.deepEqual(validateTrace(doc, { strict: true }), []);
  const top = doc.traceEvents.filter((e) => e.ph === "X" && threads(doc).get(e.tid)!.startsWith(`raw ${img.name}`));
  assert.equal(top.length, 4);
  assert.ok(new Set(top.map((e) => e.tid)).size > 1, "concurrent requests took more than one lane");
  assert.ok([...threads(doc).values()].some((n) => n === `raw ${img.name} · lane 2`));
});

Deno.test("traceTo() moves a span that outlives the span it nested under to a lane of its own", async () => {
  await using n = await open({ driver: "memory", size: 65536 });
  const req = { id: 999999, op: "write" as const, node: n.name, offset: 0, length: 512 };
  const ev = (phase: "begin" | "end", op: "write" | "flush", time: number): NodeEvent => ({
    kind: "request",
    phase,
    op,
    offset: 0,
    length: op === "write" ? 512 : 0,
    node: n,
    req,
    time,
  });
  const doc = await traced(n, () => {
    const t = performance.now();
    n.emit(ev("begin", "write", t));
    n.emit(ev("begin", "flush", t + 1)); // same request: nests on the write's lane
    n.emit(ev("end", "write", t + 2)); // ... but the write ends first
    n.emit(ev("end", "flush", t + 3));
    return Promise.resolve();
  });
  assert.deepEqual(validateTrace(doc, { strict: true }), []);
  const [w, f] = ["write", "flush"].map((name) => doc.traceEvents.find((e) => e.ph === "X" && e.name === name)!);
  assert.notEqual(w.tid, f.tid);
});

Deno.test("traceTo() ends spans still open at stop() and marks them unfinished", async () => {
  await using img = await open({ driver: "raw", file: { driver: "blkdebug", image: { driver: "memory", size: 65536 } } });
  let json = "";
  const t = traceTo(img, (s) => void (json += s));
  img.debug.break("pwritev", "A");
  const w = img.pwrite(0, new Uint8Array(512));
  await img.debug.waitBreak("A");
  t.stop();
  img.debug.resume("A");
  await w;
  const doc: Doc = JSON.parse(json);
  assert.deepEqual(validateTrace(doc, { strict: true }), []);
  const open_ = doc.traceEvents.filter((e) => e.args?.unfinished === true);
  assert.ok(open_.length >= 1 && open_.every((e) => e.name === "write"));
});

Deno.test({
  name: "io --trace-format=chrome --trace=FILE writes a valid trace of a qcow2 graph with its metadata events",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using dir = await tempDir();
    const img = `${dir.path}/a.qcow2`;
    const trace = `${dir.path}/t.json`;
    const c = await new Deno.Command("qemu-img", { args: ["create", "-q", "-f", "qcow2", img, "4M"] }).output();
    assert.equal(c.code, 0);
    const r = await cli(["io", "-f", "qcow2", "--trace-format=chrome", `--trace=${trace}`, "-c", "write -P 1 0 64k", "-c", "flush", img]);
    assert.equal(r.code, 0, r.stderr);
    const doc: Doc = JSON.parse(await Deno.readTextFile(trace));
    assert.deepEqual(validateTrace(doc, { strict: true }), []);
    const names = new Set(doc.traceEvents.filter((e) => e.cat === "blkdbg").map((e) => e.name));
    for (const ev of ["cluster_alloc", "l2_alloc_write", "l1_update", "write_aio", "l2_update"]) assert.ok(names.has(ev), ev);
    assert.deepEqual(doc.otherData.blkgraph.graph.map((n) => n.driver), ["qcow2", "file"]);
  },
});

Deno.test("convert and bench --trace-format=chrome write valid traces of every graph they open", async () => {
  await using dir = await tempDir();
  const src = `${dir.path}/s.raw`;
  await Deno.writeFile(src, new Uint8Array(1 << 20).fill(3));
  const t1 = `${dir.path}/convert.json`;
  const r1 = await cli(["convert", "-f", "raw", "-O", "raw", "--trace-format=chrome", `--trace=${t1}`, src, `${dir.path}/d.raw`]);
  assert.equal(r1.code, 0, r1.stderr);
  const d1: Doc = JSON.parse(await Deno.readTextFile(t1));
  assert.deepEqual(validateTrace(d1, { strict: true }), []);
  assert.equal(d1.otherData.blkgraph.graph.length, 4, "source raw+file and target raw+file");
  assert.ok(d1.traceEvents.some((e) => e.name === "read") && d1.traceEvents.some((e) => e.name === "write"));
  const t2 = `${dir.path}/bench.json`;
  const r2 = await cli(["bench", "-f", "raw", "-c", "20", "-d", "4", "-w", "--trace-format=chrome", `--trace=${t2}`, src]);
  assert.equal(r2.code, 0, r2.stderr);
  const d2: Doc = JSON.parse(await Deno.readTextFile(t2));
  assert.deepEqual(validateTrace(d2, { strict: true }), []);
  assert.equal(
    d2.traceEvents.filter((e) => e.ph === "X" && e.name === "write" && e.tid === d2.otherData.blkgraph.graph[0].tid).length > 0,
    true,
  );
});

Deno.test("--trace-format is checked: chrome needs a file, unknown formats and a format without --trace are refused", async () => {
  await using dir = await tempDir();
  const img = `${dir.path}/x.raw`;
  await Deno.writeFile(img, new Uint8Array(65536));
  const a = await cli(["io", "-f", "raw", "--trace", "--trace-format=chrome", "-c", "read 0 512", img]);
  assert.equal(a.code, 1);
  assert.match(a.stderr, /chrome needs a file/);
  const b = await cli(["io", "-f", "raw", `--trace=${dir.path}/t`, "--trace-format=xml", "-c", "read 0 512", img]);
  assert.match(b.stderr, /Invalid --trace-format 'xml'/);
  const c = await cli(["bench", "-f", "raw", "--trace-format=chrome", img]);
  assert.match(c.stderr, /needs --trace=FILE/);
});
