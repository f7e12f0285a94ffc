/**
 * Start-up of short commands: `deno run` of the drop-ins next to QEMU's
 * tools on the same small image, alternating run by run (so load changes
 * hit both sides alike). Each row is a whole process: `qemu-img info`,
 * `qemu-io -c 'read 0 4k'`, `blkgraph info`, `qemu-img --version` (the
 * dispatcher alone) and, as the floor, `deno run` of an empty script.
 * `STARTUP_BENCH_BASELINE=DIR` adds a column for another checkout of the
 * repository (an older commit) run the same way.
 *
 * Run: `deno run -A bench/run.ts --only startup --runs 11`.
 *
 * @module
 */

import { type BenchOptions, type BenchTable, median } from "./_table.ts";
import { hasQemuImg } from "./_qemu.ts";
import { runCmd } from "./_drive.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** Runs `cmd` once with output discarded; resolves to its wall time in ms. */
async function wallMs(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  const ms = performance.now() - t0;
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  return ms;
}

interface Row {
  name: string;
  /** The command line after `deno run -A`, relative to a checkout. */
  ours: (root: string) => string[];
  /** QEMU's command, or undefined for the floor row. */
  qemu?: [string, string[]];
}

/** Runs the start-up comparison. */
export async function run(opts: BenchOptions): Promise<BenchTable> {
  if (!hasQemuImg()) return { title: "start-up: SKIP (no qemu-img)", columns: [], rows: [] };
  const img = `${opts.dir}/startup.qcow2`;
  await runCmd("qemu-img", ["create", "-q", "-f", "qcow2", img, "64M"]);
  const empty = `${opts.dir}/empty.ts`;
  await Deno.writeTextFile(empty, "\n");
  const rows: Row[] = [
    { name: "qemu-img info x.qcow2", ours: (r) => [`${r}cli/qemu-img.ts`, "info", img], qemu: ["qemu-img", ["info", img]] },
    {
      name: "qemu-io -c 'read 0 4k' x.qcow2",
      ours: (r) => [`${r}cli/qemu-io.ts`, "-c", "read 0 4k", img],
      qemu: ["qemu-io", ["-c", "read 0 4k", img]],
    },
    { name: "blkgraph info x.qcow2", ours: (r) => [`${r}cli/main.ts`, "info", img], qemu: ["qemu-img", ["info", img]] },
    { name: "qemu-img --version", ours: (r) => [`${r}cli/qemu-img.ts`, "--version"], qemu: ["qemu-img", ["--version"]] },
    { name: "deno run of an empty script (floor)", ours: () => [empty] },
  ];
  const baseline = Deno.env.get("STARTUP_BENCH_BASELINE")?.replace(/\/?$/, "/");
  const runs = opts.quick ? 3 : Math.max(opts.runs, 5);
  const deno = Deno.execPath();
  const table: (string | number)[][] = [];
  for (const r of rows) {
    const ours: number[] = [];
    const before: number[] = [];
    const qemu: number[] = [];
    // One warm-up each (module and code caches), then alternate.
    await wallMs(deno, ["run", "-A", ...r.ours(ROOT)]);
    if (baseline) await wallMs(deno, ["run", "-A", ...r.ours(baseline)]);
    for (let i = 0; i < runs; i++) {
      ours.push(await wallMs(deno, ["run", "-A", ...r.ours(ROOT)]));
      if (baseline) before.push(await wallMs(deno, ["run", "-A", ...r.ours(baseline)]));
      if (r.qemu) qemu.push(await wallMs(...r.qemu));
    }
    const q = qemu.length ? median(qemu) : undefined;
    table.push([
      r.name,
      ...(baseline ? [median(before).toFixed(1)] : []),
      median(ours).toFixed(1),
      Math.min(...ours).toFixed(1),
      q === undefined ? "-" : q.toFixed(1),
      q === undefined ? "-" : (median(ours) / q).toFixed(1),
    ]);
  }
  return {
    title: `start-up (median of ${runs} runs, ms)`,
    columns: [
      "command",
      ...(baseline ? ["before ms"] : []),
      "blkgraph ms",
      "blkgraph min ms",
      "QEMU ms",
      "ratio (ours/QEMU)",
    ],
    rows: table,
    notes: [`Deno ${Deno.version.deno}; \`deno run -A\` with Deno's default caches (transpiled modules and V8 code cache, both warm).`],
  };
}
