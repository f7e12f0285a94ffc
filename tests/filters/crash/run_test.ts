import assert from "node:assert/strict";
import { type BlockNode, type CrashOracle, open, runCrashExploration } from "../../../mod.ts";
import { getRecorder } from "../../../filters/recorder.ts";
import { minimise, replayRecipe } from "../../../filters/crash/mod.ts";

// A toy "format" with two-phase commit: data goes to a slot, then the header
// (sector 0) is pointed at the slot with the data's checksum. It is correct
// only if the data is flushed before the header is written.

const SLOT = 512;

function checksum(d: Uint8Array): number {
  let s = 0;
  for (const b of d) s = (Math.imul(s, 31) + b) >>> 0;
  return s;
}

async function commit(node: BlockNode, slot: number, byte: number, flushBetween: boolean): Promise<void> {
  const data = new Uint8Array(SLOT).fill(byte);
  await node.pwrite(SLOT * (1 + slot), data);
  if (flushBetween) await node.flush();
  const header = new Uint8Array(SLOT);
  header[0] = slot;
  new DataView(header.buffer).setUint32(1, checksum(data));
  await node.pwrite(0, header);
  await node.flush();
}

const toyCheck: CrashOracle = {
  name: "toy-structure",
  check(bytes) {
    const slot = bytes[0];
    const want = new DataView(bytes.buffer, bytes.byteOffset).getUint32(1);
    const got = checksum(bytes.subarray(SLOT * (1 + slot), SLOT * (2 + slot)));
    return got === want ? undefined : `header points at slot ${slot} with checksum ${want}, but the slot's checksum is ${got}`;
  },
};

async function toyRun(flushBetween: boolean) {
  await using node = await open({ driver: "recorder", file: { driver: "memory", size: 3 * SLOT } });
  const base = new Uint8Array(3 * SLOT);
  await commit(node, 1, 0x11, flushBetween);
  await commit(node, 0, 0x22, flushBetween);
  await commit(node, 1, 0x33, flushBetween);
  const log = [...getRecorder(node).log];
  return { base, log, result: await runCrashExploration(base, log, [toyCheck]) };
}

Deno.test("runCrashExploration() finds no failing state in a correctly ordered two-phase commit", async () => {
  const { result } = await toyRun(true);
  assert.ok(result.states >= 6, `only ${result.states} states`);
  assert.equal(result.checks["toy-structure"], result.states);
  assert.deepEqual(result.failures, []);
});

Deno.test("runCrashExploration() catches a two-phase commit missing its flush", async () => {
  const { result } = await toyRun(false);
  assert.ok(result.failures.length > 0);
  assert.equal(result.failures[0].oracle, "toy-structure");
  assert.match(result.failures[0].message, /header points at slot/);
});

Deno.test("minimise() shrinks the failure to the header write without its data", async () => {
  const { result, log } = await toyRun(false);
  const f = result.failures[0];
  const replay = f.replay!;
  const header = replay.filter((r) => !r.durable);
  assert.equal(header.length, 1, JSON.stringify(replay));
  assert.equal(header[0].offset, 0);
  assert.equal(log[header[0].index].op, "write");
  assert.ok(f.minimal!.applied.length <= f.recipe.applied.length);
});

Deno.test("minimise() result replays to a state the oracle still rejects", async () => {
  const { base, log, result } = await toyRun(false);
  const f = result.failures[0];
  const again = await minimise(base, log, f.minimal!, toyCheck);
  assert.deepEqual(again, f.minimal);
  assert.notEqual(toyCheck.check(replayRecipe(base, log, f.minimal!), f.minimal!), undefined);
});

Deno.test("runCrashExploration() runs a sampled oracle only on every n-th state", async () => {
  const { base, log } = await toyRun(true);
  const slow: CrashOracle = { name: "slow", every: 3, check: () => undefined };
  const r = await runCrashExploration(base, log, [slow]);
  assert.equal(r.checks.slow, Math.ceil(r.states / 3));
});
