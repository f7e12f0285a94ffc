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
import { type CliIO, graphNodes, invokeVerb, type Verb } from "./_common.ts";
import { checkVerb } from "./check.ts";
import { infoVerb } from "./info.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

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
  graph: string;
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

async function runMode(path: string, mode: string): Promise<ModeRun> {
  await createImage(path, "qcow2", SIZE);
  const spec: Record<string, unknown> = { driver: "qcow2", file: { driver: "blkdebug", image: { driver: "file", filename: path } } };
  spec[MODE_OPTION] = mode;
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
  const graph = graphLine(img);
  await img.close();
  return { mode, graph, ms, events, flushes };
}

function graphLine(img: BlockNode): string {
  const parts: string[] = [];
  for (let n: BlockNode | undefined = img; n; n = n.primaryChild) parts.push(`${n.driver.name} (${n.name})`);
  return parts.join(" → ");
}

/** The modes side by side: totals, then each event's count per mode. */
function describe(runs: ModeRun[]): string {
  const w = Math.max(14, ...runs.map((r) => r.mode.length + 2));
  const col = (s: string | number) => String(s).padStart(w);
  let out = `     ${"".padEnd(22)}${runs.map((r) => col(r.mode)).join("")}\n`;
  out += `     ${"events raised".padEnd(22)}${runs.map((r) => col(r.events.length)).join("")}\n`;
  out += `     ${"flushes to disk".padEnd(22)}${runs.map((r) => col(r.flushes)).join("")}\n`;
  out += `     ${"time".padEnd(22)}${runs.map((r) => col(`${r.ms.toFixed(1)} ms`)).join("")}\n`;
  const counts = runs.map((r) => {
    const m = new Map<string, number>();
    for (const e of r.events) m.set(e, (m.get(e) ?? 0) + 1);
    return m;
  });
  const names = [...new Set(runs.flatMap((r) => r.events))];
  names.sort((a, b) => (counts[0].get(b) ?? 0) - (counts[0].get(a) ?? 0));
  out += `\n     events by name:\n`;
  for (const name of names) out += `       ${name.padEnd(20)}${counts.map((c) => col(c.get(name) ?? 0)).join("")}\n`;
  const first = runs[0].events.slice(0, 9);
  out += `\n     first events (${runs[0].mode}):\n       ${first.join(" → ")}${runs[0].events.length > first.length ? " → …" : ""}\n`;
  return out;
}

/** Writes through a blkdebug rule that fails the first L2 update; returns what happened. */
async function injectError(path: string): Promise<string> {
  await createImage(path, "qcow2", SIZE);
  const img = await open({
    driver: "qcow2",
    file: {
      driver: "blkdebug",
      "inject-error": [{ event: "l2_update", errno: "EIO", once: true }],
      image: { driver: "file", filename: path },
    },
  });
  let what = "write + flush succeeded (the rule did not fire)";
  try {
    await workload(img);
  } catch (e) {
    what = `write + flush failed: ${(e as Error).message}`;
  }
  await img.close().catch(() => {});
  return what;
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
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-demo-" });
  const indent = (s: string) => s.replace(/^(?=.)/gm, "     ");
  try {
    io.stdout(`blkgraph demo: a qcow2 image over blkdebug, in ${dir}\n\n`);
    const runs: ModeRun[] = [];
    let last = "";
    for (const mode of MODES) {
      last = `${dir}/demo-${mode}.qcow2`;
      runs.push(await runMode(last, mode));
    }
    io.stdout(`1. Graph: ${runs[0].graph}\n`);
    io.stdout(`   Workload: 40 writes of 100 KiB, each starting mid-cluster (4 MiB), then one flush.\n`);
    io.stdout(`   The same workload in each metadata mode — BLKDBG events the qcow2 driver raised\n`);
    io.stdout(`   and flushes that reached the disk:\n\n`);
    io.stdout(describe(runs));
    let step = 2;
    last = `${dir}/demo-error.qcow2`;
    io.stdout(`\n${step++}. Error injection: a blkdebug rule fails the first l2_update with EIO (once).\n`);
    io.stdout(`     ${await injectError(last)}\n`);
    io.stdout(`     The metadata is written back in dependency order, so the image stays consistent:\n`);
    const name = last.slice(dir.length + 1);
    io.stdout(`\n${step++}. blkgraph check ${name}\n`);
    const out: string[] = [];
    const sink: CliIO = { stdout: (s) => out.push(s), stderr: (s) => out.push(s) };
    const code = await invokeVerb(checkVerb, [last], sink);
    io.stdout(indent(out.join("")) + `     (exit code ${code})\n`);
    out.length = 0;
    io.stdout(`\n${step++}. blkgraph info ${name}\n`);
    await invokeVerb(infoVerb, [last], sink);
    io.stdout(indent(out.join("").replace(last, name)));
    const q = await qemuCheck(last);
    io.stdout(
      `\n${step++}. qemu-img check ${name} (the reference implementation):\n     ${q ?? "(skipped: qemu-img is not installed)"}\n`,
    );
    io.stdout(`\nNext: 'deno task blkgraph --help' lists the qemu-img / qemu-io style verbs.\n`);
  } finally {
    if (keep) io.stdout(`\nKept ${dir}\n`);
    else await Deno.remove(dir, { recursive: true });
  }
  return 0;
}

/** The `demo` verb. */
export const demoVerb: Verb = { name: "demo", summary: VERB_SUMMARIES.demo, run };
