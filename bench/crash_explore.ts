/**
 * Large crash-state exploration of qcow2: every workload in every metadata
 * mode (and, with `--wrong-order`, the deliberately broken order), printed as
 * a markdown table workload × mode → states, checks, failures. The first
 * failure of each row is printed with its minimal replayable op list.
 *
 *     deno run -A bench/crash_explore.ts [--seed 1] [--samples 64] [--max-states 2000] [--qemu-every 10] [--wrong-order]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { exploreQcow2, QCOW2_MODES, QCOW2_WORKLOADS } from "../filters/crash/qcow2.ts";

const { values } = parseArgs({
  options: {
    seed: { type: "string", default: "1" },
    samples: { type: "string", default: "64" },
    "max-states": { type: "string", default: "2000" },
    "max-exhaustive": { type: "string", default: "10" },
    "qemu-every": { type: "string", default: "10" },
    "torn-cuts": { type: "string", default: "3" },
    "wrong-order": { type: "boolean", default: false },
    workload: { type: "string" },
  },
});

const dir = await Deno.makeTempDir({ prefix: "blkgraph-crash-" });
const rows: string[] = [];
const details: string[] = [];
const t0 = performance.now();
try {
  for (const w of QCOW2_WORKLOADS) {
    if (values.workload && w.name !== values.workload) continue;
    for (const mode of QCOW2_MODES) {
      const start = performance.now();
      const r = await exploreQcow2(w, mode, {
        dir,
        seed: Number(values.seed),
        wrongOrder: values["wrong-order"],
        qemuEvery: Number(values["qemu-every"]),
        explore: {
          seed: Number(values.seed),
          samples: Number(values.samples),
          maxStates: Number(values["max-states"]),
          maxExhaustive: Number(values["max-exhaustive"]),
          maxTornCuts: Number(values["torn-cuts"]),
          maxFailures: 1,
        },
      });
      const secs = ((performance.now() - start) / 1000).toFixed(1);
      const checks = Object.entries(r.checks).map(([k, v]) => `${k} ${v}`).join(", ");
      rows.push(`| ${w.name} | ${mode} | ${r.states} | ${checks} | ${r.failures.length} | ${secs} |`);
      for (const f of r.failures) {
        const chosen = f.replay!.filter((op) => !op.durable);
        const durable = f.replay!.length - chosen.length;
        details.push(
          `- ${w.name} / ${mode} (state ${f.index}, ${f.kind}): ${f.oracle}: ${f.message}\n` +
            `  minimal replay: the ${durable} durable ops of crash point ${f.minimal!.crashPoint} plus ${JSON.stringify(chosen)}`,
        );
      }
    }
  }
} finally {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
}

console.log(`## Crash exploration${values["wrong-order"] ? " (x-wrong-order=l2-before-refblock)" : ""}\n`);
console.log("| workload | mode | states | checks | failures | seconds |");
console.log("|---|---|---:|---|---:|---:|");
for (const r of rows) console.log(r);
console.log(
  `\nseed ${values.seed}, samples ${values.samples}, max states ${values["max-states"]}; total ${
    ((performance.now() - t0) / 1000).toFixed(1)
  } s`,
);
if (details.length) console.log(`\n${details.join("\n")}`);
