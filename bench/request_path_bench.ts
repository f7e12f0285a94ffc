/**
 * `deno task bench -- --only request_path`: the qcow2 request path against
 * `qemu-img bench` over the same offsets (see `bench/qcow2_cpu.ts`).
 *
 * @module
 */

import type { BenchOptions, BenchTable } from "./_table.ts";
import { run as runRequestPath } from "./qcow2_cpu.ts";

/** Runs the request-path table. */
export function run(o: BenchOptions): Promise<BenchTable> {
  return runRequestPath(o);
}
