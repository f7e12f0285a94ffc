/**
 * The operation fuzzer inside `deno task test`: a few fixed seeds, known clean, run by real qemu-img/qemu-io and by blkgraph's drop-ins
 * (`_exec.ts`) must give no finding. `BLKGRAPH_OPFUZZ_CASES=N` (and `BLKGRAPH_OPFUZZ_SEED=S`, default 1) runs N more cases from seed S.
 * Also: only blkgraph's time counts towards a hang, and a case QEMU itself spoils is skipped, not a finding.
 */

import assert from "node:assert/strict";
import { skipUnless } from "../_helpers/qemu.ts";
import { closeShared, runCase } from "./_exec.ts";
import { makeCase, type OpCase } from "./_gen.ts";
import { OursRunner } from "./_ours.ts";
import { reduceCase } from "./_reduce.ts";
import { runInTemp } from "./opfuzz.ts";

/**
 * Seeds known clean on qemu 7.2, between them covering writes, zero writes (-z, -z -u), compressed writes and discards on 512 B to
 * 2 MiB clusters, extended L2, compat 0.10, 1- to 32-bit refcounts, lazy refcounts, zstd, raw and qcow2 backing files, truncate,
 * shrinking resizes, internal snapshots (create, apply, delete), commit and amend.
 */
const SEEDS = [500, 505, 511, 522, 523, 529, 531, 536, 540, 543, 544, 548, 549];

const more = Number(Deno.env.get("BLKGRAPH_OPFUZZ_CASES") ?? 0);
const from = Number(Deno.env.get("BLKGRAPH_OPFUZZ_SEED") ?? 1);
const seeds = [...SEEDS, ...Array.from({ length: more }, (_, i) => from + i)];

Deno.test({
  name: `opfuzz: ${seeds.length} seeded operation sequences give the same results with blkgraph's qemu-img/qemu-io as with QEMU's`,
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn(t) {
    try {
      for (const seed of seeds) {
        await t.step(`seed ${seed}`, async () => {
          const out = await runInTemp(makeCase(seed));
          if (out.skipped) console.warn(`SKIP: opfuzz seed ${seed}: ${out.skipped}`);
          assert.deepEqual(out.classes, [], `seed ${seed} (replay: deno task opfuzz --cases 1 --seed ${seed}):\n${out.notes.join("\n")}`);
        });
      }
    } finally {
      closeShared();
    }
  },
});

/** A directory with an executable `name` running the shell script `body`. */
async function fakeTool(name: string, body: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-opfuzz-fake-" });
  await Deno.writeTextFile(`${dir}/${name}`, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return `${dir}/${name}`;
}

const fakeWorker = (mode: string) => new URL(`./_fake_worker.ts?mode=${mode}`, import.meta.url);

Deno.test("runCase() skips a case, with no hang finding, when a QEMU tool runs past its limit", async () => {
  const slow = await fakeTool("qemu-img", "exec sleep 5");
  const ours = new OursRunner(fakeWorker("ok"));
  const dir = await Deno.makeTempDir();
  try {
    const out = await runCase(makeCase(500), dir, { qemuImg: slow, qemuIo: slow, qemuLimitMs: 200, oursLimitMs: 100, ours });
    assert.deepEqual(out.classes, []);
    assert.match(out.skipped ?? "", /timed out after 200 ms/);
  } finally {
    ours.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(slow.replace(/\/[^/]+$/, ""), { recursive: true });
  }
});

Deno.test("runCase() reports a hang when a drop-in never ends, even in a synchronous loop", async () => {
  const ok = await fakeTool("qemu-img", "exit 0");
  const ours = new OursRunner(fakeWorker("spin"));
  const dir = await Deno.makeTempDir();
  try {
    const out = await runCase(makeCase(500), dir, { qemuImg: ok, qemuIo: ok, oursLimitMs: 1000, ours });
    assert.deepEqual(out.classes, ["hang"]);
    assert.match(out.notes[0], /^hang: step 0 \(qemu-img create\): blkgraph's qemu-img create .*no end within 1000 ms/);
  } finally {
    ours.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(ok.replace(/\/[^/]+$/, ""), { recursive: true });
  }
});

Deno.test("runCase() skips a case once QEMU's own image fails qemu-img check", async () => {
  const corrupt = await fakeTool("qemu-img", `[ "$1" = check ] && echo '{"corruptions": 1}'; exit 0`);
  const ours = new OursRunner(fakeWorker("ok"));
  const dir = await Deno.makeTempDir();
  try {
    const out = await runCase(makeCase(500), dir, { qemuImg: corrupt, qemuIo: corrupt, ours });
    assert.deepEqual(out.classes, []);
    assert.match(out.skipped ?? "", /^QEMU's own image fails qemu-img check after step 0 \(qemu-img create\)/);
  } finally {
    ours.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(corrupt.replace(/\/[^/]+$/, ""), { recursive: true });
  }
});

Deno.test("reduceCase() keeps only the steps, commands and backing writes the failure needs", async () => {
  const c: OpCase = {
    seed: 0,
    image: {
      size: 1 << 20,
      options: ["cluster_size=65536"],
      clusterSize: 65536,
      backing: { format: "raw", size: 1 << 20, writes: ["write -P 1 0 512", "write -P 2 512 512"] },
    },
    steps: [
      { kind: "io", commands: ["write -P 3 0 512", "write -c -P 4 65536 65536", "discard 0 512"] },
      { kind: "img", args: ["snapshot", "-c", "s0", "IMG"] },
      { kind: "io", commands: ["write -z 0 4096"] },
    ],
  };
  // The "failure": a compressed write after the backing file's second write.
  const fails = (x: OpCase) =>
    Promise.resolve(
      (x.image.backing?.writes.includes("write -P 2 512 512") ?? false) &&
        x.steps.some((s) => s.kind === "io" && s.commands.some((k) => k.startsWith("write -c"))),
    );
  const small = await reduceCase(c, fails);
  assert.deepEqual(small.steps, [{ kind: "io", commands: ["write -c -P 4 65536 65536"] }]);
  assert.deepEqual(small.image.backing?.writes, ["write -P 2 512 512"]);
  assert.equal(c.steps.length, 3, "the case given is left as it was");
});
