/**
 * `convert` next to `qemu-img convert` on the same files in the same run,
 * for the whole process (Deno startup included): qcow2 → raw, raw → qcow2,
 * qcow2 → qcow2, a sparse 64 GiB qcow2 image holding scattered data, and
 * `convert -c` with zlib and zstd (mixed-entropy data). Both sides get the
 * same arguments; wall time and peak RSS come from `/usr/bin/time`, output
 * sizes from the files. The ratio is qemu-img's time over ours (above 1:
 * we are faster).
 *
 * Run: `deno task bench -- --only convert` or `deno run -A bench/run.ts --only convert [--quick]`;
 * `CONVERT_BENCH_ROWS=<regexp>` keeps only the rows whose name matches (e.g. `-c` for the compressed ones);
 * `CONVERT_BENCH_BASELINE=DIR` adds a "before" column for another checkout of the repository (an older commit), run
 * in the same alternation. CPU time (user + system, all threads) is printed beside the wall time: on a loaded machine
 * it moves much less than the wall time.
 *
 * @module
 */

import { type BenchOptions, type BenchTable, median } from "./_table.ts";
import { hasQemuImg } from "./_qemu.ts";
import { runCmd, writeFilledFile } from "./_drive.ts";

const CLI = new URL("../cli/main.ts", import.meta.url).pathname;

interface Row {
  name: string;
  src: string;
  args: string[];
}

/** Runs `cmd` under /usr/bin/time; returns wall seconds, CPU seconds (user + system) and peak RSS in MiB. */
async function timed(cmd: string, args: string[]): Promise<{ s: number; cpu: number; rssMiB: number }> {
  const out = await new Deno.Command("/usr/bin/time", { args: ["-f", "%e %M %U %S", cmd, ...args], stdout: "piped", stderr: "piped" })
    .output();
  const err = new TextDecoder().decode(out.stderr).trim().split("\n");
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed:\n${err.join("\n")}`);
  const [s, kb, user, sys] = err[err.length - 1].split(" ").map(Number);
  return { s, cpu: user + sys, rssMiB: kb / 1024 };
}

/** Mixed-entropy data (0-90 % random bytes per 64 KiB), written in 4 MiB pieces. */
async function writeMixedFile(path: string, size: number): Promise<void> {
  const f = await Deno.open(path, { create: true, write: true, truncate: true });
  let x = 12345;
  const rnd = () => (x = (x * 1103515245 + 12345) >>> 0) >>> 8;
  try {
    const chunk = new Uint8Array(4 << 20);
    for (let o = 0; o < size; o += chunk.length) {
      for (let i = 0; i < chunk.length; i++) {
        const p = Math.floor((o + i) / 65536) % 10;
        chunk[i] = rnd() % 10 < p ? rnd() & 0xff : 0x41 + ((i >> 5) & 7);
      }
      await f.write(chunk.subarray(0, Math.min(chunk.length, size - o)));
    }
  } finally {
    f.close();
  }
}

/** A raw file of `virtual` bytes holding `data` bytes in 1 MiB pieces spread evenly (the rest holes). */
async function writeSparseFile(path: string, virtual: number, data: number): Promise<void> {
  const f = await Deno.open(path, { create: true, write: true, truncate: true });
  try {
    const piece = new Uint8Array(1 << 20);
    for (let i = 0; i < piece.length; i++) piece[i] = (i * 31 + 7) & 0xff || 1;
    const n = data / piece.length;
    const step = Math.floor(virtual / n / piece.length) * piece.length;
    for (let k = 0; k < n; k++) {
      await f.seek(k * step, Deno.SeekMode.Start);
      await f.write(piece);
    }
    await f.truncate(virtual);
  } finally {
    f.close();
  }
}

/** Runs the convert comparison. */
export async function run(opts: BenchOptions): Promise<BenchTable[]> {
  if (!hasQemuImg()) return [{ title: "convert: SKIP (no qemu-img)", columns: [], rows: [] }];
  const mib = opts.quick ? 64 : Number(Deno.env.get("CONVERT_BENCH_MIB") ?? 512);
  const size = mib << 20;
  const d = opts.dir;
  await writeFilledFile(`${d}/filled.raw`, size);
  await runCmd("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", `${d}/filled.raw`, `${d}/filled.qcow2`]);
  await writeSparseFile(`${d}/sparse.raw`, 64 * 2 ** 30, size);
  await runCmd("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", `${d}/sparse.raw`, `${d}/sparse.qcow2`]);
  await Deno.remove(`${d}/sparse.raw`);
  const cmib = opts.quick ? 16 : Math.min(mib, 128);
  await writeMixedFile(`${d}/mixed.raw`, cmib << 20);
  await writeFilledFile(`${d}/tiny.raw`, 1 << 20);
  const rows: Row[] = [
    // The fixed cost: process start-up, opening, creating the target, closing.
    { name: "raw → qcow2 (1 MiB: the fixed cost)", src: `${d}/tiny.raw`, args: ["-f", "raw", "-O", "qcow2"] },
    { name: `qcow2 → raw (${mib} MiB)`, src: `${d}/filled.qcow2`, args: ["-f", "qcow2", "-O", "raw"] },
    { name: `raw → qcow2 (${mib} MiB)`, src: `${d}/filled.raw`, args: ["-f", "raw", "-O", "qcow2"] },
    { name: `qcow2 → qcow2 (${mib} MiB)`, src: `${d}/filled.qcow2`, args: ["-f", "qcow2", "-O", "qcow2"] },
    { name: `sparse 64 GiB qcow2 (${mib} MiB data) → qcow2`, src: `${d}/sparse.qcow2`, args: ["-f", "qcow2", "-O", "qcow2"] },
    { name: `convert -c zlib, raw → qcow2 (${cmib} MiB)`, src: `${d}/mixed.raw`, args: ["-c", "-f", "raw", "-O", "qcow2"] },
    {
      name: `convert -c zstd, raw → qcow2 (${cmib} MiB)`,
      src: `${d}/mixed.raw`,
      args: ["-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd"],
    },
  ];
  const only = Deno.env.get("CONVERT_BENCH_ROWS");
  const picked = only ? rows.filter((r) => new RegExp(only).test(r.name)) : rows;
  const out = `${d}/out.img`;
  // Warm Deno's module cache, so the first measured run does not type-check or compile.
  await timed("deno", ["run", "-A", CLI, "info", `${d}/filled.qcow2`]);
  const baseline = Deno.env.get("CONVERT_BENCH_BASELINE")?.replace(/\/?$/, "/");
  if (baseline) await timed("deno", ["run", "-A", `${baseline}cli/main.ts`, "info", `${d}/filled.qcow2`]);
  const table: BenchTable = {
    title: "convert: whole process, blkgraph vs qemu-img convert (same arguments, same files)",
    columns: [
      "conversion",
      ...(baseline ? ["before s"] : []),
      "blkgraph s",
      "qemu-img s",
      "ratio (qemu/ours)",
      ...(baseline ? ["before CPU s"] : []),
      "blkgraph CPU s",
      "qemu-img CPU s",
      "blkgraph RSS MiB",
      "qemu-img RSS MiB",
      "size ours/qemu",
    ],
    rows: [],
    notes: [`Median of ${opts.runs} runs each, alternating; output removed between runs. Commands:`],
  };
  if (baseline) table.notes!.push(`"before" is the checkout in ${baseline}, run the same way in the same alternation.`);
  for (const r of picked) {
    const ours: number[] = [], theirs: number[] = [], oRss: number[] = [], qRss: number[] = [];
    const oCpu: number[] = [], qCpu: number[] = [], before: number[] = [], bCpu: number[] = [];
    let oSize = 0, qSize = 0;
    for (let i = 0; i < opts.runs; i++) {
      const q = await timed("qemu-img", ["convert", ...r.args, r.src, out]);
      qSize = (await Deno.stat(out)).blocks! * 512;
      await Deno.remove(out);
      if (baseline) {
        const b = await timed("deno", ["run", "-A", `${baseline}cli/main.ts`, "convert", ...r.args, r.src, out]);
        await Deno.remove(out);
        before.push(b.s), bCpu.push(b.cpu);
      }
      const o = await timed("deno", ["run", "-A", CLI, "convert", ...r.args, r.src, out]);
      oSize = (await Deno.stat(out)).blocks! * 512;
      await Deno.remove(out);
      theirs.push(q.s), ours.push(o.s), qRss.push(q.rssMiB), oRss.push(o.rssMiB), oCpu.push(o.cpu), qCpu.push(q.cpu);
    }
    const mo = median(ours), mq = median(theirs);
    table.rows.push([
      r.name,
      ...(baseline ? [median(before).toFixed(2)] : []),
      mo.toFixed(2),
      mq.toFixed(2),
      (mq / mo).toFixed(2),
      ...(baseline ? [median(bCpu).toFixed(2)] : []),
      median(oCpu).toFixed(2),
      median(qCpu).toFixed(2),
      median(oRss).toFixed(0),
      median(qRss).toFixed(0),
      (oSize / qSize).toFixed(3),
    ]);
    table.notes!.push(`\`qemu-img convert ${r.args.join(" ")} SRC OUT\` / \`deno run -A cli/main.ts convert ${r.args.join(" ")} SRC OUT\``);
  }
  table.notes!.push("Sizes are allocated bytes (st_blocks) of the output file.");
  return [table];
}

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-convert-bench-" });
  try {
    const { toMarkdown } = await import("./_table.ts");
    for (const t of await run({ quick: Deno.args.includes("--quick"), runs: 5, dir })) console.log(toMarkdown(t));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
