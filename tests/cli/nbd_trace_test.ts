/**
 * `blkgraph nbd --trace=FILE --trace-format=chrome`: the server's graph is
 * traced as io's, convert's and bench's are — a valid trace-event file with a
 * span per client request on every node it passed.
 */

import assert from "node:assert/strict";
import { open } from "../../mod.ts";
import { tempDir } from "../_helpers/qemu.ts";
import { validateTrace } from "../_helpers/trace_format.ts";
import { blkgraphNbd, sockPath } from "../drivers/nbd/_helpers.ts";

interface Ev {
  name: string;
  cat?: string;
  ph: string;
  tid: number;
  args?: Record<string, unknown>;
}

Deno.test("blkgraph nbd --trace-format=chrome writes a valid trace with a span per client request on each node", async () => {
  await using dir = await tempDir("blkgraph-nbd-trace-");
  const img = `${dir.path}/d.raw`;
  await Deno.writeFile(img, new Uint8Array(1 << 20));
  const trace = `${dir.path}/trace.json`;
  const s = await blkgraphNbd(sockPath(dir.path), ["-f", "raw", `--trace=${trace}`, "--trace-format=chrome"], img);
  {
    await using client = await open({ driver: "nbd", server: { type: "unix", path: s.sock } });
    await client.pwrite(65536, new Uint8Array(4096).fill(0x33));
    await client.pread(65536, new Uint8Array(4096));
    await client.flush();
  }
  assert.equal((await s.status).code, 0, await s.stderr());
  const doc = JSON.parse(await Deno.readTextFile(trace)) as { traceEvents: Ev[] };
  assert.deepEqual(validateTrace(doc, { strict: true }), []);
  const tracks = new Map(doc.traceEvents.filter((e) => e.name === "thread_name").map((e) => [e.tid, String(e.args!.name)]));
  assert.deepEqual([...tracks.values()].map((n) => n.split(" ")[0]), ["raw", "file"]);
  const spans = doc.traceEvents.filter((e) => e.ph === "X" && e.cat === "request");
  const on = (driver: string, op: string) =>
    spans.filter((e) => tracks.get(e.tid)!.startsWith(driver + " ") && e.name === op && e.args!.offset === 65536).length;
  assert.deepEqual([on("raw", "write"), on("file", "write"), on("raw", "read"), on("file", "read")], [1, 1, 1, 1]);
  assert.ok(doc.traceEvents.some((e) => e.ph === "X" && e.name === "flush"), "the client's flush is a span");
});
