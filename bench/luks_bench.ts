/**
 * luks (aes-256-xts-plain64, QEMU's default) next to QEMU on the same image
 * in the same run: random 4 KiB and 64 KiB reads and overwrites at depth 16
 * on a fully written 1 GiB image, and `convert` of that image to raw against
 * `qemu-img convert`.
 *
 * The QEMU side of the request figures is `qemu-io`, not `qemu-img bench`:
 * qemu-img 7.2's bench has no `--object`, so it cannot give a luks image its
 * secret. qemu-io runs the same requests as `aio_read`/`aio_write`
 * commands, 16 in flight then `aio_flush` (a drain), and its rate is taken
 * from the wall time of the process minus that of the same open with no
 * requests. blkgraph keeps 16 requests in flight continuously, and its
 * image opens once per run (not timed).
 *
 * Run: `deno task bench -- --only luks` or `deno run -A bench/luks_bench.ts [--quick]`.
 *
 * @module
 */

import { defineSecret, open, removeSecret } from "../mod.ts";
import { main as cli } from "../cli/main.ts";
import { type BenchOp, drive, randomOffsets, syncFile, writeFilledFile } from "./_drive.ts";
import { type BenchOptions, type BenchTable, fmtRate, median, toMarkdown } from "./_table.ts";
import { hasQemuImg } from "./_qemu.ts";

const PASS = "bench-passphrase";
const OBJECT = `secret,id=benchsec,data=${PASS}`;
const DEPTH = 16;

interface Workload {
  label: string;
  op: BenchOp;
  size: number;
  count: number;
}

function spec(path: string): string {
  return `driver=luks,key-secret=benchsec,file.filename=${path}`;
}

/**
 * Runs qemu-img and returns the seconds of the successful run. Commands that
 * make key slots are retried when QEMU's PBKDF calibration trips over a
 * coarse thread CPU clock ("Unable to get accurate CPU usage").
 */
async function qemuImg(args: string[]): Promise<number> {
  for (let attempt = 0;; attempt++) {
    const t0 = performance.now();
    const out = await new Deno.Command("qemu-img", { args, stdout: "null", stderr: "piped" }).output();
    const seconds = (performance.now() - t0) / 1000;
    if (out.success) return seconds;
    const err = new TextDecoder().decode(out.stderr);
    if (!err.includes("Unable to get accurate CPU usage") || attempt > 8) throw new Error(`qemu-img ${args.join(" ")}: ${err}`);
  }
}

async function timeQemuIo(path: string, cmds: string[]): Promise<number> {
  // Tens of thousands of commands do not fit an argument list: they go to qemu-io's prompt on stdin.
  const args = ["--object", OBJECT, "--image-opts", spec(path)];
  const t0 = performance.now();
  const child = new Deno.Command("qemu-io", { args, stdin: "piped", stdout: "piped", stderr: "piped" }).spawn();
  // Collect the output while feeding the commands, or a full stdout pipe stops qemu-io.
  const output = child.output();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(cmds.join("\n") + "\nquit\n"));
  await w.close();
  const out = await output;
  const seconds = (performance.now() - t0) / 1000;
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success || /error|failed|can't open/i.test(text)) throw new Error(`qemu-io failed: ${text.slice(0, 500)}`);
  return seconds;
}

/** The qemu-io command list for a workload: batches of DEPTH aio requests, each batch drained. */
function qemuCommands(w: Workload, offsets: Float64Array): string[] {
  const cmds: string[] = [];
  const verb = w.op === "read" ? "aio_read" : "aio_write -P 0xa5";
  for (let i = 0; i < offsets.length; i++) {
    cmds.push(`${verb} -q ${offsets[i]} ${w.size}`);
    if (i % DEPTH === DEPTH - 1) cmds.push("aio_flush");
  }
  cmds.push("aio_flush");
  return cmds;
}

async function qemuRate(path: string, w: Workload, imageSize: number, runs: number): Promise<number> {
  const rates: number[] = [];
  for (let r = 0; r < runs; r++) {
    if (w.op === "write") await syncFile(path);
    const idle = await timeQemuIo(path, ["aio_flush"]);
    const busy = await timeQemuIo(path, qemuCommands(w, randomOffsets(w.count, w.size, imageSize)));
    rates.push(w.count / Math.max(busy - idle, 1e-6));
  }
  return median(rates);
}

async function ourRate(path: string, w: Workload, imageSize: number, runs: number): Promise<number> {
  const rates: number[] = [];
  for (let r = 0; r < runs; r++) {
    if (w.op === "write") await syncFile(path);
    await using node = await open({ driver: "luks", "key-secret": "benchsec", file: { driver: "file", filename: path } }, {
      cache: "writeback",
    });
    await drive(node, w.op, w.size, DEPTH, randomOffsets(Math.min(2000, w.count), w.size, imageSize));
    const seconds = await drive(node, w.op, w.size, DEPTH, randomOffsets(w.count, w.size, imageSize));
    rates.push(w.count / seconds);
  }
  return median(rates);
}

/** `convert` of the luks image to raw: blkgraph's CLI in-process against qemu-img convert. */
async function convertTimes(dir: string, luks: string, runs: number): Promise<{ ours: number; qemu: number; cmd: string }> {
  const out = `${dir}/out.raw`;
  const args = ["convert", "--object", OBJECT, "--image-opts", spec(luks), "-O", "raw", out];
  const quiet = { stdout: () => {}, stderr: (s: string) => console.error(s) };
  const q: number[] = [];
  const o: number[] = [];
  for (let r = 0; r < runs; r++) {
    await Deno.remove(out).catch(() => {});
    q.push(await qemuImg(args));
    await Deno.remove(out).catch(() => {});
    const t0 = performance.now();
    const code = await cli(args, quiet);
    if (code !== 0) throw new Error(`blkgraph ${args.join(" ")} exited ${code}`);
    o.push((performance.now() - t0) / 1000);
  }
  await Deno.remove(out).catch(() => {});
  return { ours: median(o), qemu: median(q), cmd: `qemu-img ${args.join(" ").replaceAll(dir, "DIR")}` };
}

/** Runs the luks benchmarks. */
export async function run(o: BenchOptions): Promise<BenchTable[]> {
  if (!hasQemuImg()) return [{ title: "luks (skipped: qemu-img is not installed)", columns: [], rows: [] }];
  const runs = o.quick ? 1 : o.runs;
  const imageSize = o.quick ? 64 << 20 : 1 << 30;
  const n = (full: number) => (o.quick ? Math.max(500, Math.round(full / 20)) : full);
  const raw = `${o.dir}/fill.raw`;
  const luks = `${o.dir}/bench.luks`;
  await writeFilledFile(raw, imageSize);
  await qemuImg(["convert", "--object", OBJECT, "-f", "raw", "-O", "luks", "-o", "key-secret=benchsec,iter-time=10", raw, luks]);
  await Deno.remove(raw);
  await syncFile(luks);
  defineSecret("benchsec", { data: PASS });
  const rows: (string | number)[][] = [];
  try {
    const workloads: Workload[] = [
      { label: "read 4 KiB", op: "read", size: 4096, count: n(40000) },
      { label: "read 64 KiB", op: "read", size: 65536, count: n(10000) },
      { label: "overwrite 4 KiB", op: "write", size: 4096, count: n(40000) },
      { label: "overwrite 64 KiB", op: "write", size: 65536, count: n(10000) },
    ];
    for (const w of workloads) {
      const q = await qemuRate(luks, w, imageSize, runs);
      const r = await ourRate(luks, w, imageSize, runs);
      rows.push([w.label, fmtRate(r), fmtRate(q), (r / q).toFixed(2)]);
    }
  } finally {
    removeSecret("benchsec");
  }
  const conv = await convertTimes(o.dir, luks, runs);
  rows.push([
    `convert luks → raw (${imageSize >> 20} MiB)`,
    `${conv.ours.toFixed(2)} s`,
    `${conv.qemu.toFixed(2)} s`,
    (conv.qemu / conv.ours).toFixed(2),
  ]);
  return [{
    title: `luks (${imageSize >> 20} MiB aes-256-xts-plain64 image, cache=writeback, depth ${DEPTH})`,
    columns: ["workload", "blkgraph", "QEMU", "ratio (blkgraph / QEMU speed)"],
    rows,
    notes: [
      `Median of ${runs} run(s). Requests/s for the I/O rows, seconds for convert; ratio > 1 means blkgraph is faster.`,
      "QEMU side: qemu-io reading aio_read/aio_write commands from stdin, in drained batches of 16 (qemu-img 7.2 bench cannot open " +
      "luks: no --object), wall time minus an empty open; blkgraph keeps 16 requests in flight; uniformly random aligned offsets on both sides.",
      `blkgraph uses ${
        navigator.hardwareConcurrency > 1 ? "one crypto worker thread for requests of 128 KiB and more" : "no worker threads"
      }; ` +
      "its convert runs the CLI in-process; qemu-img convert runs as a process (start-up and the key slot's PBKDF2 included on both sides).",
      "The machine's 2 CPUs are shared with other jobs: figures are noisy, compare ratios from one run.",
      `\`${conv.cmd}\` (blkgraph: the same arguments to \`blkgraph\`)`,
    ],
  }];
}

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-bench-" });
  try {
    for (const t of await run({ quick: Deno.args.includes("--quick"), runs: 5, dir })) console.log(toMarkdown(t));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
