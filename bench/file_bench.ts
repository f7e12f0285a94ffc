/**
 * `file` node (and `raw` over `file`) throughput: random 4 KiB and 64 KiB
 * reads and writes on a page-cached 256 MiB file, at queue depth 1 and 16
 * (a promise pool), next to `qemu-img bench` on the same file in the same
 * run. Also O_DIRECT (cache=none) against `qemu-img bench -t none`. Each
 * figure is the median of `runs` runs.
 *
 * Run: `deno task bench` (all modules) or `deno run -A bench/file_bench.ts`.
 *
 * @module
 */

import { type BlockNode, open } from "../mod.ts";
import { type BenchOptions, type BenchTable, fmtRate, median, toMarkdown } from "./_table.ts";
import { hasQemuImg, qemuImgBench } from "./_qemu.ts";

const IMAGE_SIZE = 256 << 20;
/** qemu-img bench walks the image with this many request sizes per step (a prime: every slot is visited once). */
const STRIDE = 7919;

interface Case {
  target: "file" | "raw";
  op: "read" | "write";
  size: number;
  depth: number;
}

/** Issues `offsets.length` requests with `depth` in flight; returns requests per second. */
async function drive(node: BlockNode, op: "read" | "write", size: number, depth: number, offsets: Float64Array): Promise<number> {
  let next = 0;
  const worker = async (buf: Uint8Array) => {
    while (next < offsets.length) {
      const o = offsets[next++];
      if (op === "read") await node.pread(o, buf);
      else await node.pwrite(o, buf);
    }
  };
  const bufs = Array.from({ length: depth }, () => new Uint8Array(size).fill(0xa5));
  const t0 = performance.now();
  await Promise.all(bufs.map(worker));
  return offsets.length / ((performance.now() - t0) / 1000);
}

function randomOffsets(n: number, size: number): Float64Array {
  const slots = IMAGE_SIZE / size;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(Math.random() * slots) * size;
  return out;
}

async function makeImage(path: string): Promise<void> {
  const f = await Deno.open(path, { create: true, write: true, truncate: true });
  const chunk = new Uint8Array(4 << 20).fill(0x5a);
  for (let o = 0; o < IMAGE_SIZE; o += chunk.length) await f.write(chunk);
  f.close();
}

function openTarget(path: string, target: "file" | "raw", cache: string): Promise<BlockNode> {
  const file = { driver: "file", filename: path };
  return open(target === "file" ? file : { driver: "raw", file }, { cache });
}

async function measure(path: string, c: Case, cache: string, count: number, runs: number): Promise<number> {
  const rates: number[] = [];
  for (let r = 0; r < runs; r++) {
    const offsets = randomOffsets(count, c.size);
    const node = await openTarget(path, c.target, cache);
    try {
      // Warm up the JIT and the page cache.
      await drive(node, c.op, c.size, c.depth, offsets.subarray(0, Math.min(2000, count)));
      rates.push(await drive(node, c.op, c.size, c.depth, offsets));
    } finally {
      await node.close();
    }
  }
  return median(rates);
}

async function qemuRate(path: string, op: "read" | "write", size: number, cache: string, count: number, runs: number) {
  const rates: number[] = [];
  let command = "";
  for (let r = 0; r < runs; r++) {
    const res = await qemuImgBench(path, { format: "raw", cache, depth: 16, count, size, step: size * STRIDE, write: op === "write" });
    rates.push(res.iops);
    command = res.command;
  }
  return { iops: median(rates), command };
}

const COLUMNS = ["node", "op", "size", "depth", "requests/s", "MB/s", "qemu-img bench requests/s (-d 16)", "ratio"];

async function table(
  path: string,
  o: BenchOptions,
  title: string,
  cache: string,
  cases: Case[],
  counts: Record<number, number>,
): Promise<BenchTable> {
  const qemu = hasQemuImg();
  const rows: (string | number)[][] = [];
  const commands = new Set<string>();
  const ref = new Map<string, number>();
  for (const c of cases) {
    const count = o.quick ? Math.max(200, counts[c.size] / 20) : counts[c.size];
    const key = `${c.op}/${c.size}`;
    if (qemu && !ref.has(key)) {
      const q = await qemuRate(path, c.op, c.size, cache, count, o.runs);
      ref.set(key, q.iops);
      commands.add(q.command);
    }
    const rate = await measure(path, c, cache, count, o.runs);
    const q = ref.get(key);
    rows.push([
      c.target === "file" ? "file" : "raw → file",
      c.op,
      `${c.size / 1024} KiB`,
      c.depth,
      fmtRate(rate),
      fmtRate((rate * c.size) / 1e6),
      q ? fmtRate(q) : "n/a",
      q ? (rate / q).toFixed(2) : "n/a",
    ]);
  }
  return {
    title,
    columns: COLUMNS,
    rows,
    notes: [
      `Median of ${o.runs} runs; blkgraph offsets are uniformly random and aligned, qemu-img bench strides ${STRIDE} requests per step (wrapping), which visits the same slots in a scattered order.`,
      ...[...commands].map((cmd) => `\`${cmd.replace(path, "IMG")}\``),
    ],
  };
}

/** Runs the file-node benchmarks. */
export async function run(o: BenchOptions): Promise<BenchTable[]> {
  const path = `${o.dir}/file_bench.raw`;
  await makeImage(path);
  const cases: Case[] = [];
  for (const target of ["file", "raw"] as const) {
    for (const op of ["read", "write"] as const) {
      for (const size of [4096, 65536]) for (const depth of [1, 16]) cases.push({ target, op, size, depth });
    }
  }
  const cached = await table(path, o, "File node, page-cached (cache=writeback)", "writeback", cases, { 4096: 100000, 65536: 20000 });
  const directCases: Case[] = [];
  for (const op of ["read", "write"] as const) {
    for (const size of [4096, 65536]) for (const depth of [1, 16]) directCases.push({ target: "file", op, size, depth });
  }
  const direct = await table(path, o, "File node, O_DIRECT (cache=none)", "none", directCases, { 4096: 5000, 65536: 2000 });
  return [cached, direct];
}

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-bench-" });
  try {
    for (const t of await run({ quick: Deno.args.includes("--quick"), runs: 5, dir })) console.log(toMarkdown(t));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
