/**
 * `qemu-img` drop-in: qemu-img's verbs on blkgraph's block layer, with
 * messages prefixed `qemu-img:` as QEMU's are. Install it on PATH under
 * that name with
 * `deno install -g -A --no-lock -n qemu-img cli/qemu-img.ts`.
 *
 * ```sh
 * deno run -A cli/qemu-img.ts info --output=json disk.qcow2
 * ```
 *
 * @module
 */

import { type CliIO, closeImagesOnSignals, dispatch, processIO, QEMU_IMG_VERBS } from "./main.ts";

/**
 * Runs qemu-img's command line in-process; resolves to the exit code.
 *
 * @example
 * ```ts
 * import { qemuImg } from "./qemu-img.ts";
 * const code = await qemuImg(["--version"], { stdout: (s) => console.log(s), stderr: (s) => console.error(s) });
 * console.log(code); // 0
 * ```
 */
export function qemuImg(args: string[], io: CliIO): Promise<number> {
  return dispatch(args, { ...io, prog: "qemu-img" }, QEMU_IMG_VERBS);
}

if (import.meta.main) {
  closeImagesOnSignals();
  const io = processIO({ stdio: true });
  const code = await qemuImg(Deno.args, io);
  io.flush?.();
  Deno.exit(code);
}
