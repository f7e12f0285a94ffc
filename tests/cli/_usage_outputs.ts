/**
 * The usage and error output of the three command lines (`blkgraph`,
 * `qemu-img`, `qemu-io`) before a verb does any work: the dispatcher's
 * `--help`, `--version` and unknown verb, and each verb's `--help` and
 * its answer to an unknown option. `tests/testdata/cli/usage.json` holds
 * what the eagerly importing dispatcher printed (commit eff1e8f); the lazy
 * verb table must print the same. Rewrite it (only when a message is meant
 * to change) with `deno run -A tests/cli/_usage_outputs.ts`.
 *
 * @module
 */

import { main, QEMU_IMG_VERBS, VERBS } from "../../cli/main.ts";
import { qemuImg } from "../../cli/qemu-img.ts";
import { qemuIo } from "../../cli/qemu-io.ts";
import type { CliIO } from "../../cli/_common.ts";

/** One command line's arguments, exit code and output. */
export interface UsageRun {
  /** The arguments. */
  args: string[];
  /** Exit code. */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
}

/** Where the recorded outputs live. */
export const USAGE_FIXTURE = new URL("../testdata/cli/usage.json", import.meta.url);

async function runIt(f: (args: string[], io: CliIO) => Promise<number>, args: string[]): Promise<UsageRun> {
  let stdout = "";
  let stderr = "";
  const io: CliIO = { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s), readLine: () => Promise.resolve(null) };
  const code = await f(args, io);
  return { args, code, stdout, stderr };
}

/** Runs every usage and error case of the three tools, by tool name. */
export async function usageOutputs(): Promise<Record<string, UsageRun[]>> {
  const out: Record<string, UsageRun[]> = { blkgraph: [], "qemu-img": [], "qemu-io": [] };
  for (const a of [[], ["--help"], ["--version"], ["frobnicate"]]) {
    out.blkgraph.push(await runIt(main, a));
    out["qemu-img"].push(await runIt(qemuImg, a));
  }
  // `demo` takes no options and would run its tour on any argument.
  const cases = (name: string) => name === "demo" ? [["--help"]] : [["--help"], ["--bogus-option"]];
  for (const v of VERBS) for (const a of cases(v.name)) out.blkgraph.push(await runIt(main, [v.name, ...a]));
  for (const v of QEMU_IMG_VERBS) for (const a of cases(v.name)) out["qemu-img"].push(await runIt(qemuImg, [v.name, ...a]));
  for (const a of [["--help"], ["--bogus-option"], ["-c", "help"]]) out["qemu-io"].push(await runIt(qemuIo, a));
  return out;
}

if (import.meta.main) {
  await Deno.writeTextFile(USAGE_FIXTURE, JSON.stringify(await usageOutputs(), null, 1) + "\n");
}
