/**
 * The operation fuzzer's campaign runner: random qcow2 images and operation sequences, run by QEMU's tools and by blkgraph's
 * drop-ins side by side (`_exec.ts`). `deno task opfuzz --cases 500 --seed 1 --out /tmp/opfuzz`; `--replay FILE` runs one saved case
 * again and prints what it finds; `--reduce FILE` saves the smallest case that still finds the same first class as `FILE.min.json`. Exit code 1 when a case found something.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { makeCase, type OpCase } from "./_gen.ts";
import { reduceCase } from "./_reduce.ts";
import { type Outcome, runCase, type RunOptions } from "./_exec.ts";

/** Runs a case in a fresh directory, which is removed unless `keep`. */
export async function runInTemp(c: OpCase, opts: RunOptions = {}, keep = false): Promise<Outcome & { dir: string }> {
  const dir = await Deno.makeTempDir({ prefix: `blkgraph-opfuzz-${c.seed}-` });
  try {
    return { ...(await runCase(c, dir, opts)), dir };
  } finally {
    if (!keep) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      cases: { type: "string", default: "100" },
      seed: { type: "string", default: "1" },
      out: { type: "string", default: "/tmp/blkgraph-opfuzz" },
      replay: { type: "string" },
      reduce: { type: "string" },
      keep: { type: "boolean", default: false },
      verbose: { type: "boolean", short: "v", default: false },
    },
  });
  if (values.reduce) {
    const saved = JSON.parse(await Deno.readTextFile(values.reduce)) as { case: OpCase; outcome: Outcome };
    const first = saved.outcome.classes[0];
    const small = await reduceCase(saved.case, async (x) => (await runInTemp(x)).classes[0] === first);
    const out = await runInTemp(small);
    const to = values.reduce.replace(/(\.json)?$/, ".min.json");
    await Deno.writeTextFile(to, JSON.stringify({ case: small, outcome: out }, null, 1));
    console.log(JSON.stringify(small, null, 1));
    for (const n of out.notes) console.log(n);
    console.log(`reduced case saved as ${to}`);
    Deno.exit(0);
  }
  if (values.replay) {
    const c = JSON.parse(await Deno.readTextFile(values.replay)).case as OpCase;
    const out = await runInTemp(c, { oursLimitMs: 600_000 }, values.keep);
    console.log(JSON.stringify(c, null, 1));
    console.log(out.classes.length ? `findings: ${out.classes.join(", ")}` : out.skipped ? `skipped: ${out.skipped}` : "clean");
    for (const n of out.notes) console.log(n);
    if (values.keep) console.log(`files kept in ${out.dir}`);
    Deno.exit(out.classes.length ? 1 : 0);
  }
  const cases = Number(values.cases);
  const first = Number(values.seed);
  await Deno.mkdir(`${values.out}/findings`, { recursive: true });
  const counts = new Map<string, number>();
  for (let seed = first; seed < first + cases; seed++) {
    const c = makeCase(seed);
    const out = await runInTemp(c);
    const key = out.classes.length ? out.classes.join("+") : out.skipped ? "skipped" : "clean";
    counts.set(key, (counts.get(key) ?? 0) + 1);
    if (out.classes.length) {
      await Deno.writeTextFile(`${values.out}/findings/case-${seed}.json`, JSON.stringify({ case: c, outcome: out }, null, 1));
      console.log(`case ${seed}: ${key}\n  ${out.notes.filter((n) => !n.startsWith("output")).join("\n  ").slice(0, 2000)}`);
    } else if (out.skipped) console.log(`case ${seed}: skipped, ${out.skipped}`);
    else if (values.verbose) console.log(`case ${seed}: clean`);
  }
  console.log([...counts].map(([k, v]) => `${k}: ${v}`).join(", "));
  Deno.exit([...counts.keys()].some((k) => k !== "clean" && k !== "skipped") ? 1 : 0);
}
