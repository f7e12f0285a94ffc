/**
 * The skeleton every timed qemu-io command shares (qemu-io's do_pread /
 * do_pwrite callers and print_report): time the request, print
 * "<what> failed: <strerror>" when it throws, verify what was read, and
 * print the report line unless `-q` is given (`-C`: the comma-separated
 * form; `-v`: the hexdump first).
 *
 * @module
 */

import { failed, type IoFlags, type IoSession, report } from "./_session.ts";

/** One timed request of a command, and how its result is reported. */
export interface TimedRequest {
  /** The command's name in "<what> failed: <strerror>" (qemu-io's: `read`, `readv`, `aio_write`, ...). */
  readonly what: string;
  /** The verb of the report line: `read`, `wrote`, `discard`. */
  readonly op: string;
  /** Offset the report names. */
  readonly offset: number;
  /** Bytes the request moves. */
  readonly count: number;
  /** Issues the request. */
  readonly call: () => Promise<void>;
  /** Checks what was read once the request succeeded; false fails the command. Runs even with `-q` (it prints its own mismatch). */
  readonly verify?: () => boolean;
  /** What `-v` prints before the report line (the hexdump of what was read). */
  readonly dump?: () => string;
  /** An `aio_*` request: a failure sets the session's exit code (the command itself has already succeeded). */
  readonly aio?: boolean;
}

/**
 * Runs `r` with qemu-io's skeleton: time, call, map a failure, verify,
 * report. Returns whether the command succeeded.
 *
 * @example
 * ```ts
 * import { IoSession } from "./_session.ts";
 * import { IoFlags } from "./_session.ts";
 * import { timedRequest } from "./_timed.ts";
 * let out = "";
 * const s = new IoSession({ stdout: (t: string) => (out += t), stderr: () => {} });
 * const quiet = new IoFlags([["q", true]]);
 * await timedRequest(s, quiet, { what: "read", op: "read", offset: 0, count: 512, call: () => Promise.resolve() });
 * console.log(JSON.stringify(out)); // ""
 * await timedRequest(s, new IoFlags(), { what: "read", op: "read", offset: 0, count: 512, call: () => Promise.reject(new Error("boom")) });
 * console.log(out.trim()); // read failed: boom
 * ```
 */
export async function timedRequest(s: IoSession, flags: IoFlags, r: TimedRequest): Promise<boolean> {
  const t0 = performance.now();
  try {
    await r.call();
  } catch (e) {
    if (r.aio) s.failed = true;
    failed(s, r.what, e);
    return false;
  }
  const ms = performance.now() - t0;
  const ok = r.verify?.() ?? true;
  if (flags.has("q")) return ok;
  if (r.dump && flags.has("v")) s.print(r.dump());
  s.print(report(r.op, ms, r.offset, r.count, r.count, 1, flags.has("C")));
  return ok;
}
