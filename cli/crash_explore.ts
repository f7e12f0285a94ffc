/**
 * `blkgraph crash-explore`: explores the crash states of the built-in qcow2
 * workloads in every metadata mode (or of a recorded dm-log-writes log over
 * its base image), judges each state with the oracles (structure, qemu-img
 * check, recovery, durability), prints a table and each failure's minimal
 * replay, and with `--report` writes the HTML crash report. Exits 1 when a
 * state fails.
 *
 * @module
 */

import { readDmLogWrites } from "../filters/crash/dm_log_writes.ts";
import { type CrashOracle, qemuImgStructure, recoveryOracle } from "../filters/crash/oracles.ts";
import { exploreQcow2, QCOW2_MODES, QCOW2_WORKLOADS, type Qcow2CrashMode, qcow2Structure } from "../filters/crash/qcow2.ts";
import { runCrashExploration, type RunOptions } from "../filters/crash/run.ts";
import { type CrashRun, renderCrashReport } from "./_crash_report.ts";
import {
  CliError,
  type CliIO,
  flagList,
  type Flags,
  flagString,
  intArg,
  needPositionals,
  parseVerbArgs,
  sizeArg,
  type Verb,
} from "./_common.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph crash-explore [--workload=NAME]... [--mode=MODE]... [--wrong-order] [--unsafe-host]
                             [--seed=N] [--samples=N] [--max-states=N] [--max-exhaustive=N] [--torn-cuts=N]
                             [--qemu-every=N] [--max-failures=N] [--report=FILE]
       blkgraph crash-explore --log=FILE.dmlog (--base=IMAGE | --size=SIZE) [-f qcow2] [options] [--report=FILE]

Generates the images a crash could leave behind and judges each with the
oracles: structure (check), qemu-img check (every N-th state with
--qemu-every), recovery (write into every cluster, check again) and, for the
built-in workloads, durability (every byte the guest flushed survives).
Built-in workloads: ${QCOW2_WORKLOADS.map((w) => w.name).join(", ")}; modes: ${QCOW2_MODES.join(", ")}.
--wrong-order uses the deliberately broken write order (a test of the
oracles: it must fail). --log explores a recorded dm-log-writes log (ours or
QEMU's blklogwrites) applied to the image bytes before it. --report writes
the HTML report: states per workload and mode, each oracle's verdict, and
each failing state's replay drawn on the flush-epoch timeline.
Exit status: 0 when no state failed, 1 when one did.
`;

/** Options of the built-in exploration. */
export interface BuiltInOptions {
  /** Workload names (all when empty). */
  workloads?: readonly string[];
  /** Modes (all when empty). */
  modes?: readonly string[];
  /** Deliberately wrong write order. */
  wrongOrder?: boolean;
  /** Drop every flush below qcow2. */
  unsafeHost?: boolean;
  /** Workload and sample seed. */
  seed?: number;
  /** Run qemu-img check on every n-th state (0 = never). */
  qemuEvery?: number;
  /** Exploration bounds. */
  explore?: RunOptions;
  /** Directory for temporary files. */
  dir: string;
}

/** Explores the built-in qcow2 workloads; `onRun` sees each run as it finishes. */
export async function exploreBuiltIn(opts: BuiltInOptions, onRun?: (r: CrashRun) => void): Promise<CrashRun[]> {
  const names = QCOW2_WORKLOADS.map((w) => w.name);
  for (const w of opts.workloads ?? []) {
    if (!names.includes(w)) throw new CliError(`Unknown workload '${w}': expected one of ${names.join(", ")}`);
  }
  for (const m of opts.modes ?? []) {
    if (!(QCOW2_MODES as readonly string[]).includes(m)) {
      throw new CliError(`Unknown mode '${m}': expected one of ${QCOW2_MODES.join(", ")}`);
    }
  }
  const runs: CrashRun[] = [];
  for (const w of QCOW2_WORKLOADS) {
    if (opts.workloads?.length && !opts.workloads.includes(w.name)) continue;
    for (const mode of QCOW2_MODES) {
      if (opts.modes?.length && !opts.modes.includes(mode)) continue;
      const start = performance.now();
      const r = await exploreQcow2(w, mode as Qcow2CrashMode, {
        dir: opts.dir,
        seed: opts.seed,
        wrongOrder: opts.wrongOrder,
        unsafeHost: opts.unsafeHost,
        qemuEvery: opts.qemuEvery,
        explore: { seed: opts.seed, ...opts.explore },
      });
      const run: CrashRun = {
        workload: w.name,
        mode,
        states: r.states,
        checks: r.checks,
        failures: r.failures,
        seconds: (performance.now() - start) / 1000,
        log: r.recorded.hostLog,
      };
      runs.push(run);
      onRun?.(run);
    }
  }
  return runs;
}

/** Explores a recorded dm-log-writes log applied to `base` (qcow2: structure, qemu-img check, recovery). */
export async function exploreLog(
  name: string,
  logBytes: Uint8Array,
  opts: { base: Uint8Array; format: string; qemuEvery?: number; explore?: RunOptions; dir: string },
): Promise<CrashRun> {
  if (opts.format !== "qcow2") throw new CliError(`crash-explore has oracles for qcow2 logs only, not '${opts.format}'`);
  const log = readDmLogWrites(logBytes);
  const base = opts.base;
  const bits = base.length >= 24 ? new DataView(base.buffer, base.byteOffset, base.byteLength).getUint32(20) : 16;
  const oracles: CrashOracle[] = [{ name: "structure", check: (b) => qcow2Structure(b) }];
  if (opts.qemuEvery) oracles.push({ name: "qemu-img-check", every: opts.qemuEvery, check: (b) => qemuImgStructure(b, opts.dir) });
  oracles.push(recoveryOracle({ driver: "qcow2" }, qcow2Structure, bits >= 9 && bits <= 21 ? 2 ** bits : 65536));
  const start = performance.now();
  const r = await runCrashExploration(base, log, oracles, opts.explore);
  return {
    workload: name,
    mode: "recorded",
    states: r.states,
    checks: r.checks,
    failures: r.failures,
    seconds: (performance.now() - start) / 1000,
    log,
  };
}

/** The markdown table of runs, and each failure's minimal replay. */
export function crashTable(runs: readonly CrashRun[]): string {
  const lines = ["| workload | mode | states | checks | failures | seconds |", "|---|---|---:|---|---:|---:|"];
  const details: string[] = [];
  for (const r of runs) {
    const checks = Object.entries(r.checks).map(([k, v]) => `${k} ${v}`).join(", ");
    lines.push(`| ${r.workload} | ${r.mode} | ${r.states} | ${checks} | ${r.failures.length} | ${r.seconds.toFixed(1)} |`);
    for (const f of r.failures) {
      const chosen = (f.replay ?? []).filter((op) => !op.durable);
      const durable = (f.replay?.length ?? 0) - chosen.length;
      details.push(
        `- ${r.workload} / ${r.mode} (state ${f.index}, ${f.kind}): ${f.oracle}: ${f.message}\n` +
          `  minimal replay: the ${durable} durable ops of crash point ${(f.minimal ?? f.recipe).crashPoint} plus ${
            JSON.stringify(chosen)
          }`,
      );
    }
  }
  return lines.join("\n") + "\n" + (details.length ? `\n${details.join("\n")}\n` : "");
}

const num = (values: Flags, name: string, dflt: number): number => {
  const v = flagString(values, name);
  if (v === undefined) return dflt;
  const n = intArg(v, `--${name}`);
  if (n < 0) throw new CliError(`Invalid --${name} '${v}': it must not be negative`);
  return n;
};

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      workload: { type: "string", multiple: true },
      mode: { type: "string", multiple: true },
      "wrong-order": { type: "boolean" },
      "unsafe-host": { type: "boolean" },
      seed: { type: "string" },
      samples: { type: "string" },
      "max-states": { type: "string" },
      "max-exhaustive": { type: "string" },
      "torn-cuts": { type: "string" },
      "qemu-every": { type: "string" },
      "max-failures": { type: "string" },
      report: { type: "string" },
      log: { type: "string" },
      base: { type: "string" },
      size: { type: "string" },
      format: { type: "string", short: "f" },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 0, 0, "no positional arguments");
  const v = p.values;
  const seed = num(v, "seed", 1);
  const explore: RunOptions = {
    seed,
    samples: num(v, "samples", 16),
    maxStates: num(v, "max-states", 300),
    maxExhaustive: num(v, "max-exhaustive", 10),
    maxTornCuts: num(v, "torn-cuts", 3),
    maxFailures: Math.max(1, num(v, "max-failures", 1)),
  };
  const qemuEvery = num(v, "qemu-every", 0);
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-crash-" });
  let runs: CrashRun[];
  let settings =
    `seed ${seed}, samples ${explore.samples}, max states ${explore.maxStates}, max exhaustive ${explore.maxExhaustive}, torn cuts ${explore.maxTornCuts}`;
  try {
    const logPath = flagString(v, "log");
    if (logPath !== undefined) {
      const read = async (path: string, what: string) => {
        try {
          return await Deno.readFile(path);
        } catch (e) {
          throw new CliError(`Cannot read ${what} '${path}': ${(e as Error).message}`);
        }
      };
      const basePath = flagString(v, "base");
      const sizeText = flagString(v, "size");
      if (basePath === undefined && sizeText === undefined) {
        throw new CliError("--log needs the image before the log: give --base=IMAGE or --size=SIZE");
      }
      const base = basePath !== undefined ? await read(basePath, "base image") : new Uint8Array(sizeArg(sizeText!, "--size"));
      runs = [
        await exploreLog(logPath, await read(logPath, "log"), {
          base,
          format: flagString(v, "format") ?? "qcow2",
          qemuEvery,
          explore,
          dir,
        }),
      ];
      settings += `; log ${logPath} over ${basePath ?? `${base.length} zero bytes`}`;
    } else {
      const wrongOrder = v["wrong-order"] === true;
      if (wrongOrder) settings += "; x-wrong-order=l2-before-refblock";
      runs = await exploreBuiltIn({
        workloads: flagList(v, "workload").flatMap((w) => w.split(",")),
        modes: flagList(v, "mode").flatMap((m) => m.split(",")),
        wrongOrder,
        unsafeHost: v["unsafe-host"] === true,
        seed,
        qemuEvery,
        explore,
        dir,
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  io.stdout(crashTable(runs));
  const report = flagString(v, "report");
  if (report !== undefined) {
    try {
      await Deno.writeTextFile(report, renderCrashReport(runs, { settings }));
    } catch (e) {
      throw new CliError(`Cannot write report '${report}': ${(e as Error).message}`);
    }
  }
  return runs.some((r) => r.failures.length) ? 1 : 0;
}

/** The `crash-explore` verb. */
export const crashExploreVerb: Verb = {
  name: "crash-explore",
  summary: VERB_SUMMARIES["crash-explore"],
  run,
};
