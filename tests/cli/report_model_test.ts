/**
 * The report model: flush epochs under the dm-log-writes persistence model
 * and nearest-rank latency percentiles, on small hand-made traces whose
 * answers are known.
 */

import assert from "node:assert/strict";
import { flushEpochs, nodeStats, parseTraceReport, percentile } from "../../cli/_report_model.ts";

function trace(events: unknown[]): string {
  return JSON.stringify({
    traceEvents: [{ name: "thread_name", ph: "M", pid: 1, tid: 1, args: { name: "file f" } }, ...events],
    otherData: { blkgraph: { version: 1, graph: [{ name: "f", driver: "file", kind: "protocol", tid: 1, lanes: [1], children: [] }] } },
  });
}
const span = (name: string, ts: number, dur: number, args: Record<string, unknown> = {}) => ({
  name,
  cat: name === "flush" ? "flush" : "request",
  ph: "X",
  ts,
  dur,
  pid: 1,
  tid: 1,
  args: { offset: ts, length: 512, ...args },
});

Deno.test("flushEpochs() gives a write to the first flush that began after it completed", () => {
  const r = parseTraceReport(trace([
    span("write", 0, 10), // ends at 10, before flush 1 begins at 20: epoch 1
    span("write", 15, 10), // ends at 25, while flush 1 runs: epoch 2
    span("flush", 20, 10),
    span("write", 40, 5, { fua: true }), // FUA, completes at 45 before flush 2 ends: shown with flush 2
    span("flush", 30, 30),
    span("flush", 70, 5, { error: "EIO: injected" }), // failed: makes nothing durable
    span("write", 80, 5), // after the last successful flush: pending
  ]));
  const epochs = flushEpochs(r.nodes[0]);
  assert.deepEqual(epochs.map((e) => [e.index, e.flush?.ts, e.writes.map((w) => w.ts)]), [[1, 20, [0]], [2, 30, [15, 40]], [3, undefined, [
    80,
  ]]]);
});

Deno.test("percentile() is nearest-rank and nodeStats() counts ops, bytes and errors", () => {
  assert.equal(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50), 5);
  assert.equal(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90), 9);
  assert.equal(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99), 10);
  assert.equal(percentile([7], 50), 7);
  assert.equal(percentile([], 50), 0);
  const r = parseTraceReport(
    trace([span("read", 0, 4), span("read", 10, 2), span("read", 20, 9, { error: "EIO: x" }), span("write", 30, 1)]),
  );
  assert.deepEqual(nodeStats(r.nodes[0]).map((s) => [s.op, s.count, s.bytes, s.errors, s.p50, s.max]), [["read", 3, 1536, 1, 4, 9], [
    "write",
    1,
    512,
    0,
    1,
    1,
  ]]);
});

Deno.test("parseTraceReport() refuses malformed traces with EINVAL naming the problem", () => {
  assert.throws(() => parseTraceReport("[]"), /no traceEvents array/);
  assert.throws(
    () => parseTraceReport(JSON.stringify({ traceEvents: [], otherData: { blkgraph: { graph: [{}] } } })),
    /graph entry 0 has no name or lanes/,
  );
  // Events on unknown threads or without a numeric ts are skipped, not fatal.
  const r = parseTraceReport(trace([{ name: "x", ph: "X", ts: "soon", tid: 1 }, { name: "y", ph: "X", ts: 1, dur: 1, tid: 99 }]));
  assert.equal(r.events, 0);
});
