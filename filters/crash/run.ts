/**
 * Runs an exploration: generates crash states, asks every oracle about each,
 * collects failures and shrinks each to a minimal replayable list of
 * operations.
 *
 * @example
 * ```ts
 * import { runCrashExploration } from "@blkgraph/blkgraph";
 * import type { RecordedOp } from "@blkgraph/blkgraph/filters/recorder";
 * const log: RecordedOp[] = [
 *   { op: "write", offset: 0, length: 512, fua: false, data: new Uint8Array(512).fill(9), submit: 1, complete: 2, time: 0 },
 * ];
 * const never9 = { name: "never-9", check: (b: Uint8Array) => (b[0] === 9 ? "byte 0 is 9" : undefined) };
 * const r = await runCrashExploration(new Uint8Array(512), log, [never9]);
 * console.log(r.states, r.failures.length); // 2 1
 * ```
 *
 * @module
 */

import type { RecordedOp } from "../recorder.ts";
import { classify, type CrashRecipe, exploreCrashStates, type ExploreOptions, replayRecipe } from "./explorer.ts";
import type { CrashOracle } from "./oracles.ts";

/** One operation of a replayable list (JSON-friendly). */
export interface ReplayOp {
  /** Index in the log. */
  index: number;
  /** Operation kind. */
  op: RecordedOp["op"];
  /** Byte offset (new length for truncate). */
  offset: number;
  /** Byte length. */
  length: number;
  /** Durable at the crash point (always applied) rather than chosen from the crash epoch. */
  durable: boolean;
  /** Only this many bytes of the write survived. */
  tornAt?: number;
}

/** A state an oracle rejected. */
export interface CrashFailure {
  /** Oracle name. */
  oracle: string;
  /** What the oracle said. */
  message: string;
  /** Index of the state in the exploration. */
  index: number;
  /** How the state was chosen. */
  kind: string;
  /** The state as generated. */
  recipe: CrashRecipe;
  /** The state after {@linkcode minimise} (when minimisation ran). */
  minimal?: CrashRecipe;
  /** The minimal state as a replayable op list (apply in order to the base image). */
  replay?: ReplayOp[];
}

/** Options for {@linkcode runCrashExploration}. */
export interface RunOptions extends ExploreOptions {
  /** Stop collecting after this many failures (default 5). */
  maxFailures?: number;
  /** Minimise failures (default true). */
  minimise?: boolean;
}

/** Result of an exploration. */
export interface RunResult {
  /** States generated (after dedup). */
  states: number;
  /** Checks run per oracle. */
  checks: Record<string, number>;
  /** Rejected states. */
  failures: CrashFailure[];
}

/**
 * Explores `log` on `base` and runs every oracle on each state.
 *
 * @example
 * ```ts
 * import { open, runCrashExploration } from "@blkgraph/blkgraph";
 * import { getRecorder } from "@blkgraph/blkgraph/filters/recorder";
 * await using disk = await open({ driver: "recorder", file: { driver: "memory", size: 4096 } });
 * await disk.pwrite(0, new Uint8Array(512).fill(1));
 * await disk.flush();
 * const r = await runCrashExploration(new Uint8Array(4096), getRecorder(disk).log, []);
 * console.log(r.states, r.failures.length); // 2 0
 * ```
 */
export async function runCrashExploration(
  base: Uint8Array,
  log: readonly RecordedOp[],
  oracles: readonly CrashOracle[],
  opts: RunOptions = {},
): Promise<RunResult> {
  const maxFailures = opts.maxFailures ?? 5;
  const checks: Record<string, number> = Object.fromEntries(oracles.map((o) => [o.name, 0]));
  const failures: CrashFailure[] = [];
  let states = 0;
  for (const s of exploreCrashStates(base, log, opts)) {
    states++;
    const recipe: CrashRecipe = { crashPoint: s.crashPoint, applied: s.applied, torn: s.torn, extendTo: s.extendTo };
    for (const oracle of oracles) {
      if (s.index % (oracle.every ?? 1) !== 0) continue;
      checks[oracle.name]++;
      // The view is only valid until the generator advances; oracles finish before that.
      const message = await oracle.check(s.bytes, recipe);
      if (message === undefined) continue;
      failures.push({ oracle: oracle.name, message, index: s.index, kind: s.kind, recipe });
      break;
    }
    if (failures.length >= maxFailures) break;
  }
  if (opts.minimise ?? true) {
    for (const f of failures) {
      const oracle = oracles.find((o) => o.name === f.oracle)!;
      f.minimal = await minimise(base, log, f.recipe, oracle);
      f.replay = replayList(log, f.minimal);
    }
  }
  return { states, checks, failures };
}

/**
 * Shrinks a failing state: drops crash-epoch ops (and the torn part) one at
 * a time while `oracle` still rejects the replayed image. Durable ops stay:
 * without them the state would not be one the persistence model allows.
 */
export async function minimise(
  base: Uint8Array,
  log: readonly RecordedOp[],
  recipe: CrashRecipe,
  oracle: CrashOracle,
): Promise<CrashRecipe> {
  const fails = async (r: CrashRecipe) => (await oracle.check(replayRecipe(base, log, r), r)) !== undefined;
  let cur: CrashRecipe = { ...recipe, applied: [...recipe.applied] };
  if (cur.torn) {
    const noTorn = { ...cur, torn: undefined };
    if (await fails(noTorn)) cur = noTorn;
  }
  if (cur.extendTo !== undefined) {
    const noExtend = { ...cur, extendTo: undefined };
    if (await fails(noExtend)) cur = noExtend;
  }
  for (let changed = true; changed;) {
    changed = false;
    for (let j = cur.applied.length - 1; j >= 0; j--) {
      const next = { ...cur, applied: cur.applied.filter((_, k) => k !== j) };
      if (await fails(next)) {
        cur = next;
        changed = true;
      }
    }
  }
  return cur;
}

/** The full list of ops a recipe applies to the base image, in log order. */
export function replayList(log: readonly RecordedOp[], recipe: CrashRecipe): ReplayOp[] {
  const { durable } = classify(log, recipe.crashPoint);
  const d = new Set(durable);
  const all = new Set<number>([...durable, ...recipe.applied]);
  if (recipe.torn) all.add(recipe.torn.op);
  return [...all].sort((a, b) => a - b).map((i) => {
    const op = log[i];
    const r: ReplayOp = { index: i, op: op.op, offset: op.offset, length: op.length, durable: d.has(i) };
    if (recipe.torn?.op === i) r.tornAt = recipe.torn.bytes;
    return r;
  });
}
