/**
 * Crash-state explorer: from a recorded log and the image bytes before it,
 * generates the images a crash could leave behind, under the dm-log-writes
 * persistence model (see {@link ../recorder.ts}).
 *
 * Crash points are the submission and the completion of every flush, the
 * end of the log and, optionally, every k-th request. At a crash point the
 * durable ops are always applied; the other submitted ops (the crash epoch)
 * are explored: every subset when there are at most `maxExhaustive` of
 * them, otherwise none, all, each alone, all-but-each and a seeded random
 * sample; plus torn variants of each multi-unit write (a prefix cut at an
 * atomic-unit boundary, alone and after all earlier epoch ops). A truncate is
 * an item like a write, so states come with and without each length change.
 * States are deduplicated by a hash of the resulting bytes and are a pure
 * function of (base, log, options): the same index gives the same state.
 *
 * @example
 * ```ts
 * import { exploreCrashStates } from "@blkgraph/blkgraph/filters/crash";
 * import type { RecordedOp } from "@blkgraph/blkgraph/filters/recorder";
 * const log: RecordedOp[] = [
 *   { op: "write", offset: 0, length: 512, fua: false, data: new Uint8Array(512).fill(1), submit: 1, complete: 2, time: 0 },
 *   { op: "write", offset: 512, length: 512, fua: false, data: new Uint8Array(512).fill(2), submit: 3, complete: 4, time: 0 },
 * ];
 * let n = 0;
 * for (const _state of exploreCrashStates(new Uint8Array(1024), log)) n++;
 * console.log(n); // 4: neither, each alone, both
 * ```
 *
 * @module
 */

import type { RecordedOp } from "../recorder.ts";
import { isItem, overlaps, rng, WorkImage } from "./_image.ts";

/** Options for {@linkcode exploreCrashStates}. */
export interface ExploreOptions {
  /** Explore every subset of the crash epoch up to this many ops (default 10). */
  maxExhaustive?: number;
  /** Random subsets per crash point when the epoch is larger (default 16). */
  samples?: number;
  /** Seed of the random sample (default 1). */
  seed?: number;
  /** Writes tear at multiples of this many bytes (default 512). */
  atomicUnit?: number;
  /** Torn cut points per write (default 3; 0 = no torn variants). */
  maxTornCuts?: number;
  /** Also crash after every k-th request (default 0 = only at flushes and the end). */
  everyK?: number;
  /** Stop after this many states (default unlimited). */
  maxStates?: number;
  /**
   * Extra dedup key for a crash point: states with equal bytes and equal key
   * are reported once. Default: one key for all (pure byte dedup). Give the
   * guest epoch here when an oracle's verdict depends on the crash point.
   */
  pointKey?: (crashPoint: number) => string;
  /** More crash points (clock values), e.g. the guest's flush completions. */
  extraPoints?: readonly number[];
}

/** What a crash state is made of; replay it with {@linkcode replayRecipe}. */
export interface CrashRecipe {
  /** Logical clock of the crash: ops submitted at or before it had started. */
  crashPoint: number;
  /** Log indices of crash-epoch (non-durable) ops that survived, in log order. */
  applied: number[];
  /** One crash-epoch write that survived only in part. */
  torn?: { op: number; bytes: number };
  /** The file length grew to this many bytes (zeros) though the writes that grew it were lost. */
  extendTo?: number;
}

/** One generated crash state. */
export interface CrashState extends CrashRecipe {
  /** Position in the exploration (reproducible from log, options and index). */
  index: number;
  /** How the state was chosen: `subset`, `none`, `all`, `single`, `all-but-one`, `random`, `torn`, `torn-alone`, `extend`. */
  kind: string;
  /** The image (a view, valid until the generator advances: copy it to keep it). */
  bytes: Uint8Array;
  /** Hash of `bytes`. */
  hash: string;
}

/** The last flush submission that is durable at `t` (a flush that completed by then). */
function lastFlushSubmit(log: readonly RecordedOp[], t: number): number {
  let best = -Infinity;
  for (const op of log) {
    if (op.op === "flush" && op.complete !== undefined && op.complete <= t && op.submit > best) best = op.submit;
  }
  return best;
}

/** Whether `op` is durable at crash point `t` under the persistence model. */
export function isDurable(op: RecordedOp, t: number, flushSubmit: number = Infinity): boolean {
  if (op.complete === undefined || op.complete > t) return false;
  if (op.fua) return true;
  return op.complete < flushSubmit;
}

/** Splits the content-changing ops submitted by `t` into durable and crash-epoch (pending) log indices. */
export function classify(log: readonly RecordedOp[], t: number): { durable: number[]; pending: number[] } {
  const fs = lastFlushSubmit(log, t);
  const durable: number[] = [];
  const pending: number[] = [];
  for (let i = 0; i < log.length; i++) {
    const op = log[i];
    if (!isItem(op) || op.submit > t) continue;
    if (isDurable(op, t, fs)) durable.push(i);
    else pending.push(i);
  }
  return { durable, pending };
}

/** Crash points of a log, ascending: flush submissions and completions, every k-th op, the end. */
export function crashPoints(log: readonly RecordedOp[], everyK = 0, extra: readonly number[] = []): number[] {
  const pts = new Set<number>(extra);
  let end = 0;
  log.forEach((op, i) => {
    end = Math.max(end, op.complete ?? op.submit);
    if (op.op === "flush") {
      pts.add(op.submit);
      if (op.complete !== undefined) pts.add(op.complete);
    }
    if (everyK > 0 && (i + 1) % everyK === 0) pts.add(op.complete ?? op.submit);
  });
  pts.add(end);
  return [...pts].sort((a, b) => a - b);
}

const BUCKET = 65536;

/** Durable ops by 64 KiB region, to find the later durable ops a chosen op overlaps without a scan. */
class DurableIndex {
  #buckets = new Map<number, number[]>();
  #global: number[] = [];
  #log: readonly RecordedOp[];

  constructor(log: readonly RecordedOp[], durable: readonly number[]) {
    this.#log = log;
    for (const d of durable) {
      const op = log[d];
      if (op.op === "truncate") {
        this.#global.push(d);
        continue;
      }
      for (let b = Math.floor(op.offset / BUCKET); b * BUCKET < op.offset + op.length; b++) {
        let list = this.#buckets.get(b);
        if (!list) this.#buckets.set(b, list = []);
        list.push(d);
      }
    }
  }

  /** Durable ops after `idx` in log order that overlap `op`, ascending. */
  later(idx: number, op: RecordedOp): number[] {
    const out = new Set<number>();
    const take = (list: readonly number[] | undefined) => {
      if (!list) return;
      for (const d of list) if (d > idx && overlaps(op, this.#log[d])) out.add(d);
    };
    take(this.#global);
    if (op.op === "truncate") {
      for (const list of this.#buckets.values()) take(list);
    } else {
      for (let b = Math.floor(op.offset / BUCKET); b * BUCKET < op.offset + op.length; b++) take(this.#buckets.get(b));
    }
    return [...out].sort((a, b) => a - b);
  }
}

/**
 * Applies `idx` (log order) on `img`, re-applying each later durable op that
 * overlaps it so the result equals applying durable ∪ chosen ops in log order.
 */
function applyUnder(img: WorkImage, log: readonly RecordedOp[], index: DurableIndex, idx: number, limit = Infinity): void {
  const op = log[idx];
  img.apply(op, limit);
  for (const d of index.later(idx, op)) img.apply(log[d]);
}

/** Rebuilds the image of a recipe from scratch (for replay and minimisation). */
export function replayRecipe(base: Uint8Array, log: readonly RecordedOp[], recipe: CrashRecipe): Uint8Array {
  const { durable } = classify(log, recipe.crashPoint);
  const chosen = new Set<number>([...durable, ...recipe.applied]);
  if (recipe.torn) chosen.add(recipe.torn.op);
  const img = new WorkImage(base);
  for (const i of [...chosen].sort((a, b) => a - b)) {
    img.apply(log[i], recipe.torn?.op === i ? recipe.torn.bytes : Infinity);
  }
  if (recipe.extendTo !== undefined && recipe.extendTo > img.length) img.apply(extendOp(recipe.extendTo));
  return img.bytes.slice();
}

function extendOp(length: number): RecordedOp {
  return { op: "truncate", offset: length, length: 0, fua: false, submit: 0, time: 0 };
}

interface Candidate {
  kind: string;
  applied: number[];
  torn?: { op: number; bytes: number };
  extendTo?: number;
}

function* candidates(
  log: readonly RecordedOp[],
  pending: number[],
  opts: Required<Omit<ExploreOptions, "pointKey" | "extraPoints">>,
  pointIdx: number,
  durableLength: number,
): Generator<Candidate> {
  const n = pending.length;
  // The length change a lost write past the end would have made, without its data.
  let grownTo = durableLength;
  for (const i of pending) {
    const op = log[i];
    if (op.op === "write" || op.op === "write-zeroes") grownTo = Math.max(grownTo, op.offset + op.length);
  }
  if (grownTo > durableLength) yield { kind: "extend", applied: [], extendTo: grownTo };
  if (n <= opts.maxExhaustive) {
    for (let mask = 0; mask < 2 ** n; mask++) {
      yield { kind: mask === 0 ? "none" : mask === 2 ** n - 1 ? "all" : "subset", applied: pending.filter((_, j) => (mask >>> j) & 1) };
    }
  } else {
    yield { kind: "none", applied: [] };
    yield { kind: "all", applied: pending };
    for (let j = 0; j < n; j++) yield { kind: "single", applied: [pending[j]] };
    for (let j = 0; j < n; j++) yield { kind: "all-but-one", applied: pending.filter((_, k) => k !== j) };
    const rand = rng(opts.seed * 1000003 + pointIdx);
    for (let s = 0; s < opts.samples; s++) yield { kind: "random", applied: pending.filter(() => rand() < 0.5) };
  }
  if (opts.maxTornCuts <= 0) return;
  const unit = opts.atomicUnit;
  for (let j = 0; j < n; j++) {
    const op = log[pending[j]];
    if ((op.op !== "write" && op.op !== "write-zeroes") || op.length <= unit) continue;
    const units = Math.ceil(op.length / unit);
    const cuts = new Set<number>();
    const m = Math.min(opts.maxTornCuts, units - 1);
    for (let c = 1; c <= m; c++) cuts.add(Math.max(1, Math.round((c * units) / (m + 1))) * unit);
    for (const bytes of [...cuts].sort((a, b) => a - b)) {
      if (bytes >= op.length) continue;
      yield { kind: "torn", applied: pending.slice(0, j), torn: { op: pending[j], bytes } };
      if (j > 0) yield { kind: "torn-alone", applied: [], torn: { op: pending[j], bytes } };
    }
  }
}

/**
 * Generates the crash states of `log` applied to `base` (see the module
 * documentation). Each yielded state's `bytes` is a view into a working
 * buffer: copy it if it must outlive the next iteration.
 */
export function* exploreCrashStates(base: Uint8Array, log: readonly RecordedOp[], opts: ExploreOptions = {}): Generator<CrashState> {
  const o = {
    maxExhaustive: opts.maxExhaustive ?? 10,
    samples: opts.samples ?? 16,
    seed: opts.seed ?? 1,
    atomicUnit: opts.atomicUnit ?? 512,
    maxTornCuts: opts.maxTornCuts ?? 3,
    everyK: opts.everyK ?? 0,
    maxStates: opts.maxStates ?? Infinity,
  };
  const seen = new Set<string>();
  const img = new WorkImage(base);
  const applied = new Set<number>();
  let count = 0;
  const points = crashPoints(log, o.everyK, opts.extraPoints);
  for (let p = 0; p < points.length; p++) {
    const t = points[p];
    const { durable, pending } = classify(log, t);
    // The durable set only grows with t: bring the base image up to date in
    // place. Re-applying a later durable op early is harmless: it is applied
    // again in its own turn.
    const index = new DurableIndex(log, durable);
    for (const d of durable) {
      if (applied.has(d)) continue;
      applied.add(d);
      applyUnder(img, log, index, d);
    }
    const key = opts.pointKey?.(t) ?? "";
    for (const c of candidates(log, pending, o, p, img.length)) {
      const cp = img.checkpoint();
      for (const i of c.applied) applyUnder(img, log, index, i);
      if (c.torn) applyUnder(img, log, index, c.torn.op, c.torn.bytes);
      if (c.extendTo !== undefined && c.extendTo > img.length) img.apply(extendOp(c.extendTo));
      const hash = img.hash();
      const k = `${hash}|${key}`;
      if (!seen.has(k)) {
        seen.add(k);
        yield {
          index: count++,
          kind: c.kind,
          crashPoint: t,
          applied: c.applied,
          torn: c.torn,
          extendTo: c.extendTo,
          bytes: img.bytes,
          hash,
        };
        if (count >= o.maxStates) {
          img.rollback(cp);
          return;
        }
      }
      img.rollback(cp);
    }
  }
}

/** The state at `index` of an exploration (regenerated: same log, base and options). */
export function crashStateAt(
  base: Uint8Array,
  log: readonly RecordedOp[],
  index: number,
  opts: ExploreOptions = {},
): CrashState | undefined {
  for (const s of exploreCrashStates(base, log, opts)) {
    if (s.index === index) return { ...s, bytes: s.bytes.slice() };
  }
  return undefined;
}
