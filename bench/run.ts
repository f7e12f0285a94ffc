/**
 * The benchmark runner (`deno task bench`): imports every `bench/*_bench.ts`,
 * calls its `run()` and prints the tables as markdown.
 *
 * Usage: `deno run -A bench/run.ts [--quick] [--runs N] [--only NAME] [--out FILE]`
 * - `--quick`: fewer requests (a smoke test, figures not meaningful);
 * - `--runs N`: runs per figure, the median is printed (default 5);
 * - `--only NAME`: run only modules whose file name contains NAME;
 * - `--out FILE`: also write the markdown to FILE.
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { BenchModule, BenchTable } from "./_table.ts";
import { toMarkdown } from "./_table.ts";

/** Finds the benchmark modules next to this file, sorted by name. */
export async function findBenchModules(only?: string): Promise<string[]> {
  const dir = new URL(".", import.meta.url);
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith("_bench.ts") && (!only || e.name.includes(only))) names.push(e.name);
  }
  return names.sort().map((n) => new URL(n, dir).href);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    // `deno task bench -- --only x` passes the "--" through.
    args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      runs: { type: "string", default: "5" },
      only: { type: "string" },
      out: { type: "string" },
    },
  });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`Invalid --runs '${values.runs}': expected a positive integer`);
  const modules = await findBenchModules(values.only);
  if (!modules.length) throw new Error(`No benchmark modules match '${values.only ?? "*"}' in bench/`);
  let out = `Benchmarks on ${Deno.build.target}, Deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} CPUs, ${
    new Date().toISOString()
  }\n\n`;
  console.log(out);
  for (const url of modules) {
    const mod = (await import(url)) as BenchModule;
    const dir = await Deno.makeTempDir({ prefix: "blkgraph-bench-" });
    try {
      const result = await mod.run({ quick: values.quick, runs, dir });
      for (const t of ([] as BenchTable[]).concat(result)) {
        const md = toMarkdown(t);
        console.log(md);
        out += md + "\n";
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  if (values.out) await Deno.writeTextFile(values.out, out);
}

if (import.meta.main) await main();
