/**
 * Micro-benchmarks of one request's cost through each layer stack: time per
 * 4 KiB request at depth 1, the microtask turns a request takes from call to
 * completion (each `await` of a pending promise, each `.then` hop, is one),
 * and the heap bytes it allocates. Turns and bytes are counts, not timings:
 * they do not move with the machine's load, so they say whether a change
 * added a promise or an object to the hot path.
 *
 * - turns: while a request is in flight, a microtask re-queues itself and
 *   counts; the count of a request minus that of an already-resolved
 *   promise awaited the same way. A request that waits for a macrotask
 *   (real I/O) stops the count at its cap and reads "≥ cap". 0 means the
 *   request completed synchronously and returned a settled promise.
 * - bytes: `gc()` (exposed through `node:v8`), then the growth of
 *   `Deno.memoryUsage().heapUsed` over a batch of requests, divided by the
 *   batch; a batch during which V8 collected reads "—".
 *
 * Run: `deno task bench -- --only micro`, or `deno bench -A bench/micro_bench.ts`
 * for Deno's own timing of the same requests.
 *
 * @module
 */

import v8 from "node:v8";
import { runInNewContext } from "node:vm";
import { type BlockNode, createImage, open } from "../mod.ts";
import { type BenchOptions, type BenchTable, median } from "./_table.ts";

const SIZE = 4096;
const IMAGE = 16 << 20;
const TURN_CAP = 1000;

type Spec = Record<string, unknown>;

/** A layer stack over a file spec. */
interface Stack {
  name: string;
  format: "raw" | "qcow2" | "none";
  spec(file: Spec): Spec;
}

const STACKS: Stack[] = [
  { name: "memory", format: "none", spec: () => ({ driver: "memory", size: IMAGE }) },
  { name: "raw → memory", format: "none", spec: () => ({ driver: "raw", file: { driver: "memory", size: IMAGE } }) },
  { name: "file", format: "none", spec: (f) => f },
  { name: "raw → file", format: "raw", spec: (f) => ({ driver: "raw", file: f }) },
  { name: "raw → blkdebug → file", format: "raw", spec: (f) => ({ driver: "raw", file: { driver: "blkdebug", image: f } }) },
  { name: "raw → throttle → file", format: "raw", spec: (f) => ({ driver: "raw", file: { driver: "throttle", file: f } }) },
  { name: "qcow2 → file", format: "qcow2", spec: (f) => ({ driver: "qcow2", file: f }) },
  {
    name: "qcow2 → blkdebug → file",
    format: "qcow2",
    spec: (f) => ({ driver: "qcow2", file: { driver: "blkdebug", image: f } }),
  },
];

type Op = "read" | "overwrite";

function request(node: BlockNode, op: Op, buf: Uint8Array, i: number): Promise<unknown> {
  const off = ((i * 7919) % (IMAGE / SIZE)) * SIZE;
  return op === "read" ? node.pread(off, buf) : node.pwrite(off, buf);
}

/** Microtask turns from the call until `p` settles, counted by a self-requeueing microtask. */
async function turnsOf(start: () => Promise<unknown>): Promise<number> {
  let done = false;
  let turns = 0;
  const tick = () => {
    if (done || turns >= TURN_CAP) return;
    turns++;
    queueMicrotask(tick);
  };
  queueMicrotask(tick);
  await start().then(() => void (done = true));
  done = true;
  return turns;
}

let gcFn: (() => void) | undefined;
function gc(): (() => void) | undefined {
  if (!gcFn) {
    try {
      v8.setFlagsFromString("--expose-gc");
      gcFn = runInNewContext("gc") as () => void;
    } catch {
      gcFn = undefined;
    }
  }
  return gcFn;
}

/** Heap bytes per request over a batch, or undefined when a collection ran during it. */
async function bytesPerRequest(node: BlockNode, op: Op, buf: Uint8Array, batch: number): Promise<number | undefined> {
  const collect = gc();
  if (!collect) return undefined;
  collect();
  const before = Deno.memoryUsage().heapUsed;
  for (let i = 0; i < batch; i++) await request(node, op, buf, i);
  const grown = Deno.memoryUsage().heapUsed - before;
  return grown < 0 ? undefined : grown / batch;
}

async function timePerRequest(node: BlockNode, op: Op, buf: Uint8Array, count: number): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < count; i++) await request(node, op, buf, i);
  return ((performance.now() - t0) * 1000) / count;
}

/** Images for the stacks: a fully written raw file and a fully allocated qcow2 of the same data. */
async function images(dir: string): Promise<Record<"raw" | "qcow2", string>> {
  const raw = `${dir}/micro.raw`;
  const qcow2 = `${dir}/micro.qcow2`;
  const data = new Uint8Array(IMAGE);
  for (let i = 0; i < IMAGE; i += 4096) data[i] = (i >> 12) & 0xff;
  await Deno.writeFile(raw, data);
  await createImage(qcow2, "qcow2", IMAGE);
  const q = await open({ driver: "qcow2", file: { driver: "file", filename: qcow2 } });
  try {
    for (let off = 0; off < IMAGE; off += 1 << 20) await q.pwrite(off, data.subarray(off, off + (1 << 20)));
  } finally {
    await q.close();
  }
  return { raw, qcow2 };
}

function openStack(stack: Stack, files: Record<"raw" | "qcow2", string>): Promise<BlockNode> {
  const filename = stack.format === "qcow2" ? files.qcow2 : files.raw;
  return open(stack.spec({ driver: "file", filename }), { cache: "writeback" });
}

/** Runs every stack and op; one table. */
export async function run(opts: BenchOptions): Promise<BenchTable> {
  const files = await images(opts.dir);
  const count = opts.quick ? 2000 : 50000;
  const batch = opts.quick ? 500 : 5000;
  const baseline = await turnsOf(() => Promise.resolve());
  const rows: (string | number)[][] = [];
  for (const op of ["read", "overwrite"] as const) {
    for (const stack of STACKS) {
      const node = await openStack(stack, files);
      try {
        const buf = new Uint8Array(SIZE).fill(7);
        await timePerRequest(node, op, buf, Math.min(count, 2000)); // warm-up: caches, JIT
        const us: number[] = [];
        const bytes: number[] = [];
        for (let r = 0; r < opts.runs; r++) {
          us.push(await timePerRequest(node, op, buf, count));
          const b = await bytesPerRequest(node, op, buf, batch);
          if (b !== undefined) bytes.push(b);
        }
        let turnSum = 0;
        for (let i = 0; i < 100; i++) turnSum += (await turnsOf(() => request(node, op, buf, i))) - baseline;
        const turns = turnSum / 100;
        rows.push([
          stack.name,
          op,
          median(us).toFixed(2),
          turns >= TURN_CAP - baseline ? `≥ ${TURN_CAP}` : Number(turns.toFixed(2)),
          bytes.length ? Math.round(median(bytes)) : "—",
        ]);
      } finally {
        await node.close();
      }
    }
  }
  return {
    title: `One 4 KiB request per layer stack, depth 1, page-cached ${IMAGE >> 20} MiB image (median of ${opts.runs} runs)`,
    columns: ["stack", "op", "µs/request", "microtask turns/request", "heap bytes/request"],
    rows,
    notes: [
      `turns: microtask turns from call to completion, minus ${baseline} for awaiting an already-resolved promise;`,
      "bytes: growth of heapUsed after gc() over a batch of requests (— when V8 collected during the batch).",
    ],
  };
}

// `deno bench -A bench/micro_bench.ts`: Deno's timing of the same 4 KiB reads.
const benchFiles = Deno.env.get("BLKGRAPH_MICRO_DIR");
for (const stack of STACKS) {
  let node: BlockNode | undefined;
  let i = 0;
  const buf = new Uint8Array(SIZE);
  Deno.bench({
    name: `read 4 KiB: ${stack.name}`,
    group: "read",
    baseline: stack.name === "file",
    async fn(b) {
      if (!node) {
        const dir = benchFiles ?? (await Deno.makeTempDir({ prefix: "blkgraph-micro-" }));
        node = await openStack(stack, await images(dir));
      }
      b.start();
      await request(node, "read", buf, i++);
      b.end();
    },
  });
}
