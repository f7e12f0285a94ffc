/**
 * Traces a qcow2 → throttle → file graph into Chrome/Perfetto trace-event
 * JSON with traceTo(): one track per node, a span per request per node,
 * BLKDBG events as instants. Then lists where qcow2 keeps its metadata.
 * Load the trace in Perfetto or chrome://tracing, or run `blkgraph report`.
 *
 *   deno run -A examples/trace_requests_chrome.ts
 */

import { createImage, open, traceTo } from "../mod.ts";

const dir = await Deno.makeTempDir({ prefix: "blkgraph-example-" });
try {
  const path = `${dir}/disk.qcow2`;
  await createImage(path, "qcow2", 16 << 20);
  const disk = await open({
    driver: "qcow2",
    file: { driver: "throttle", limits: { "iops-total": 1000 }, file: { driver: "file", filename: path } },
  });
  const file = await Deno.open(`${dir}/trace.json`, { write: true, create: true });
  const enc = new TextEncoder();
  const tracer = traceTo(disk, (text) => void file.writeSync(enc.encode(text)));
  await Promise.all([0, 1, 2, 3].map((i) => disk.pwrite(i << 20, new Uint8Array(65536).fill(i + 1))));
  await disk.flush();
  await disk.pread(0, new Uint8Array(65536));
  tracer.stop();
  file.close();

  const trace = JSON.parse(await Deno.readTextFile(`${dir}/trace.json`));
  const names = new Map<number, string>();
  for (const e of trace.traceEvents) if (e.name === "thread_name") names.set(e.tid, e.args.name);
  const spans = new Map<string, number>();
  for (const e of trace.traceEvents) {
    if (e.ph === "X") spans.set(names.get(e.tid)!, (spans.get(names.get(e.tid)!) ?? 0) + 1);
  }
  for (const [track, n] of spans) console.log(`${track.padEnd(28)} ${n} spans`);
  const events = trace.traceEvents.filter((e: { cat?: string }) => e.cat === "blkdbg").map((e: { name: string }) => e.name);
  console.log(`BLKDBG events: ${[...new Set(events)].join(" ")}`);

  for (const m of await disk.metadataExtents()) console.log(`${m.kind.padEnd(15)} at ${m.offset} (${m.length} bytes)`);
  await disk.close();
  console.log("from the CLI: blkgraph io --trace-format=chrome --trace=t.json ...; blkgraph report t.json -o report.html");
} finally {
  await Deno.remove(dir, { recursive: true });
}
