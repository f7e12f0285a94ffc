import assert from "node:assert/strict";
import {
  crashPoints,
  type CrashState,
  crashStateAt,
  exploreCrashStates,
  type ExploreOptions,
  replayRecipe,
} from "../../../filters/crash/mod.ts";
import { type RecordedOp } from "../../../filters/recorder.ts";

/** Builds a log by hand: each entry completes before the next is submitted. */
function seqLog(...ops: Partial<RecordedOp>[]): RecordedOp[] {
  let t = 0;
  return ops.map((o) => {
    const op = { op: "write", offset: 0, length: 0, fua: false, time: 0, ...o } as RecordedOp;
    if (op.op === "write" && !op.data) op.data = new Uint8Array(op.length).fill(0xaa);
    op.submit = ++t;
    op.complete = ++t;
    return op;
  });
}

function w(offset: number, length: number, byte: number, fua = false): Partial<RecordedOp> {
  return { op: "write", offset, length, fua, data: new Uint8Array(length).fill(byte) };
}
const flush: Partial<RecordedOp> = { op: "flush" };

function all(base: Uint8Array, log: RecordedOp[], opts: ExploreOptions = {}): (CrashState & { copy: Uint8Array })[] {
  const out: (CrashState & { copy: Uint8Array })[] = [];
  // Copy while iterating: a state's bytes are a view valid until the generator advances.
  for (const s of exploreCrashStates(base, log, opts)) out.push({ ...s, copy: s.bytes.slice() });
  return out;
}

function contents(states: { copy: Uint8Array }[], ...offsets: number[]): string[] {
  return states.map((s) => offsets.map((o) => s.copy[o].toString(16)).join(",")).sort();
}

Deno.test("exploreCrashStates() gives every subset of unflushed writes", () => {
  const states = all(new Uint8Array(1024), seqLog(w(0, 512, 1), w(512, 512, 2)));
  assert.deepEqual(contents(states, 0, 512), ["0,0", "0,2", "1,0", "1,2"]);
});

Deno.test("exploreCrashStates() keeps writes that completed before a completed flush", () => {
  const states = all(new Uint8Array(1024), seqLog(w(0, 512, 1), flush, w(512, 512, 2)));
  // Before the flush completes the first write may be lost; once it has, it never is.
  assert.deepEqual(contents(states, 0, 512), ["0,0", "1,0", "1,2"]);
  for (const s of states.filter((s) => s.crashPoint >= 4)) assert.equal(s.copy[0], 1);
});

Deno.test("exploreCrashStates() treats a FUA write as durable when it completes", () => {
  const states = all(new Uint8Array(1024), seqLog(w(0, 512, 1, true), w(512, 512, 2)));
  assert.deepEqual(contents(states, 0, 512), ["1,0", "1,2"]);
});

Deno.test("exploreCrashStates() never lets a lost older write show through a durable newer one", () => {
  const states = all(new Uint8Array(512), seqLog(w(0, 512, 1), w(0, 512, 2, true)));
  assert.deepEqual(contents(states, 0), ["2"]);
});

Deno.test("exploreCrashStates() tears a multi-sector write at atomic-unit boundaries, prefix kept", () => {
  const states = all(new Uint8Array(2048), seqLog(w(0, 2048, 7)), { maxTornCuts: 3 });
  const torn = states.filter((s) => s.kind === "torn").map((s) => s.torn!.bytes).sort((a, b) => a - b);
  assert.deepEqual(torn, [512, 1024, 1536]);
  const s = states.find((s) => s.torn?.bytes === 1024)!;
  assert.deepEqual([s.copy[1023], s.copy[1024]], [7, 0]);
});

Deno.test("exploreCrashStates() explores a write-zeroes, a discard and a truncate with and without them", () => {
  const base = new Uint8Array(2048).fill(9);
  const states = all(
    base,
    seqLog({ op: "write-zeroes", offset: 0, length: 512 }, { op: "discard", offset: 512, length: 512 }, { op: "truncate", offset: 1024 }),
  );
  assert.equal(states.length, 8);
  assert.deepEqual([...new Set(states.map((s) => s.copy.length))].sort(), [1024, 2048]);
});

Deno.test("exploreCrashStates() samples a large epoch: none, all, singles, all-but-one and random subsets", () => {
  const log = seqLog(...Array.from({ length: 12 }, (_, i) => w(i * 512, 512, i + 1)));
  const states = all(new Uint8Array(12 * 512), log, { maxExhaustive: 10, samples: 5, maxTornCuts: 0 });
  const kinds = new Map<string, number>();
  for (const s of states) kinds.set(s.kind, (kinds.get(s.kind) ?? 0) + 1);
  assert.equal(kinds.get("none"), 1);
  assert.equal(kinds.get("all"), 1);
  assert.equal(kinds.get("single"), 12);
  assert.equal(kinds.get("all-but-one"), 12);
  assert.ok((kinds.get("random") ?? 0) >= 1);
});

Deno.test("exploreCrashStates() is reproducible from the seed and changes with it", () => {
  const log = seqLog(...Array.from({ length: 14 }, (_, i) => w(i * 512, 512, i + 1)));
  const base = new Uint8Array(14 * 512);
  const a = all(base, log, { seed: 3 }).map((s) => s.hash);
  const b = all(base, log, { seed: 3 }).map((s) => s.hash);
  const c = all(base, log, { seed: 4 }).map((s) => s.hash);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});

Deno.test("exploreCrashStates() reports each distinct image once", () => {
  const states = all(new Uint8Array(512), seqLog(w(0, 512, 1), w(0, 512, 1)));
  assert.equal(states.length, 2);
});

Deno.test("replayRecipe() and crashStateAt() rebuild the same bytes as the exploration", () => {
  const base = new Uint8Array(4096).fill(3);
  const log = seqLog(w(0, 1024, 1), flush, w(512, 1024, 2), w(3072, 1024, 4), { op: "truncate", offset: 3584 });
  for (const s of exploreCrashStates(base, log)) {
    assert.deepEqual(replayRecipe(base, log, s), s.bytes, `state ${s.index} (${s.kind})`);
    if (s.index % 5 === 0) assert.deepEqual(crashStateAt(base, log, s.index)!.bytes, s.bytes.slice());
  }
});

Deno.test("exploreCrashStates() treats a write still in flight at the crash as lost or kept", () => {
  const log = seqLog(w(0, 512, 1), flush);
  // Submitted before the flush but never completed: not made durable by it.
  log.unshift({ op: "write", offset: 512, length: 512, fua: false, data: new Uint8Array(512).fill(5), submit: 0, time: 0 });
  const states = all(new Uint8Array(1024), log, { pointKey: String });
  const after = states.filter((s) => s.crashPoint >= 4);
  assert.deepEqual(contents(after, 0, 512), ["1,0", "1,5"]);
});

Deno.test("exploreCrashStates() lets a file grow by a lost write without its data", () => {
  const states = all(new Uint8Array(0), seqLog(w(0, 512, 1)));
  assert.deepEqual(states.map((s) => [s.kind, s.copy.length, s.copy[0] ?? -1]).sort(), [["all", 512, 1], ["extend", 512, 0], [
    "none",
    0,
    -1,
  ]]);
  const ext = states.find((s) => s.kind === "extend")!;
  assert.deepEqual(replayRecipe(new Uint8Array(0), seqLog(w(0, 512, 1)), ext), new Uint8Array(512));
});

Deno.test("crashPoints() gives flush submissions and completions, every k-th request and the end", () => {
  const log = seqLog(w(0, 512, 1), flush, w(512, 512, 2), w(1024, 512, 3));
  assert.deepEqual(crashPoints(log), [3, 4, 8]);
  assert.deepEqual(crashPoints(log, 2), [3, 4, 8]);
  assert.deepEqual(crashPoints(log, 1), [2, 3, 4, 6, 8]);
});
