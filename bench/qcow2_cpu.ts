/**
 * The request-path benchmark of issue 11: blkgraph's qcow2 node against
 * `qemu-img bench` on the same image, over the same offsets, in the same
 * minutes. Both sides walk qemu-img bench's offset sequence
 * (`qemuBenchOffsets`: `-S` steps from offset 0, wrapping at the image's
 * end): sequential (the default step, the request size) and scattered
 * (`-S` 7919 requests, which visits every slot in a scattered order — the
 * only way qemu-img bench can scatter). Scattered writes into large page
 * cache folios cost the kernel far more than sequential ones (for QEMU's
 * io_uring workers too), so a row compares like with like only when both
 * sides take the same walk.
 *
 * Workloads: 4 KiB and 64 KiB reads and overwrites on a fully allocated
 * 1 GiB image (64 KiB clusters, written by `qemu-img convert` from a filled
 * raw file), page-cached, `cache=writeback`; allocating 4 KiB writes, one per
 * new cluster (`-S 64k`), on a fresh empty image (`qemu-img create`) for
 * every run on both sides. Runs alternate (qemu-img, then ours); each figure
 * is the median of the runs. Two figures per side: requests/s (ours: the
 * promise pool's wall time; qemu-img's "Run completed in" time, which
 * leaves out start-up and close) and CPU µs per request (user + system of
 * all threads; ours `process.cpuUsage()` around the requests and the close,
 * qemu-img's from `times` after the child, minus a one-request run of the
 * same command for its start-up), which a loaded machine disturbs far less.
 *
 *     deno run -A bench/qcow2_cpu.ts [--runs N] [--only TEXT] [--quick]
 *
 * (also `deno task bench -- --only request_path`).
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import { open } from "../mod.ts";
import { type BenchOp, drive, qemuBenchOffsets, runCmd, syncFile, writeFilledFile } from "./_drive.ts";
import { benchArgs, hasQemuImg, parseBenchOutput } from "./_qemu.ts";
import { type BenchOptions, type BenchTable, fmtRate, median, toMarkdown } from "./_table.ts";

const CLUSTER = 65536;
/** The scattered walk's step, in requests (odd, so every slot of a power-of-two image is visited). */
const STRIDE = 7919;

/** One row of the table. */
interface Case {
  label: string;
  op: BenchOp;
  size: number;
  depth: number;
  count: number;
  /** `-S`; absent: the request size (sequential). */
  step?: number;
  /** A fresh empty image for every run (allocating writes). */
  alloc?: boolean;
  /** Issue 11's target for the requests/s ratio. */
  target: number;
}

function cases(imageSize: number, quick: boolean): Case[] {
  const n = (full: number): number => (quick ? Math.max(500, Math.round(full / 20)) : full);
  return [
    { label: "read 4 KiB", op: "read", size: 4096, depth: 16, count: n(200000), target: 1.3 },
    { label: "read 4 KiB", op: "read", size: 4096, depth: 1, count: n(200000), target: 1.3 },
    { label: "read 64 KiB", op: "read", size: 65536, depth: 16, count: n(50000), target: 1.1 },
    { label: "read 64 KiB", op: "read", size: 65536, depth: 1, count: n(50000), target: 1.1 },
    { label: "overwrite 4 KiB", op: "write", size: 4096, depth: 16, count: n(100000), target: 1.2 },
    { label: "overwrite 64 KiB", op: "write", size: 65536, depth: 16, count: n(30000), target: 1.2 },
    { label: "read 4 KiB, scattered", op: "read", size: 4096, depth: 16, count: n(200000), step: 4096 * STRIDE, target: 1.3 },
    { label: "overwrite 4 KiB, scattered", op: "write", size: 4096, depth: 16, count: n(50000), step: 4096 * STRIDE, target: 1.2 },
    { label: "overwrite 64 KiB, scattered", op: "write", size: 65536, depth: 16, count: n(20000), step: 65536 * STRIDE, target: 1.2 },
    {
      label: "allocating write 4 KiB",
      op: "write",
      size: 4096,
      depth: 16,
      count: imageSize / CLUSTER,
      step: CLUSTER,
      alloc: true,
      target: 3,
    },
  ];
}

/** One side's figures for one run. */
interface Sample {
  rate: number;
  /** CPU µs per request. */
  cpu: number;
}

/** Our run of one case: requests/s and CPU µs per request. */
async function ours(img: string, c: Case, offsets: Float64Array): Promise<Sample> {
  const node = await open(img, { format: "qcow2" });
  let seconds: number, c0: NodeJS.CpuUsage;
  try {
    if (!c.alloc) await drive(node, c.op, c.size, c.depth, offsets.subarray(0, 2000)); // JIT and L2 cache warm-up
    c0 = process.cpuUsage();
    seconds = await drive(node, c.op, c.size, c.depth, offsets);
  } finally {
    await node.close(); // inside the CPU figure: an allocating run's metadata is written here, as in qemu-img's close
  }
  const d = process.cpuUsage(c0);
  return { rate: c.count / seconds, cpu: (d.user + d.system) / c.count };
}

function qemuArgs(img: string, c: Case, count = c.count): string[] {
  return benchArgs(img, { format: "qcow2", count, size: c.size, depth: c.depth, step: c.step, write: c.op === "write" }, "io_uring");
}

/** Runs qemu-img with `args` under bash and returns "Run completed" seconds and the child's CPU seconds (bash's `times`). */
async function qemuTimed(args: string[]): Promise<{ seconds: number; cpu: number }> {
  const script = 'qemu-img "$@" || exit $?; times >&2';
  const out = await new Deno.Command("bash", { args: ["-c", script, "bash", ...args], stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout), err = new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`qemu-img ${args.join(" ")} failed:\n${text}${err}`);
  const t = /(\d+)m([\d.]+)s (\d+)m([\d.]+)s\s*$/.exec(err.trim());
  if (!t) throw new Error(`bash times: unexpected output ${JSON.stringify(err)}`);
  return { seconds: parseBenchOutput(text), cpu: Number(t[1]) * 60 + Number(t[2]) + Number(t[3]) * 60 + Number(t[4]) };
}

/** qemu-img bench's run of one case; `startCpu` is the CPU seconds of its start-up and close alone. */
async function qemu(img: string, c: Case, startCpu: number): Promise<Sample> {
  const r = await qemuTimed(qemuArgs(img, c));
  return { rate: c.count / r.seconds, cpu: (Math.max(0, r.cpu - startCpu) * 1e6) / c.count };
}

async function freshImage(path: string, size: number): Promise<void> {
  await Deno.remove(path).catch(() => {});
  await runCmd("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `cluster_size=${CLUSTER}`, path, String(size)]);
}

const loadavg = (): number => Deno.loadavg()[0];

/** Runs every case; the table of issue 11's request-path targets. */
export async function run(o: BenchOptions, only?: string): Promise<BenchTable> {
  if (!hasQemuImg()) {
    return { title: "qcow2 request path against qemu-img bench", columns: ["note"], rows: [["qemu-img is not installed"]] };
  }
  const imageSize = o.quick ? 64 << 20 : 1 << 30;
  const full = `${o.dir}/full.qcow2`, empty = `${o.dir}/empty.qcow2`;
  await writeFilledFile(`${o.dir}/full.raw`, imageSize);
  await runCmd("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", "-o", `cluster_size=${CLUSTER}`, `${o.dir}/full.raw`, full]);
  await Deno.remove(`${o.dir}/full.raw`);
  await syncFile(full);
  // qemu-img's start-up, open and close alone, subtracted from its CPU figures.
  const starts: number[] = [];
  for (let i = 0; i < 5; i++) starts.push((await qemuTimed(qemuArgs(full, { ...cases(imageSize, true)[1], count: 1 }, 1))).cpu);
  const startCpu = median(starts);
  const rows: (string | number)[][] = [];
  for (const c of cases(imageSize, o.quick)) {
    if (only && !c.label.includes(only)) continue;
    const offsets = qemuBenchOffsets(c.count, { size: c.size, step: c.step, length: imageSize });
    const img = c.alloc ? empty : full;
    if (c.alloc) { // warm our JIT on the allocating path once, untimed
      await freshImage(empty, imageSize);
      await ours(empty, c, offsets.subarray(0, 2000));
    }
    const mine: Sample[] = [], theirs: Sample[] = [];
    const load = [loadavg()];
    for (let r = 0; r < o.runs; r++) {
      if (c.alloc) await freshImage(empty, imageSize);
      else if (c.op === "write") await syncFile(full);
      theirs.push(await qemu(img, c, startCpu));
      if (c.alloc) await freshImage(empty, imageSize);
      else if (c.op === "write") await syncFile(full);
      mine.push(await ours(img, c, offsets));
    }
    load.push(loadavg());
    const [mr, qr] = [median(mine.map((s) => s.rate)), median(theirs.map((s) => s.rate))];
    const [mc, qc] = [median(mine.map((s) => s.cpu)), median(theirs.map((s) => s.cpu))];
    const ratio = mr / qr;
    const command = `qemu-img ${qemuArgs("IMG", c).join(" ")}`;
    rows.push([
      c.label,
      c.depth,
      fmtRate(mr),
      fmtRate(qr),
      `${ratio.toFixed(2)}${ratio >= c.target ? "" : " (below)"}`,
      `≥ ${c.target}`,
      mc.toFixed(2),
      qc.toFixed(2),
      (qc / mc).toFixed(2),
      `${Math.min(...load).toFixed(1)}–${Math.max(...load).toFixed(1)}`,
      `\`${command}\``,
    ]);
    console.error(rows.at(-1)!.join(" | "));
  }
  return {
    title: `qcow2 request path against qemu-img bench (${imageSize >> 20} MiB image, 64 KiB clusters, cache=writeback)`,
    columns: [
      "workload",
      "depth",
      "blkgraph req/s",
      "qemu-img req/s",
      "ratio",
      "target",
      "blkgraph CPU µs/req",
      "qemu-img CPU µs/req",
      "CPU ratio (qemu/ours)",
      "load",
      "qemu-img command",
    ],
    rows,
    notes: [
      `Median of ${o.runs} alternating runs per side; both sides request qemu-img bench's offsets in its order. "ratio" is blkgraph ` +
      "requests/s over qemu-img's; the CPU figures are user + system of all threads per request (qemu-img's minus " +
      `${
        (startCpu * 1000).toFixed(1)
      } ms for its start-up, open and close, measured with \`-c 1\`). The image is fdatasynced before every ` +
      'overwrite run; allocating writes start from a fresh `qemu-img create` image on both sides. "load" is the 1-minute load average ' +
      "before and after the case.",
    ],
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { runs: { type: "string", default: "5" }, only: { type: "string" }, quick: { type: "boolean", default: false } },
  });
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-reqpath-" });
  try {
    console.log(toMarkdown(await run({ quick: values.quick, runs: Number(values.runs), dir }, values.only)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
