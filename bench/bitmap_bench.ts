/**
 * The cost of enabled persistent dirty bitmaps per write, next to QEMU's on
 * the same image in the same run: random 4 KiB and 64 KiB overwrites
 * (depth 16) of a fully allocated qcow2 image (64 KiB clusters) with no
 * bitmap, one (64 KiB granularity) and four (512 B, 4 KiB, 64 KiB, 1 MiB),
 * by blkgraph and by `qemu-img bench -w`, which loads the image's bitmaps
 * and records into them too. The overhead column is each tool's rate with
 * bitmaps over its own rate without. A second table isolates the CPU cost
 * of marking (qcow2 on a memory node, so no disk noise), a third times
 * marking alone (`DirtyBitmap.set()` of 4 KiB ranges, pure CPU: the least
 * noisy figure on a shared machine), a fourth storing the bitmaps at close
 * (all of them fully dirty).
 *
 * Run: `deno task bench -- --only bitmap` or `deno run -A bench/bitmap_bench.ts [--quick]`.
 *
 * @module
 */

import { createImage, open, parseSize } from "../mod.ts";
import { type BenchOptions, type BenchTable, fmtRate, median, toMarkdown } from "./_table.ts";
import { hasQemuImg, qemuImgBench } from "./_qemu.ts";
import { drive, randomOffsets, runCmd, syncFile, writeFilledFile } from "./_drive.ts";
import { DirtyBitmap } from "../core/_dirty_bitmap.ts";

const CLUSTER = 65536;
/** qemu-img bench walks the image with this many requests per step (odd, so every slot is visited). */
const STRIDE = 7919;

/** The bitmap sets compared (name and granularity). */
const SETS: { label: string; bitmaps: [string, string][] }[] = [
  { label: "none", bitmaps: [] },
  { label: "1 (64 KiB)", bitmaps: [["b64k", "64k"]] },
  { label: "4 (512 B..1 MiB)", bitmaps: [["b512", "512"], ["b4k", "4k"], ["b64k", "64k"], ["b1m", "1M"]] },
];

async function setBitmaps(path: string, want: [string, string][]): Promise<void> {
  const info = JSON.parse(await runCmd("qemu-img", ["info", "--output=json", path]));
  for (const b of info["format-specific"]?.data?.bitmaps ?? []) await runCmd("qemu-img", ["bitmap", "--remove", path, b.name]);
  for (const [name, g] of want) await runCmd("qemu-img", ["bitmap", "--add", "-g", g, path, name]);
  await syncFile(path);
}

async function ourRate(path: string, size: number, count: number, imageSize: number): Promise<number> {
  const node = await open({ driver: "qcow2", file: { driver: "file", filename: path } }, { cache: "writeback" });
  try {
    await drive(node, "write", size, 16, randomOffsets(Math.min(2000, count), size, imageSize)); // JIT and L2 cache warm-up
    return count / await drive(node, "write", size, 16, randomOffsets(count, size, imageSize));
  } finally {
    await node.close();
  }
}

/** Seconds the close takes to store the image's bitmaps with every bit set. */
async function storeSeconds(path: string, imageSize: number): Promise<number> {
  const node = await open({ driver: "qcow2", file: { driver: "file", filename: path } });
  // Every chunk dirty: one write-zeroes over the whole disk marks them all.
  await node.pwriteZeroes(0, imageSize);
  await node.flush();
  const t0 = performance.now();
  await node.close();
  return (performance.now() - t0) / 1000;
}

/** 4 KiB overwrites per second of a qcow2 image on a memory node with the bitmaps of `set`. */
async function memoryRate(set: [string, string][], count: number): Promise<number> {
  const size = 64 << 20;
  const file = await open({ driver: "memory", size: 0 });
  await createImage("bench.qcow2", "qcow2", size, { file });
  const node = await open({ driver: "qcow2", file });
  try {
    await drive(node, "write", CLUSTER, 16, Float64Array.from({ length: size / CLUSTER }, (_, i) => i * CLUSTER));
    for (const [name, g] of set) await node.bitmaps.add(name, { granularity: parseSize(g) });
    await drive(node, "write", 4096, 16, randomOffsets(2000, 4096, size));
    return count / await drive(node, "write", 4096, 16, randomOffsets(count, 4096, size));
  } finally {
    await node.close();
  }
}

/** Nanoseconds one `set()` of a 4 KiB range at a random offset takes in a bitmap of a 1 GiB disk. */
function markNs(granularity: number, count: number): number {
  const size = 1 << 30;
  const offsets = randomOffsets(count, 4096, size);
  const map = new DirtyBitmap(size, granularity, CLUSTER);
  for (let i = 0; i < Math.min(count, 10000); i++) map.set(offsets[i], 4096); // JIT warm-up
  map.clear();
  const t0 = performance.now();
  for (let i = 0; i < count; i++) map.set(offsets[i], 4096);
  return ((performance.now() - t0) * 1e6) / count;
}

/** Runs the bitmap benchmarks. */
export async function run(o: BenchOptions): Promise<BenchTable[]> {
  const qemu = hasQemuImg();
  if (!qemu) return [{ title: "Dirty bitmaps: qemu-img not installed", columns: ["note"], rows: [["skipped"]] }];
  const runs = o.quick ? 1 : o.runs;
  const imageSize = o.quick ? 64 << 20 : 1 << 30;
  const path = `${o.dir}/bitmaps.qcow2`;
  const raw = `${o.dir}/fill.raw`;
  await writeFilledFile(raw, imageSize);
  await runCmd("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", "-o", `cluster_size=${CLUSTER}`, raw, path]);
  await Deno.remove(raw);
  const rows: (string | number)[][] = [];
  const commands = new Set<string>();
  // The sets take turns within each run, so drift in the machine's load hits them alike.
  for (const [label, size, full] of [["overwrite 4 KiB", 4096, 50000], ["overwrite 64 KiB", 65536, 20000]] as const) {
    const count = o.quick ? Math.round(full / 20) : full;
    const ours = SETS.map(() => [] as number[]);
    const theirs = SETS.map(() => [] as number[]);
    for (let r = 0; r < runs; r++) {
      for (const [i, set] of SETS.entries()) {
        await setBitmaps(path, set.bitmaps);
        ours[i].push(await ourRate(path, size, count, imageSize));
        const q = await qemuImgBench(path, { format: "qcow2", count, size, depth: 16, write: true, step: size * STRIDE });
        theirs[i].push(q.iops);
        commands.add(q.command.replace(path, "IMG"));
      }
    }
    const a0 = median(ours[0]);
    const b0 = median(theirs[0]);
    for (const [i, set] of SETS.entries()) {
      const a = median(ours[i]);
      const b = median(theirs[i]);
      rows.push([label, set.label, fmtRate(a), (a / a0).toFixed(2), fmtRate(b), (b / b0).toFixed(2), (a / b).toFixed(2)]);
    }
  }
  const memRows: (string | number)[][] = [];
  const mem = SETS.map(() => [] as number[]);
  for (let r = 0; r < runs; r++) {
    for (const [i, set] of SETS.entries()) mem[i].push(await memoryRate(set.bitmaps, o.quick ? 20000 : 200000));
  }
  const memBase = median(mem[0]);
  for (const [i, set] of SETS.entries()) {
    const m = median(mem[i]);
    memRows.push([set.label, fmtRate(m), (m / memBase).toFixed(2), ((1e9 / m) - (1e9 / memBase)).toFixed(0)]);
  }
  const markRows: (string | number)[][] = [];
  for (const g of [512, 4096, 65536, 1 << 20]) {
    const ns: number[] = [];
    for (let r = 0; r < runs; r++) ns.push(markNs(g, o.quick ? 100000 : 1000000));
    markRows.push([g >= 1 << 20 ? `${g >> 20} MiB` : g >= 1024 ? `${g >> 10} KiB` : `${g} B`, median(ns).toFixed(1)]);
  }
  const storeRows: (string | number)[][] = [];
  for (const set of SETS.slice(1)) {
    await setBitmaps(path, set.bitmaps);
    const secs: number[] = [];
    for (let r = 0; r < runs; r++) secs.push(await storeSeconds(path, imageSize));
    storeRows.push([set.label, (median(secs) * 1000).toFixed(1)]);
  }
  return [
    {
      title: `Dirty bitmaps: random overwrites of a fully allocated ${imageSize >> 20} MiB qcow2, depth 16 (median of ${runs})`,
      columns: ["workload", "bitmaps", "blkgraph req/s", "vs no bitmap", "qemu-img req/s", "vs no bitmap", "blkgraph/qemu"],
      rows,
      notes: [
        "QEMU command: " + [...commands].join("; "),
        "2 cores shared with other jobs: figures are noisy, compare the ratios within one run.",
      ],
    },
    {
      title: "Dirty bitmaps: the marking cost alone (qcow2 on a memory node, 4 KiB overwrites, depth 16)",
      columns: ["bitmaps", "blkgraph req/s", "vs no bitmap", "ns per request added"],
      rows: memRows,
    },
    {
      title: "Dirty bitmaps: DirtyBitmap.set() of a 4 KiB range at a random offset, 1 GiB disk (pure CPU)",
      columns: ["granularity", "ns per mark"],
      rows: markRows,
    },
    {
      title: "Dirty bitmaps: storing them at close, every bit dirty",
      columns: ["bitmaps", "close ms"],
      rows: storeRows,
    },
  ];
}

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-bench-" });
  try {
    const quick = Deno.args.includes("--quick");
    for (const t of await run({ quick, runs: quick ? 1 : 5, dir })) console.log(toMarkdown(t));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
