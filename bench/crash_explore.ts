/**
 * Large crash-state exploration of qcow2: every workload in every metadata
 * mode (and, with `--wrong-order`, the deliberately broken order), printed as
 * a markdown table workload × mode → states, checks, failures. The first
 * failure of each row is printed with its minimal replayable op list; with
 * `--report FILE` the HTML crash report (each oracle's verdict, failing
 * states' replays on the flush-epoch timeline) is written too.
 *
 *     deno run -A bench/crash_explore.ts [--seed 1] [--samples 64] [--max-states 2000] [--qemu-every 10] [--wrong-order] [--report report.html]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { renderCrashReport } from "../cli/_crash_report.ts";
import { crashTable, exploreBuiltIn } from "../cli/crash_explore.ts";

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
    report: { type: "string" },
  },
});

const dir = await Deno.makeTempDir({ prefix: "blkgraph-crash-" });
const t0 = performance.now();
const seed = Number(values.seed);
let runs;
try {
  runs = await exploreBuiltIn({
    workloads: values.workload ? [values.workload] : [],
    wrongOrder: values["wrong-order"],
    seed,
    qemuEvery: Number(values["qemu-every"]),
    dir,
    explore: {
      seed,
      samples: Number(values.samples),
      maxStates: Number(values["max-states"]),
      maxExhaustive: Number(values["max-exhaustive"]),
      maxTornCuts: Number(values["torn-cuts"]),
      maxFailures: 1,
    },
  });
} finally {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
}

const settings = `seed ${values.seed}, samples ${values.samples}, max states ${values["max-states"]}`;
console.log(`## Crash exploration${values["wrong-order"] ? " (x-wrong-order=l2-before-refblock)" : ""}\n`);
console.log(crashTable(runs).trimEnd());
console.log(`\n${settings}; total ${((performance.now() - t0) / 1000).toFixed(1)} s`);
if (values.report) {
  await Deno.writeTextFile(
    values.report,
    renderCrashReport(runs, { settings: settings + (values["wrong-order"] ? "; x-wrong-order=l2-before-refblock" : "") }),
  );
  console.log(`report: ${values.report}`);
}
