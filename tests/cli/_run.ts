/**
 * Runs the blkgraph CLI in-process for tests and normalises qemu tools'
 * timing output so it can be compared with ours.
 *
 * @module
 */

import { main } from "../../cli/main.ts";

/** Exit code and collected output of one CLI run. */
export interface CliResult {
  /** Exit code. */
  code: number;
  /** Everything written to stdout. */
  stdout: string;
  /** Everything written to stderr. */
  stderr: string;
}

/** Runs `blkgraph ARGS...` in-process; `stdin` lines feed the io prompt. */
export async function cli(args: string[], stdin?: string[]): Promise<CliResult> {
  let stdout = "";
  let stderr = "";
  const lines = [...(stdin ?? [])];
  const code = await main(args, {
    stdout: (s) => void (stdout += s),
    stderr: (s) => void (stderr += s),
    readLine: () => Promise.resolve(lines.length ? lines.shift()! : null),
  });
  return { code, stdout, stderr };
}

/** Replaces qemu-io's timing and rate figures with a placeholder. */
export function normaliseTimes(text: string): string {
  return text.replace(/ \d+ ops; .*$/gm, " N ops; TIME");
}
