/**
 * What an idle filter costs in the chain: an idle `blkdebug` node (no rules,
 * no listeners) and an unlimited `throttle` node between a format node and
 * its file, for qcow2 (a fully allocated image) and raw (to isolate the
 * core's per-layer cost), 4 KiB random reads and overwrites on page-cached
 * files. The chains of one format are measured round-robin within each run
 * (so machine noise hits them alike); each figure is the median of `runs`
 * runs, and the overhead per request is the difference of the median
 * request times against the chain without filters.
 *
 * Run: `deno task bench -- --only filters` or `deno run -A bench/filters_bench.ts [--quick]`.
 *
 * @module
 */

import { type BlockNode, open } from "../mod.ts";
import { type BenchOptions, type BenchTable, fmtRate, median, toMarkdown } from "./_table.ts";
import { hasQemuImg } from "./_qemu.ts";
import { type BenchOp, drive, randomOffsets, runCmd, steppedOffsets, syncFile, writeFilledFile } from "./_drive.ts";

const CLUSTER = 65536;
const SIZE = 4096;

type Spec = Record<string, unknown>;

/** One chain under test: a name and a function building its spec over a file spec. */
interface Chain {
  name: string;
  spec(file: Spec): Spec;
}

const blkdebug = (image: Spec): Spec => ({ driver: "blkdebug", image });
const throttle = (file: Spec, limits?: Record<string, number>): Spec => ({ driver: "throttle", ...(limits ? { limits } : {}), file });

function chains(format: "qcow2" | "raw"): Chain[] {
  const top = (child: Spec): Spec => ({ driver: format, file: child });
  const out: Chain[] = [
    { name: `${format} → file`, spec: (f) => top(f) },
    { name: `${format} → blkdebug → file`, spec: (f) => top(blkdebug(f)) },
    { name: `${format} → blkdebug → throttle → file`, spec: (f) => top(blkdebug(throttle(f))) },
    {
      name: `${format} → throttle (iops-total 10^9) → file`,
      spec: (f) => top(throttle(f, { "iops-total": 1e9 })),
    },
  ];
  if (format === "raw") out.unshift({ name: "file", spec: (f) => f });
  return out;
}

async function oneRun(path: string, chain: Chain, op: BenchOp, depth: number, count: number, imageSize: number): Promise<number> {
  const node: BlockNode = await open(chain.spec({ driver: "file", filename: path }), { cache: "writeback" });
  try {
    await drive(node, op, SIZE, depth, randomOffsets(Math.min(2000, count), SIZE, imageSize)); // warm-up
    const seconds = await drive(node, op, SIZE, depth, randomOffsets(count, SIZE, imageSize));
    return count / seconds;
  } finally {
    await node.close();
  }
}

async function makeQcow2(dir: string, path: string, size: number): Promise<void> {
  if (hasQemuImg()) {
    const raw = `${dir}/filters_fill.raw`;
    await writeFilledFile(raw, size);
    await runCmd("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", "-o", `cluster_size=${CLUSTER}`, raw, path]);
    await Deno.remove(raw);
    return;
  }
  const { createImage } = await import("../mod.ts");
  await createImage(path, "qcow2", size, { options: { cluster_size: CLUSTER } });
  const node = await open({ driver: "qcow2", file: { driver: "file", filename: path } });
  try {
    await drive(node, "write", CLUSTER, 16, steppedOffsets(size / CLUSTER, CLUSTER));
  } finally {
    await node.close();
  }
}

const COLUMNS = ["chain", "op", "depth", "requests/s", "µs/request", "overhead µs/request", "ratio to no filter"];

async function table(
  title: string,
  path: string,
  list: Chain[],
  base: string,
  imageSize: number,
  runs: number,
  counts: Record<BenchOp, number>,
): Promise<BenchTable> {
  const rows: (string | number)[][] = [];
  for (const op of ["read", "write"] as const) {
    for (const depth of [1, 16]) {
      const rates = new Map<string, number[]>(list.map((c) => [c.name, []]));
      for (let r = 0; r < runs; r++) {
        for (const c of list) {
          if (op === "write") await syncFile(path); // start on clean page-cache pages
          rates.get(c.name)!.push(await oneRun(path, c, op, depth, counts[op], imageSize));
        }
      }
      const baseUs = 1e6 / median(rates.get(base)!);
      for (const c of list) {
        const rate = median(rates.get(c.name)!);
        const us = 1e6 / rate;
        rows.push([
          c.name,
          op === "read" ? "read" : "overwrite",
          depth,
          fmtRate(rate),
          us.toFixed(2),
          c.name === base ? "—" : (us - baseUs).toFixed(2),
          c.name === base ? "1.00" : (rate * baseUs / 1e6).toFixed(2),
        ]);
      }
    }
  }
  return {
    title,
    columns: COLUMNS,
    rows,
    notes: [
      `Median of ${runs} run(s); the chains are measured round-robin in each run. 4 KiB uniformly random aligned requests ` +
      `(${counts.read} reads / ${counts.write} overwrites per run after a 2000-request warm-up), cache=writeback, page-cached ` +
      `${
        imageSize >> 20
      } MiB image, fdatasynced before each overwrite run. "overhead" is µs/request minus that of \`${base}\`. The file node does synchronous positional I/O, ` +
      "so requests of the depth-16 pool do not overlap either and the overhead is CPU time spent per request in the added layers.",
    ],
  };
}

/** Runs the filter-overhead benchmarks. */
export async function run(o: BenchOptions): Promise<BenchTable[]> {
  const runs = o.quick ? 1 : o.runs;
  const imageSize = o.quick ? 32 << 20 : 256 << 20;
  const counts: Record<BenchOp, number> = o.quick ? { read: 5000, write: 3000 } : { read: 100000, write: 50000 };
  const qcow2 = `${o.dir}/filters.qcow2`;
  const raw = `${o.dir}/filters.raw`;
  await makeQcow2(o.dir, qcow2, imageSize);
  await writeFilledFile(raw, imageSize);
  await syncFile(raw);
  await syncFile(qcow2);
  return [
    await table("Filter overhead over raw (core per-layer cost)", raw, chains("raw"), "raw → file", imageSize, runs, counts),
    await table("Filter overhead over qcow2", qcow2, chains("qcow2"), "qcow2 → file", imageSize, runs, counts),
  ];
}

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-bench-" });
  try {
    for (const t of await run({ quick: Deno.args.includes("--quick"), runs: 5, dir })) console.log(toMarkdown(t));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
