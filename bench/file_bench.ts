/**
 * `file` node (and `raw` over `file`) throughput: random 4 KiB and 64 KiB
 * reads and writes on a page-cached 256 MiB file, at queue depth 1 and 16
 * (a promise pool), next to `qemu-img bench` on the same file in the same
 * run. Also O_DIRECT (cache=none: the node's io_uring, and aio=threads for
 * comparison) against `qemu-img bench -t none -i io_uring` at the same
 * depth, on the offsets qemu-img visits. Each figure is the median of `runs`
 * runs.
 *
 * Run: `deno task bench` (all modules) or `deno run -A bench/file_bench.ts`
 * (`--direct`: only the O_DIRECT table; `--quick`: a smoke run).
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
  /** The node's `aio` option (absent: the default). */
  aio?: string;
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

/** The offsets `qemu-img bench -S step` visits: from 0, `step` bytes on, wrapping at the image size less one request. */
function strideOffsets(n: number, size: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0, o = 0; i < n; i++, o = (o + size * STRIDE) % (IMAGE_SIZE - size)) out[i] = o;
  return out;
}

function openTarget(path: string, target: "file" | "raw", cache: string, aio?: string): Promise<BlockNode> {
  const file = { driver: "file", filename: path, ...(aio ? { aio } : {}) };
  return open(target === "file" ? file : { driver: "raw", file }, { cache });
}

/** One run of a case: requests per second. */
async function measureOnce(path: string, c: Case, cache: string, count: number, stride: boolean): Promise<number> {
  // O_DIRECT: the same offsets as qemu-img (the host's cache under the virtual disk then treats both sides alike).
  const offsets = stride ? strideOffsets(count, c.size) : randomOffsets(count, c.size);
  const node = await openTarget(path, c.target, cache, c.aio);
  try {
    // Warm up the JIT and the page cache.
    await drive(node, c.op, c.size, c.depth, offsets.subarray(0, Math.min(2000, count)));
    return await drive(node, c.op, c.size, c.depth, offsets);
  } finally {
    await node.close();
  }
}

async function measure(path: string, c: Case, cache: string, count: number, runs: number, stride: boolean): Promise<number> {
  const rates: number[] = [];
  for (let r = 0; r < runs; r++) rates.push(await measureOnce(path, c, cache, count, stride));
  return median(rates);
}

type QemuCase = { op: "read" | "write"; size: number; depth: number };

function qemuOnce(path: string, c: QemuCase, cache: string, count: number) {
  return qemuImgBench(path, { format: "raw", cache, depth: c.depth, count, size: c.size, step: c.size * STRIDE, write: c.op === "write" });
}

async function qemuRate(path: string, c: QemuCase, cache: string, count: number, runs: number) {
  const rates: number[] = [];
  let command = "";
  for (let r = 0; r < runs; r++) {
    const res = await qemuOnce(path, c, cache, count);
    rates.push(res.iops);
    command = res.command;
  }
  return { iops: median(rates), command };
}

/**
 * Same-depth rows, interleaved: each run of qemu-img is followed by one run
 * of every blkgraph variant of the row, so a change in the machine's load
 * (other jobs share it) hits both sides alike.
 */
async function interleaved(path: string, group: Case[], cache: string, count: number, runs: number, commands: Set<string>) {
  const q: number[] = [];
  const ours = group.map(() => [] as number[]);
  for (let r = 0; r < runs; r++) {
    if (hasQemuImg()) {
      const res = await qemuOnce(path, group[0], cache, count);
      q.push(res.iops);
      commands.add(res.command);
    }
    for (const [i, c] of group.entries()) ours[i].push(await measureOnce(path, c, cache, count, true));
  }
  return { qemu: q.length ? median(q) : undefined, ours: ours.map(median) };
}

/** How a table is measured: against qemu-img at depth 16 or at the row's depth, on random offsets or qemu-img's. */
interface TableMode {
  sameDepth: boolean;
  stride: boolean;
}

async function table(
  path: string,
  o: BenchOptions,
  title: string,
  cache: string,
  cases: Case[],
  counts: Record<number, number>,
  mode: TableMode,
): Promise<BenchTable> {
  const qemu = hasQemuImg();
  const rows: (string | number)[][] = [];
  const commands = new Set<string>();
  const ref = new Map<string, number>();
  const results = new Map<Case, number>();
  const countOf = (c: Case) => o.quick ? Math.max(200, counts[c.size] / 20) : counts[c.size];
  if (mode.sameDepth) {
    const groups = Map.groupBy(cases, (c) => `${c.op}/${c.size}/${c.depth}`);
    for (const [key, group] of groups) {
      const r = await interleaved(path, group, cache, countOf(group[0]), o.runs, commands);
      if (r.qemu !== undefined) ref.set(key, r.qemu);
      group.forEach((c, i) => results.set(c, r.ours[i]));
    }
  }
  for (const c of cases) {
    const count = countOf(c);
    const key = mode.sameDepth ? `${c.op}/${c.size}/${c.depth}` : `${c.op}/${c.size}`;
    if (qemu && !ref.has(key) && !mode.sameDepth) {
      const q = await qemuRate(path, { op: c.op, size: c.size, depth: 16 }, cache, count, o.runs);
      ref.set(key, q.iops);
      commands.add(q.command);
    }
    const rate = results.get(c) ?? await measure(path, c, cache, count, o.runs, mode.stride);
    const q = ref.get(key);
    rows.push([
      (c.target === "file" ? "file" : "raw → file") + (c.aio ? ` (aio=${c.aio})` : ""),
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
    columns: [
      "node",
      "op",
      "size",
      "depth",
      "requests/s",
      "MB/s",
      `qemu-img bench requests/s (${mode.sameDepth ? "same depth" : "-d 16"})`,
      "ratio",
    ],
    rows,
    notes: [
      mode.stride
        ? `Median of ${o.runs} runs, interleaved (one qemu-img run, then one of each blkgraph variant, ${o.runs} times); both sides visit the same offsets (qemu-img bench's: ${STRIDE} requests per step, wrapping); load ${loadAverage()}.`
        : `Median of ${o.runs} runs; blkgraph offsets are uniformly random and aligned, qemu-img bench strides ${STRIDE} requests per step (wrapping), which visits the same slots in a scattered order; load ${loadAverage()}.`,
      ...[...commands].map((cmd) => `\`${cmd.replace(path, "IMG")}\``),
    ],
  };
}

/** Runs the file-node benchmarks (`direct`: only the O_DIRECT table). */
export async function run(o: BenchOptions, direct = false): Promise<BenchTable[]> {
  const path = `${o.dir}/file_bench.raw`;
  await makeImage(path);
  const cases: Case[] = [];
  for (const target of ["file", "raw"] as const) {
    for (const op of ["read", "write"] as const) {
      for (const size of [4096, 65536]) for (const depth of [1, 16]) cases.push({ target, op, size, depth });
    }
  }
  const cachedCounts = { 4096: 100000, 65536: 20000 };
  const cached = direct ? undefined : await table(path, o, "File node, page-cached (cache=writeback)", "writeback", cases, cachedCounts, {
    sameDepth: false,
    stride: false,
  });
  const directCases: Case[] = [];
  for (const op of ["read", "write"] as const) {
    for (const size of [4096, 65536]) {
      for (const depth of [1, 16]) for (const aio of [undefined, "threads"]) directCases.push({ target: "file", aio, op, size, depth });
    }
  }
  const directTable = await table(path, o, "File node, O_DIRECT (cache=none)", "none", directCases, { 4096: 5000, 65536: 2000 }, {
    sameDepth: true,
    stride: true,
  });
  return cached ? [cached, directTable] : [directTable];
}

/** The 1-minute load average, for the notes. */
function loadAverage(): string {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ")[0];
  } catch {
    return "unknown";
  }
}

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-bench-" });
  try {
    const tables = await run({ quick: Deno.args.includes("--quick"), runs: 5, dir }, Deno.args.includes("--direct"));
    for (const t of tables) console.log(toMarkdown(t));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
