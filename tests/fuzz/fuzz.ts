/**
 * The qcow2 fuzzer (`deno task fuzz`): mutates seed images of every family
 * (`_seeds.ts`) with 1–8 structure-aware mutations each (`_mutate.ts`),
 * runs blkgraph on each case in a child process with a time and memory
 * budget (`_proc.ts`, `_runner.ts`), compares with QEMU (`_case.ts`) and
 * prints how many cases ended in each class. Findings (every case that is
 * not clean or a BlockError) are saved as replayable cases with their image.
 *
 *   deno task fuzz --cases 2000 --seed 1 [--start 0] [--workers 2]
 *     [--out DIR] [--no-qemu] [--budget-ms 10000] [--budget-mb 1024]
 *     [--families v3-64k,zstd] [--nice 10] [--quiet]
 *   deno task fuzz --replay DIR/case.json       # runs one saved case again
 *   deno task fuzz --minimise DIR/case.json     # drops mutations while the class stays
 *
 * Exit code: 0 when every case ended clean or with a BlockError, 1 otherwise.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { hasTool } from "../_helpers/qemu.ts";
import { caseImage, type CaseSpec, generateCase, judge, packImage, runOneCase, type Verdict } from "./_case.ts";
import { Runner } from "./_proc.ts";
import { buildSeeds, type Seed, seedCacheDir } from "./_seeds.ts";

/** Options of one fuzz run. */
export interface FuzzOptions {
  /** Number of cases. */
  cases: number;
  /** Run seed. */
  seed: number;
  /** First case number. */
  start: number;
  /** Parallel workers. */
  workers: number;
  /** Directory for findings and results (none: not kept). */
  out?: string;
  /** Compare with QEMU (when installed). */
  qemu: boolean;
  /** Time budget per case, ms. */
  budgetMs: number;
  /** Resident memory budget per case, MiB. */
  budgetMb: number;
  /** Only these families. */
  families?: string[];
  /** Niceness for the child processes. */
  nice: number;
  /** Print progress. */
  progress: boolean;
  /** Every this many cases (by number) runs with the QEMU differential; the others run blkgraph only. */
  deepEvery: number;
  /** Where seeds are built (and reused). */
  seedDir: string;
}

/** What a run found. */
export interface FuzzSummary {
  /** Cases run. */
  cases: number;
  /** Cases run with the QEMU differential. */
  deep: number;
  /** Cases per class among those. */
  deepClasses: Record<string, number>;
  /** Cases per class. */
  classes: Record<string, number>;
  /** Cases per family and class. */
  families: Record<string, Record<string, number>>;
  /** Distinct signatures of findings (not clean, not BlockError) with a count and the first case. */
  findings: Record<string, { count: number; first: number }>;
  /** BlockError messages (normalised) with counts. */
  blockErrors: Record<string, number>;
  /** Among the cases with the QEMU differential: QEMU accepted, blkgraph accepted, ...; `oursFast`: blkgraph accepted, other cases. */
  accepted: { qemu: number; ours: number; both: number; qemuOnly: number; oursOnly: number; oursFast: number };
  /** qemu-io write outcomes where QEMU accepted the image: ours ok / qemu ok pairs. */
  writes: Record<string, number>;
  /** Wall time, s. */
  seconds: number;
  /** Slowest case (CPU time of blkgraph's side), ms, and its number. */
  slowest: { ms: number; id: number };
  /** Highest peak RSS, MiB, and its case. */
  maxRss: { mb: number; id: number };
}

/** A scratch directory, in memory (/dev/shm) where there is one: cases write and flush a lot of small files. */
async function scratchDir(prefix: string): Promise<string> {
  const shm = await Deno.stat("/dev/shm").then((s) => s.isDirectory, () => false);
  return await Deno.makeTempDir({ prefix, dir: shm ? "/dev/shm" : undefined });
}

const FINDING = new Set(["wrong-readback", "corrupted-by-write", "bad-repair", "differs", "exception", "hang", "memory"]);

async function loadSeeds(opts: FuzzOptions): Promise<{ seeds: Seed[]; images: Map<string, Uint8Array> }> {
  await Deno.mkdir(opts.seedDir, { recursive: true });
  const seeds = await buildSeeds(opts.seedDir, { qemu: opts.qemu, only: opts.families });
  const images = new Map<string, Uint8Array>();
  for (const s of seeds) images.set(s.family.name, await Deno.readFile(`${s.dir}/img.qcow2`));
  return { seeds, images };
}

async function saveFinding(out: string, v: Verdict, image: Uint8Array): Promise<void> {
  const dir = `${out}/findings`;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(
    `${dir}/case-${v.spec.id}.json`,
    JSON.stringify({ ...v.spec, cls: v.cls, signature: v.signature, detail: v.detail }, null, 1),
  );
  await Deno.writeFile(`${dir}/case-${v.spec.id}.qcow2.gz`, packImage(image));
}

/** Runs a fuzz campaign and returns its summary. */
export async function fuzz(opts: FuzzOptions): Promise<FuzzSummary> {
  const t0 = performance.now();
  const { seeds, images } = await loadSeeds(opts);
  const bySeed = new Map(seeds.map((s) => [s.family.name, s]));
  const sum: FuzzSummary = {
    cases: 0,
    deep: 0,
    deepClasses: {},
    classes: {},
    families: {},
    findings: {},
    blockErrors: {},
    accepted: { qemu: 0, ours: 0, both: 0, qemuOnly: 0, oursOnly: 0, oursFast: 0 },
    writes: {},
    seconds: 0,
    slowest: { ms: 0, id: -1 },
    maxRss: { mb: 0, id: -1 },
  };
  const work = await scratchDir("blkgraph-fuzz-");
  let next = opts.start;
  const end = opts.start + opts.cases;
  const results = opts.out ? await Deno.open(`${opts.out}/results.jsonl`, { create: true, append: true }) : undefined;
  const enc = new TextEncoder();

  const finish = async (v: Verdict, image: Uint8Array) => {
    record(sum, v);
    if (results) {
      const line = {
        id: v.spec.id,
        f: v.spec.family,
        c: v.cls,
        s: v.signature,
        ...(v.deep ? { q: v.qemuAccepted ? 1 : 0, o: v.oursAccepted ? 1 : 0, qw: v.qemuWrites, d: v.detail.slice(0, 3) } : {}),
        ms: Math.round(v.ms),
        cpu: Math.round(v.cpuMs),
        mb: v.rssPeak >> 20,
      };
      await results.write(enc.encode(JSON.stringify(line) + "\n"));
    }
    if (FINDING.has(v.cls) && opts.out) await saveFinding(opts.out, v, image);
    if (opts.progress && (sum.cases % 500 === 0 || FINDING.has(v.cls))) {
      console.error(
        FINDING.has(v.cls) ? `case ${v.spec.id} (${v.spec.family}): ${v.signature}` : `${sum.cases} cases, ${JSON.stringify(sum.classes)}`,
      );
    }
  };
  const fastBatch = async (runner: Runner, ids: number[], root: string) => {
    let pending = ids;
    while (pending.length) {
      await runner.send({ batch: { seed: opts.seed, ids: pending, seeds, root } });
      let current = -1;
      for (;;) {
        const r = await runner.read(opts.budgetMs, opts.budgetMb);
        if (r.line === undefined) {
          // Killed (hang, memory) or died: that case is the finding; go on after it.
          const id = current >= 0 ? current : pending[0];
          const { spec, image } = generateCase(opts.seed, id, seeds, images);
          const v = judge(spec, { killed: r.killed, stderr: r.stderr, ms: r.ms, rssPeak: r.rssPeak, cpuMs: r.cpuMs }, false);
          v.ms = r.ms;
          await finish(v, image);
          pending = pending.slice(pending.indexOf(id) + 1);
          break;
        }
        if (r.line.startsWith("B ")) {
          current = Number(r.line.slice(2));
          continue;
        }
        const msg = JSON.parse(r.line) as { done?: boolean; verdict?: Verdict };
        if (msg.done) {
          pending = [];
          break;
        }
        const v = msg.verdict!;
        v.cpuMs = r.cpuMs;
        v.rssPeak = Math.max(v.rssPeak, r.rssPeak);
        await finish(v, FINDING.has(v.cls) ? caseImage(v.spec, images) : new Uint8Array(0));
      }
    }
  };
  const worker = async (w: number) => {
    const runner = new Runner({ heapMb: Math.min(opts.budgetMb, 2048), nice: opts.nice });
    const root = `${work}/w${w}`;
    try {
      while (next < end) {
        const ids: number[] = [];
        while (ids.length < 50 && next < end) ids.push(next++);
        const deep = opts.qemu ? ids.filter((id) => id % opts.deepEvery === 0) : [];
        for (const id of deep) {
          const { spec, image } = generateCase(opts.seed, id, seeds, images);
          await finish(await runOneCase(spec, image, bySeed.get(spec.family)!, runner, { root }, opts), image);
        }
        await fastBatch(runner, ids.filter((id) => !deep.includes(id)), `${root}/fast`);
      }
    } finally {
      await runner.stop();
    }
  };
  try {
    await Promise.all(Array.from({ length: opts.workers }, (_, w) => worker(w)));
  } finally {
    results?.close();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
  sum.seconds = (performance.now() - t0) / 1000;
  return sum;
}

function record(sum: FuzzSummary, v: Verdict): void {
  sum.cases++;
  sum.classes[v.cls] = (sum.classes[v.cls] ?? 0) + 1;
  if (v.deep) {
    sum.deep++;
    sum.deepClasses[v.cls] = (sum.deepClasses[v.cls] ?? 0) + 1;
  }
  const f = (sum.families[v.spec.family] ??= {});
  f[v.cls] = (f[v.cls] ?? 0) + 1;
  if (FINDING.has(v.cls)) {
    const e = (sum.findings[v.signature] ??= { count: 0, first: v.spec.id });
    e.count++;
  }
  for (const m of new Set(v.errors)) sum.blockErrors[m] = (sum.blockErrors[m] ?? 0) + 1;
  if (v.deep) {
    if (v.qemuAccepted) sum.accepted.qemu++;
    if (v.oursAccepted) sum.accepted.ours++;
    if (v.qemuAccepted && v.oursAccepted) sum.accepted.both++;
    if (v.qemuAccepted && !v.oursAccepted) sum.accepted.qemuOnly++;
    if (!v.qemuAccepted && v.oursAccepted) sum.accepted.oursOnly++;
  } else if (v.oursAccepted) sum.accepted.oursFast++;
  if (v.qemuWrites !== "skipped") {
    const key = `qemu ${v.qemuWrites}, blkgraph ${v.errors.some((e) => /write|Cannot change/i.test(e)) ? "refused" : "wrote"}`;
    sum.writes[key] = (sum.writes[key] ?? 0) + 1;
  }
  if (v.cpuMs > sum.slowest.ms) sum.slowest = { ms: Math.round(v.cpuMs), id: v.spec.id };
  if (v.rssPeak >> 20 > sum.maxRss.mb) sum.maxRss = { mb: v.rssPeak >> 20, id: v.spec.id };
}

/** Re-runs one saved case; returns its verdict. */
export async function replay(path: string, opts: FuzzOptions): Promise<Verdict> {
  const spec = JSON.parse(await Deno.readTextFile(path)) as CaseSpec;
  const { seeds, images } = await loadSeeds({ ...opts, families: [spec.family] });
  const work = await scratchDir("blkgraph-fuzz-replay-");
  const runner = new Runner({ heapMb: Math.min(opts.budgetMb, 2048), nice: opts.nice });
  try {
    return await runOneCase(spec, caseImage(spec, images), seeds[0], runner, { root: work }, opts);
  } finally {
    await runner.stop();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

/** Drops mutations (and writes) one at a time while the case keeps its signature; writes the result next to `path`. */
export async function minimise(path: string, opts: FuzzOptions): Promise<CaseSpec> {
  let spec = JSON.parse(await Deno.readTextFile(path)) as CaseSpec & { signature?: string };
  const { seeds, images } = await loadSeeds({ ...opts, families: [spec.family] });
  const work = await scratchDir("blkgraph-fuzz-min-");
  const runner = new Runner({ heapMb: Math.min(opts.budgetMb, 2048), nice: opts.nice });
  const run = (s: CaseSpec) => runOneCase(s, caseImage(s, images), seeds[0], runner, { root: work }, opts);
  try {
    const want = spec.signature ?? (await run(spec)).signature;
    for (const key of ["mutations", "writes"] as const) {
      for (let i = spec[key].length - 1; i >= 0; i--) {
        if (key === "writes" && spec.writes.length === 1) break;
        const trial = { ...spec, [key]: spec[key].filter((_, j) => j !== i) };
        if ((await run(trial)).signature === want) spec = trial;
      }
    }
    for (const flag of ["check", "repair"] as const) {
      if (!spec[flag]) continue;
      const trial = { ...spec, [flag]: false };
      if ((await run(trial)).signature === want) spec = trial;
    }
    await Deno.writeTextFile(path.replace(/\.json$/, ".min.json"), JSON.stringify({ ...spec, signature: want }, null, 1));
    return spec;
  } finally {
    await runner.stop();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

/** Prints a summary as a few tables. */
export function printSummary(s: FuzzSummary): string {
  const lines = [
    `${s.cases} cases in ${s.seconds.toFixed(0)} s, ${s.deep} of them with the QEMU differential`,
    "",
    "| class | cases | with QEMU |",
    "|---|---|---|",
  ];
  for (const [k, v] of Object.entries(s.classes).sort((a, b) => b[1] - a[1])) lines.push(`| ${k} | ${v} | ${s.deepClasses[k] ?? 0} |`);
  lines.push(
    "",
    `accepted: QEMU ${s.accepted.qemu}, blkgraph ${s.accepted.ours}, both ${s.accepted.both}, QEMU only ${s.accepted.qemuOnly}, blkgraph only ${s.accepted.oursOnly}`,
  );
  lines.push(`writes where QEMU accepted the image: ${JSON.stringify(s.writes)}`);
  lines.push(`slowest case ${s.slowest.ms} ms of CPU (case ${s.slowest.id}); highest RSS ${s.maxRss.mb} MiB (case ${s.maxRss.id})`);
  if (Object.keys(s.findings).length) {
    lines.push("", "findings:");
    for (const [k, v] of Object.entries(s.findings)) lines.push(`  ${v.count} × ${k} (first: case ${v.first})`);
  }
  lines.push("", "most frequent BlockError messages:");
  for (const [k, v] of Object.entries(s.blockErrors).sort((a, b) => b[1] - a[1]).slice(0, 25)) lines.push(`  ${v} × ${k}`);
  return lines.join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      cases: { type: "string", default: "1000" },
      seed: { type: "string", default: "1" },
      start: { type: "string", default: "0" },
      workers: { type: "string", default: "1" },
      out: { type: "string" },
      "no-qemu": { type: "boolean", default: false },
      "budget-ms": { type: "string", default: "10000" },
      "budget-mb": { type: "string", default: "1024" },
      families: { type: "string" },
      nice: { type: "string", default: "10" },
      quiet: { type: "boolean", default: false },
      "seed-dir": { type: "string", default: seedCacheDir() },
      replay: { type: "string" },
      minimise: { type: "string" },
      json: { type: "boolean", default: false },
      "deep-every": { type: "string", default: "5" },
    },
  });
  const qemu = !values["no-qemu"] && hasTool("qemu-img") && hasTool("qemu-io");
  const opts: FuzzOptions = {
    cases: Number(values.cases),
    seed: Number(values.seed),
    start: Number(values.start),
    workers: Number(values.workers),
    out: values.out,
    qemu,
    budgetMs: Number(values["budget-ms"]),
    budgetMb: Number(values["budget-mb"]),
    families: values.families?.split(","),
    nice: Number(values.nice),
    progress: !values.quiet,
    deepEvery: Math.max(1, Number(values["deep-every"])),
    seedDir: values["seed-dir"]!,
  };
  if (values.replay || values.minimise) {
    const v = values.replay ? await replay(values.replay, opts) : undefined;
    if (v) console.log(JSON.stringify({ cls: v.cls, signature: v.signature, detail: v.detail }, null, 1));
    if (values.minimise) console.log(JSON.stringify(await minimise(values.minimise, opts), null, 1));
    Deno.exit(v && FINDING.has(v.cls) ? 1 : 0);
  }
  if (opts.out) await Deno.mkdir(opts.out, { recursive: true });
  const s = await fuzz(opts);
  console.log(values.json ? JSON.stringify(s, null, 1) : printSummary(s));
  if (opts.out) await Deno.writeTextFile(`${opts.out}/summary-${opts.seed}-${opts.start}.json`, JSON.stringify(s, null, 1));
  Deno.exit(Object.keys(s.findings).length ? 1 : 0);
}
