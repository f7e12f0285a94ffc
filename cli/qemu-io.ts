/**
 * `qemu-io` drop-in: qemu-io's options and command language on blkgraph's
 * block layer, with messages prefixed `qemu-io:` as QEMU's are. Install it
 * on PATH under that name with
 * `deno install -g -A --no-lock -n qemu-io cli/qemu-io.ts`.
 *
 * ```sh
 * deno run -A cli/qemu-io.ts -c 'write -P 0xab 0 64k' -f raw disk.img
 * ```
 *
 * @module
 */

import { invokeVerb } from "./_common.ts";
import { ioVerb } from "./io.ts";
import { type CliIO, processIO } from "./main.ts";

/**
 * Runs qemu-io's command line in-process; resolves to the exit code.
 *
 * @example
 * ```ts
 * import { qemuIo } from "./qemu-io.ts";
 * const code = await qemuIo(["-c", "help"], { stdout: (s) => console.log(s), stderr: (s) => console.error(s) });
 * console.log(code); // 0
 * ```
 */
export function qemuIo(args: string[], io: CliIO): Promise<number> {
  return invokeVerb(ioVerb, args, { ...io, prog: "qemu-io" });
}

if (import.meta.main) {
  // No SIGINT/SIGTERM handlers here: qemu-io's `sigraise` must meet the
  // signals' default actions, as in QEMU (Deno.exit still writes back).
  const io = processIO({ stdio: true });
  const code = await qemuIo(Deno.args, io);
  io.flush?.();
  Deno.exit(code);
}
