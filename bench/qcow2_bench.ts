/**
 * qcow2 throughput next to `qemu-img bench` on the same files in the same
 * run, for each of our metadata modes (`ordered`, `metadata-sync`, lazy
 * refcounts): random 4 KiB and 64 KiB reads and overwrites on a fully
 * allocated 1 GiB image (64 KiB clusters, real data clusters written by
 * `qemu-img convert` from a filled raw file), and allocating 4 KiB writes on
 * an empty image (one new cluster per request, `-S 64k`). Queue depth 16 on
 * both sides. Besides requests/s it counts flushes (ours: `node.flushCount`;
 * QEMU's: `strace -f -c` of one extra run with `-i threads`, because with
 * io_uring QEMU's flushes are io_uring operations strace cannot see) and the
 * syscalls on the image file.
 *
 * Run: `deno task bench -- --only qcow2` or `deno run -A bench/qcow2_bench.ts [--quick]`.
 *
 * @module
 */

import { type BlockNode, open } from "../mod.ts";
import { type BenchOptions, type BenchTable, fmtRate, median, toMarkdown } from "./_table.ts";
import { hasQemuImg, qemuImgBench } from "./_qemu.ts";
import {
  type BenchOp,
  drive,
  FLUSH_CALLS,
  hasStrace,
  IO_CALLS,
  randomOffsets,
  runCmd,
  steppedOffsets,
  straceCounts,
  sumCalls,
  syncFile,
  totalCalls,
  writeFilledFile,
} from "./_drive.ts";
import { benchArgs } from "./_qemu.ts";

const CLUSTER = 65536;
/** qemu-img bench walks the image with this many requests per step (odd, so every slot is visited). */
const STRIDE = 7919;
/** At most this many requests in the strace run of a non-allocating workload (strace slows every syscall). */
const STRACE_MAX = 20000;
/** At most this many allocating writes per run in metadata-sync mode. */
const SYNC_ALLOC_MAX = 4096;

/** One of our metadata modes and the QEMU configuration it is compared with. */
interface Mode {
  name: "ordered" | "metadata-sync" | "lazy refcounts";
  /** qcow2 open options. */
  options: Record<string, unknown>;
  /** Whether the image carries the lazy_refcounts compatible bit (what QEMU runs with). */
  lazy: boolean;
}

const MODES: Mode[] = [
  { name: "ordered", options: { "metadata-mode": "ordered" }, lazy: false },
  { name: "metadata-sync", options: { "metadata-mode": "metadata-sync" }, lazy: false },
  { name: "lazy refcounts", options: { "lazy-refcounts": "on" }, lazy: true },
];

interface Workload {
  label: string;
  op: BenchOp;
  size: number;
  /** Allocating writes on a fresh empty image, or requests on the fully allocated one. */
  alloc: boolean;
  count: number;
}

interface OurResult {
  rate: number;
  flushes: number;
  syscalls: number;
  requests: number;
}

interface QemuResult {
  rate: number;
  command: string;
  flushes?: number;
  ioCalls?: number;
  allCalls?: number;
  requests?: number;
}

function workloads(imageSize: number, quick: boolean): Workload[] {
  const n = (full: number): number => (quick ? Math.max(500, Math.round(full / 20)) : full);
  return [
    { label: "read 4 KiB", op: "read", size: 4096, alloc: false, count: n(100000) },
    { label: "read 64 KiB", op: "read", size: 65536, alloc: false, count: n(20000) },
    { label: "overwrite 4 KiB", op: "write", size: 4096, alloc: false, count: n(50000) },
    { label: "overwrite 64 KiB", op: "write", size: 65536, alloc: false, count: n(20000) },
    { label: "allocating write 4 KiB", op: "write", size: 4096, alloc: true, count: imageSize / CLUSTER },
  ];
}

async function createEmpty(path: string, size: number, lazy: boolean, qemu: boolean): Promise<void> {
  await Deno.remove(path).catch(() => {});
  if (qemu) {
    const o = `cluster_size=${CLUSTER}${lazy ? ",lazy_refcounts=on" : ""}`;
    await runCmd("qemu-img", ["create", "-q", "-f", "qcow2", "-o", o, path, String(size)]);
  } else {
    const { createImage } = await import("../mod.ts");
    await createImage(path, "qcow2", size, { options: { cluster_size: CLUSTER, lazy_refcounts: lazy } });
  }
}

/** A fully allocated image: every cluster a real data cluster holding non-zero data. */
async function createFull(dir: string, path: string, size: number, qemu: boolean): Promise<void> {
  if (qemu) {
    const raw = `${dir}/fill.raw`;
    await writeFilledFile(raw, size);
    await runCmd("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", "-o", `cluster_size=${CLUSTER}`, raw, path]);
    await Deno.remove(raw);
    await syncFile(path); // so that kernel writeback of the fresh image does not slow the first runs
    return;
  }
  await createEmpty(path, size, false, false);
  const node = await open({ driver: "qcow2", file: { driver: "file", filename: path } });
  try {
    await drive(node, "write", CLUSTER, 16, steppedOffsets(size / CLUSTER, CLUSTER));
  } finally {
    await node.close();
  }
}

async function setLazy(path: string, lazy: boolean, qemu: boolean): Promise<void> {
  if (!qemu) return; // our open option selects the mode; QEMU reads the header bit
  await runCmd("qemu-img", ["amend", "-f", "qcow2", "-o", `lazy_refcounts=${lazy ? "on" : "off"}`, path]);
}

function offsetsFor(w: Workload, imageSize: number): Float64Array {
  return w.alloc ? steppedOffsets(w.count, CLUSTER) : randomOffsets(w.count, w.size, imageSize);
}

async function ourRun(path: string, w: Workload, mode: Mode, imageSize: number): Promise<OurResult> {
  const node: BlockNode = await open({ driver: "qcow2", ...mode.options, file: { driver: "file", filename: path } }, {
    cache: "writeback",
  });
  let seconds: number;
  let f0: number;
  const file = node.file!;
  let s0: number;
  const fileCalls = (): number => {
    const s = file.stats;
    return s.reads + s.writes + s.writeZeroes + s.discards + s.flushes;
  };
  try {
    // Warm the JIT and the L2 cache (not for allocating writes: the image must stay empty).
    if (!w.alloc) await drive(node, w.op, w.size, 16, randomOffsets(Math.min(2000, w.count), w.size, imageSize));
    f0 = node.flushCount;
    s0 = fileCalls();
    seconds = await drive(node, w.op, w.size, 16, offsetsFor(w, imageSize));
  } finally {
    await node.close();
  }
  return { rate: w.count / seconds, flushes: node.flushCount - f0, syscalls: fileCalls() - s0, requests: w.count };
}

async function ours(path: string, wl: Workload, mode: Mode, imageSize: number, runs: number, qemu: boolean): Promise<OurResult> {
  // metadata-sync allocations are bound by two fdatasyncs each: fewer requests give the same rate.
  const w = wl.alloc && mode.name === "metadata-sync" ? { ...wl, count: Math.min(wl.count, SYNC_ALLOC_MAX) } : wl;
  const results: OurResult[] = [];
  for (let r = 0; r < runs; r++) {
    if (w.alloc) await createEmpty(path, imageSize, mode.lazy, qemu);
    else if (w.op === "write") await syncFile(path);
    results.push(await ourRun(path, w, mode, imageSize));
  }
  const rate = median(results.map((x) => x.rate));
  return { ...results[results.length - 1], rate };
}

function qemuOpts(w: Workload): { format: string; count: number; size: number; depth: number; write: boolean; step: number } {
  return { format: "qcow2", count: w.count, size: w.size, depth: 16, write: w.op === "write", step: w.alloc ? CLUSTER : w.size * STRIDE };
}

async function qemuRef(
  dir: string,
  path: string,
  w: Workload,
  lazy: boolean,
  imageSize: number,
  runs: number,
  strace: boolean,
): Promise<QemuResult> {
  const rates: number[] = [];
  let command = "";
  for (let r = 0; r < runs; r++) {
    if (w.alloc) await createEmpty(path, imageSize, lazy, true);
    else if (w.op === "write") await syncFile(path);
    const res = await qemuImgBench(path, qemuOpts(w));
    rates.push(res.iops);
    command = res.command;
  }
  const out: QemuResult = { rate: median(rates), command };
  if (strace) {
    // With io_uring, QEMU's flushes are IORING_OP_FSYNC; threads make them visible fdatasync calls.
    if (w.alloc) await createEmpty(path, imageSize, lazy, true);
    const o = qemuOpts(w);
    if (!w.alloc) o.count = Math.min(o.count, STRACE_MAX);
    const counts = await straceCounts("qemu-img", benchArgs(path, o, "threads"), `${dir}/strace.txt`);
    out.flushes = sumCalls(counts, FLUSH_CALLS);
    out.ioCalls = sumCalls(counts, IO_CALLS);
    out.allCalls = totalCalls(counts);
    out.requests = o.count;
  }
  return out;
}

const per1000 = (n: number, requests: number): string => ((n * 1000) / requests).toFixed(1);

const COLUMNS = [
  "workload",
  "blkgraph mode",
  "blkgraph requests/s",
  "qemu-img requests/s",
  "ratio",
  "blkgraph flushes",
  "per 1000 req",
  "qemu flushes",
  "per 1000 req",
  "blkgraph file syscalls/req",
  "qemu file syscalls/req",
  "qemu all syscalls/req",
];

/** Runs the qcow2 benchmarks. */
export async function run(o: BenchOptions): Promise<BenchTable[]> {
  const qemu = hasQemuImg();
  const strace = qemu && hasStrace();
  const runs = o.quick ? 1 : o.runs;
  const imageSize = o.quick ? 64 << 20 : 1 << 30;
  const full = `${o.dir}/full.qcow2`;
  const empty = `${o.dir}/empty.qcow2`;
  await createFull(o.dir, full, imageSize, qemu);
  const rows: (string | number)[][] = [];
  const commands = new Set<string>();
  const qemuCache = new Map<string, QemuResult>();
  const wls = workloads(imageSize, o.quick);
  for (const mode of MODES) {
    await setLazy(full, mode.lazy, qemu);
    for (const w of wls) {
      const path = w.alloc ? empty : full;
      const key = `${w.label}/${mode.lazy}`;
      if (qemu && !qemuCache.has(key)) {
        const q = await qemuRef(o.dir, path, w, mode.lazy, imageSize, runs, strace);
        qemuCache.set(key, q);
        commands.add(q.command.replace(path, "IMG"));
      }
      const q = qemuCache.get(key);
      const r = await ours(path, w, mode, imageSize, runs, qemu);
      rows.push([
        w.label,
        mode.name,
        fmtRate(r.rate),
        q ? fmtRate(q.rate) : "n/a",
        q ? (r.rate / q.rate).toFixed(2) : "n/a",
        r.flushes,
        per1000(r.flushes, r.requests),
        q?.flushes ?? "n/a",
        q?.flushes !== undefined ? per1000(q.flushes, q.requests!) : "n/a",
        (r.syscalls / r.requests).toFixed(2),
        q?.ioCalls !== undefined ? (q.ioCalls / q.requests!).toFixed(2) : "n/a",
        q?.allCalls !== undefined ? (q.allCalls / q.requests!).toFixed(2) : "n/a",
      ]);
    }
  }
  await setLazy(full, false, qemu);
  const checks = qemu ? [await checkImage(full), await checkImage(empty)] : [];
  return [{
    title: `qcow2 (${imageSize >> 20} MiB image, 64 KiB clusters, cache=writeback, depth 16)`,
    columns: COLUMNS,
    rows,
    notes: [
      `Median of ${runs} run(s) per figure; flush and syscall counts are from one run (timed requests plus close). The image is ` +
      "fdatasynced before every overwrite run (ours and QEMU's), so each starts without the dirty page-cache backlog of the previous one.",
      "blkgraph offsets are uniformly random and aligned; qemu-img bench strides 7919 requests per step (wrapping). " +
      "Allocating writes go to offsets 0, 64 KiB, 128 KiB, ... on a freshly created image on both sides " +
      `(metadata-sync: the first ${SYNC_ALLOC_MAX} of them, its rate is bound by two fdatasyncs per request).`,
      "qemu has no metadata-sync mode: its `ordered` figure is plain qcow2 (cache dependencies), its `lazy refcounts` figure runs on an image " +
      "with lazy_refcounts=on.",
      `QEMU's flushes and I/O syscalls are counted with \`strace -f -c\` in one extra run with \`-i threads\` (io_uring flushes are invisible to ` +
      `strace), at most ${STRACE_MAX} requests for non-allocating workloads; "file syscalls" are pread/pwrite(v), fallocate, ftruncate and ` +
      "fdatasync; \"all\" adds the thread pool's futex and eventfd traffic and the process start-up. blkgraph's file syscalls are the " +
      "requests that reached the `file` node (each one synchronous positional syscall, no thread pool).",
      ...checks,
      ...[...commands].map((c) => `\`${c}\``),
    ],
  }];
}

async function checkImage(path: string): Promise<string> {
  const out = await new Deno.Command("qemu-img", { args: ["check", "-f", "qcow2", path], stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n")[0];
  return `\`qemu-img check\` of ${path.split("/").pop()} after the runs: ${out.success ? text : `FAILED (exit ${out.code}): ${text}`}`;
}

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-bench-" });
  try {
    for (const t of await run({ quick: Deno.args.includes("--quick"), runs: 5, dir })) console.log(toMarkdown(t));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
