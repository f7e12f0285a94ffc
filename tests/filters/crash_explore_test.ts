/**
 * The founding question, answered in CI: after a crash at any moment, is a
 * qcow2 image still consistent and is every flushed byte still there? A
 * bounded exploration per workload and metadata mode must find no failing
 * state, and the deliberately wrong write order must be caught.
 */
import assert from "node:assert/strict";
import { exploreQcow2, QCOW2_MODES, QCOW2_WORKLOADS } from "../../filters/crash/qcow2.ts";
import type { RunOptions } from "../../filters/crash/run.ts";
import { hasTool, tempDir } from "../_helpers/qemu.ts";

/** Small enough that all workloads × modes stay well under a minute. */
const BOUNDED: RunOptions = { maxStates: 250, maxExhaustive: 8, samples: 16, maxTornCuts: 2, maxFailures: 1 };

for (const w of QCOW2_WORKLOADS) {
  Deno.test(`exploreQcow2() finds no failing crash state: ${w.name}`, async () => {
    await using dir = await tempDir();
    for (const mode of QCOW2_MODES) {
      const r = await exploreQcow2(w, mode, { dir: dir.path, qemuEvery: hasTool("qemu-img") ? 8 : 0, recoveryEvery: 2, explore: BOUNDED });
      console.log(`${w.name} × ${mode}: ${r.states} states checked (${JSON.stringify(r.checks)})`);
      assert.ok(r.states > 0);
      assert.deepEqual(r.failures.map((f) => `${mode}: ${f.oracle}: ${f.message} ${JSON.stringify(f.replay)}`), []);
    }
  });
}

Deno.test("exploreQcow2() catches x-wrong-order=l2-before-refblock", async () => {
  await using dir = await tempDir();
  const w = QCOW2_WORKLOADS.find((w) => w.name === "sequential")!;
  const r = await exploreQcow2(w, "ordered", { dir: dir.path, wrongOrder: true, explore: { maxStates: 400, maxFailures: 1 } });
  console.log(`wrong order: ${r.states} states, failure: ${r.failures[0]?.oracle}: ${r.failures[0]?.message}`);
  assert.ok(r.failures.length > 0, `no failing state among ${r.states}`);
  assert.ok(r.failures[0].replay!.length > 0);
});

Deno.test("exploreQcow2() catches x-wrong-order=snapshot-l1-after-table with the snapshot oracle", async () => {
  // A snapshot table entry that is durable before the L1 copy it points at: the snapshot reads wrong.
  await using dir = await tempDir();
  const w = QCOW2_WORKLOADS.find((w) => w.name === "snapshot-create")!;
  const r = await exploreQcow2(w, "ordered", {
    dir: dir.path,
    wrongOrder: "snapshot-l1-after-table",
    explore: { maxStates: 400, maxFailures: 1 },
  });
  console.log(`snapshot wrong order: ${r.states} states, failure: ${r.failures[0]?.oracle}: ${r.failures[0]?.message}`);
  assert.equal(r.failures[0]?.oracle, "snapshots");
  assert.ok(r.failures[0].replay!.length > 0);
});

Deno.test("exploreQcow2() catches flushed guest data lost when the host drops flushes", async () => {
  await using dir = await tempDir();
  const w = QCOW2_WORKLOADS.find((w) => w.name === "overwrite")!;
  const r = await exploreQcow2(w, "ordered", {
    dir: dir.path,
    unsafeHost: true,
    explore: { maxStates: 400, maxFailures: 20, minimise: false },
  });
  const durability = r.failures.find((f) => f.oracle === "durability");
  console.log(`unsafe host: ${r.states} states, ${r.failures.length} failures; durability: ${durability?.message}`);
  assert.ok(durability, `no durability failure among ${r.states} states`);
});

// grow-tables explored past the bounded test's 250 states (as `deno run -A bench/crash_explore.ts --workload grow-tables` does).
Deno.test({
  name: "exploreQcow2() finds no failing crash state in grow-tables explored in depth",
  async fn() {
    // Regression: this exploration found a refcount table entry written in
    // the same flush epoch as the refcount block that counts the new block.
    await using dir = await tempDir();
    const w = QCOW2_WORKLOADS.find((w) => w.name === "grow-tables")!;
    for (const mode of ["ordered", "metadata-sync"] as const) {
      const r = await exploreQcow2(w, mode, { dir: dir.path, explore: { maxStates: 700, samples: 64, maxFailures: 1 } });
      assert.deepEqual(r.failures.map((f) => `${mode}: ${f.message} ${JSON.stringify(f.replay?.filter((op) => !op.durable))}`), []);
    }
  },
});
