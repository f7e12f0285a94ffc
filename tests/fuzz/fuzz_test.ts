/**
 * The seeded fuzz run CI keeps (issue 9.17): a fixed set of cases from every
 * seed family, each within its time and memory budget, must end clean or
 * with a BlockError — no exception, hang, out-of-memory, wrong read-back,
 * read that differs from qemu-img, or repair qemu-img finds wrong. Every
 * tenth case runs with the QEMU differential when QEMU is installed; without
 * it the seeds blkgraph can make itself are fuzzed blkgraph-only.
 * `deno task fuzz` runs longer campaigns (tests/fuzz/README.md).
 */

import assert from "node:assert/strict";
import { hasTool } from "../_helpers/qemu.ts";
import { fuzz, printSummary } from "./fuzz.ts";
import { seedCacheDir } from "./_seeds.ts";
import { caseSeed } from "./_case.ts";

const CASES = Number(Deno.env.get("BLKGRAPH_FUZZ_CASES") ?? 2000);

Deno.test(`fuzz: ${CASES} seeded cases end clean or with a BlockError, within their budgets`, async () => {
  const qemu = hasTool("qemu-img") && hasTool("qemu-io");
  const s = await fuzz({
    cases: CASES,
    seed: 1,
    start: 0,
    workers: 2,
    qemu,
    budgetMs: 10_000,
    budgetMb: 1024,
    nice: 0,
    progress: false,
    deepEvery: 10,
    seedDir: seedCacheDir(),
  });
  const report = printSummary(s);
  assert.deepEqual(s.findings, {}, report);
  assert.equal(s.cases, CASES);
  // The run reaches deep: many images open and get written, not only header refusals.
  assert.ok((s.classes.clean ?? 0) > CASES / 10, report);
  if (qemu) assert.ok(s.accepted.both > 0, report);
});

Deno.test("caseSeed() gives campaigns with neighbouring seeds different cases", () => {
  for (const [a, b] of [[2025, 2026], [1, 2], [7, 100]]) {
    const first = new Set(Array.from({ length: 20000 }, (_, id) => caseSeed(a, id)));
    assert.equal(first.size, 20000, "one seed's cases are distinct");
    const shared = Array.from({ length: 20000 }, (_, id) => caseSeed(b, id)).filter((h) => first.has(h)).length;
    assert.ok(shared < 10, `seeds ${a} and ${b} share ${shared} of 20000 case seeds`);
  }
});
