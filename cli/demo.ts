/**
 * `blkgraph demo` (`deno task demo`): a short tour. Creates a qcow2 image in
 * a temporary directory, opens it as qcow2 → blkdebug → file, writes a few
 * megabytes with partial clusters, and shows the metadata events the qcow2
 * driver raises and the flushes it issues in each metadata mode; then runs
 * `check` and `info`, and confirms with `qemu-img check` when installed.
 *
 * @module
 */

import type { BlockNode, NodeEvent } from "../core/node.ts";
import { createImage, open } from "../core/open.ts";
import { driverNames } from "../core/registry.ts";
import { type CliIO, graphNodes, invokeVerb, type Verb } from "./_common.ts";
import { checkVerb } from "./check.ts";
import { infoVerb } from "./info.ts";

const USAGE = `Usage: blkgraph demo [--keep]

A short tour: creates a qcow2 image in a temporary directory, opens it as
qcow2 -> blkdebug -> file, writes a few megabytes (partial clusters
included) and shows the metadata events and flushes of each metadata mode,
then checks the image (and confirms with qemu-img check when installed).
--keep leaves the temporary directory in place.
`;

const SIZE = 64 << 20;
/** The qcow2 open option that picks how metadata reaches the disk. */
const MODE_OPTION = "metadata-mode";
const MODES = ["ordered", "metadata-sync"] as const;

/** What one demo run measured. */
interface ModeRun {
  mode: string;
  ms: number;
  events: string[];
  flushes: number;
}

/** Writes ~4 MiB in 40 writes of 100 KiB at offsets that straddle clusters. */
async function workload(img: BlockNode): Promise<void> {
  const data = new Uint8Array(100 * 1024);
  for (let i = 0; i < 40; i++) {
    data.fill(0x40 + (i % 26));
    await img.pwrite(i * 104 * 1024 + 3000, data);
  }
  await img.flush();
}

async function runMode(path: string, format: string, mode: string): Promise<ModeRun> {
  await createImage(path, format, SIZE);
  const spec: Record<string, unknown> = { driver: format, file: { driver: "blkdebug", image: { driver: "file", filename: path } } };
  if (format === "qcow2") spec[MODE_OPTION] = mode;
  const img = await open(spec);
  const events: string[] = [];
  const listener = (e: NodeEvent) => {
    if (e.kind === "blkdbg") events.push(e.event);
  };
  const removers = graphNodes(img).map((n) => n.addListener(listener));
  const flushes0 = img.flushCount;
  const t0 = performance.now();
  try {
    await workload(img);
  } finally {
    for (const r of removers) r();
  }
  const ms = performance.now() - t0;
  const flushes = img.flushCount - flushes0;
  await img.close();
  return { mode, ms, events, flushes };
}

function describe(r: ModeRun): string {
  const counts = new Map<string, number>();
  for (const e of r.events) counts.set(e, (counts.get(e) ?? 0) + 1);
  const sorted = [...counts].sort((a, b) => b[1] - a[1]);
  const first = r.events.slice(0, 8).join(" → ");
  const lines = [
    `  mode=${r.mode.padEnd(14)} ${r.events.length} events, ${r.flushes} flushes to disk, ${r.ms.toFixed(1)} ms`,
    `    first: ${first || "(none)"}${r.events.length > 8 ? " → …" : ""}`,
    `    counts: ${sorted.map(([e, n]) => `${e}×${n}`).join("  ") || "(none)"}`,
  ];
  return lines.join("\n") + "\n";
}

async function qemuCheck(path: string): Promise<string | undefined> {
  try {
    const out = await new Deno.Command("qemu-img", { args: ["check", path], stdout: "piped", stderr: "piped" }).output();
    const text = new TextDecoder().decode(out.stdout).trim().split("\n")[0];
    return `${text} (exit code ${out.code})`;
  } catch {
    return undefined;
  }
}

async function run(args: string[], io: CliIO): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    io.stdout(USAGE);
    return 0;
  }
  const keep = args.includes("--keep");
  const format = driverNames().includes("qcow2") ? "qcow2" : "raw";
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-demo-" });
  const indent = (s: string) => s.replace(/^(?=.)/gm, "    ");
  try {
    io.stdout(`blkgraph demo: ${format} → blkdebug → file, in ${dir}\n\n`);
    if (format !== "qcow2") io.stdout("(the qcow2 driver is not registered; showing raw, which raises no metadata events)\n\n");
    io.stdout(`1. Write 4 MiB in 40 writes of 100 KiB, each starting mid-cluster, then flush.\n`);
    io.stdout(`   BLKDBG events the ${format} driver raised, and flushes that reached the disk:\n`);
    let last = "";
    for (const mode of format === "qcow2" ? MODES : ["-"]) {
      const path = `${dir}/demo-${mode === "-" ? "raw" : mode}.${format}`;
      io.stdout(describe(await runMode(path, format, mode)));
      last = path;
    }
    io.stdout(`\n2. blkgraph check ${last.slice(dir.length + 1)}\n`);
    const out: string[] = [];
    const sink: CliIO = { stdout: (s) => out.push(s), stderr: (s) => out.push(s) };
    const code = await invokeVerb(checkVerb, [last], sink);
    io.stdout(indent(out.join("")) + `    (exit code ${code})\n`);
    out.length = 0;
    io.stdout(`\n3. blkgraph info ${last.slice(dir.length + 1)}\n`);
    await invokeVerb(infoVerb, [last], sink);
    io.stdout(indent(out.join("").replace(last, last.slice(dir.length + 1))));
    const q = format === "qcow2" ? await qemuCheck(last) : undefined;
    io.stdout(`\n4. qemu-img check: ${q ?? "(qemu-img not installed, or not a qcow2 image; skipped)"}\n`);
  } finally {
    if (keep) io.stdout(`\nKept ${dir}\n`);
    else await Deno.remove(dir, { recursive: true });
  }
  return 0;
}

/** The `demo` verb. */
export const demoVerb: Verb = { name: "demo", summary: "a short tour of blkgraph (qcow2, blkdebug, events, check)", run };
