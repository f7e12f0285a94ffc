/**
 * Runs the qemu-img / qemu-io drop-ins in a working directory of the
 * caller's choice, in a child process. Tests that need relative names to
 * resolve as the real tool resolves them use this instead of `Deno.chdir`:
 * `deno test --parallel` runs test files in workers of one process, which
 * share one working directory, so a chdir in one file moves every other
 * file's relative paths and subprocess launches.
 *
 * As a script: `deno run -A _in_dir.ts img|io JSON` where JSON is a list of
 * argument lists; prints a JSON list of `{code, stdout, stderr}`.
 *
 * @module
 */

import { runOk } from "../_helpers/qemu.ts";
import type { CliResult } from "./_run.ts";

const SELF = new URL(import.meta.url).pathname;

/** Runs each argument list through the `tool` drop-in with `cwd` as working directory; one child process for all. */
export async function inDir(tool: "img" | "io", runs: string[][], cwd: string): Promise<CliResult[]> {
  const r = await runOk(Deno.execPath(), ["run", "-A", SELF, tool, JSON.stringify(runs)], { cwd });
  return JSON.parse(r.stdout);
}

if (import.meta.main) {
  const [tool, json] = Deno.args;
  const entry = tool === "img" ? (await import("../../cli/qemu-img.ts")).qemuImg : (await import("../../cli/qemu-io.ts")).qemuIo;
  const out: CliResult[] = [];
  for (const args of JSON.parse(json) as string[][]) {
    let stdout = "";
    let stderr = "";
    const code = await entry(args, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s) });
    out.push({ code, stdout, stderr });
  }
  console.log(JSON.stringify(out));
}
