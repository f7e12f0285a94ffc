import assert from "node:assert/strict";
import { USAGE_FIXTURE, usageOutputs, type UsageRun } from "./_usage_outputs.ts";

// The dispatcher lists verbs from cli/_verbs.ts without importing them; what
// the three tools print for --help, --version, an unknown verb, and each
// verb's --help and unknown option is what the eager dispatcher printed.

const recorded = JSON.parse(await Deno.readTextFile(USAGE_FIXTURE)) as Record<string, UsageRun[]>;
const now = await usageOutputs();

for (const tool of ["blkgraph", "qemu-img", "qemu-io"]) {
  Deno.test(`${tool}'s usage and option errors are the ones recorded in tests/testdata/cli/usage.json`, () => {
    assert.deepEqual(now[tool].map((r) => r.args), recorded[tool].map((r) => r.args));
    for (const [i, r] of now[tool].entries()) assert.deepEqual(r, recorded[tool][i], `${tool} ${r.args.join(" ")}`);
  });
}
