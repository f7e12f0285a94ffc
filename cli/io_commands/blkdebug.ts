/**
 * qemu-io's blkdebug commands: break, wait_break, resume and remove_break.
 * They go through the node's breakpoint operations, which act on the first
 * node down the primary-child chain whose driver offers breakpoints (the
 * blkdebug filter), as QEMU's bdrv_find_debug_node does.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import type { IoCommand, IoSession } from "./_session.ts";

/** qemu-io's failure line for each command ("Could not set breakpoint: ..."). */
function failLine(what: string, tag: string, why: string): string {
  if (what === "break") return `Could not set breakpoint: ${why}\n`;
  if (what === "resume") return `Could not resume request: ${why}\n`;
  if (what === "remove_break") return `Could not remove breakpoint ${tag}: ${why}\n`;
  return `${what} failed: ${why}\n`;
}

function fail(s: IoSession, what: string, tag: string, e: unknown): false {
  // No breakpoint-capable node below: qemu-io's -ENOTSUP.
  const msg = e instanceof BlockError && e.code === "ENOTSUP"
    ? "Operation not supported"
    : (e as { strerror?: string }).strerror ?? (e as Error).message;
  s.print(failLine(what, tag, msg));
  return false;
}

/** Runs one breakpoint operation on the session's node, printing qemu-io's failure line. */
async function op(s: IoSession, what: string, tag: string, fn: (n: BlockNode) => Promise<void> | void): Promise<boolean> {
  try {
    await fn(s.node!);
    return true;
  } catch (e) {
    return fail(s, what, tag, e);
  }
}

const brk: IoCommand = {
  name: "break",
  args: "event tag",
  oneline: "sets a breakpoint on event and tags the stopped request as tag",
  argmin: 2,
  argmax: 2,
  needsFile: true,
  run(s, _f, [event, tag]) {
    return op(s, "break", tag, (n) => n.debug.break(event, tag));
  },
};

const waitBreak: IoCommand = {
  name: "wait_break",
  args: "tag",
  oneline: "waits for the suspension of a request",
  argmin: 1,
  argmax: 1,
  needsFile: true,
  async run(s, _f, [tag]) {
    if (!(await op(s, "wait_break", tag, (n) => n.debug.waitBreak(tag)))) return false;
    s.print(`blkdebug: Suspended request '${tag}'\n`);
    return true;
  },
};

const resume: IoCommand = {
  name: "resume",
  args: "tag",
  oneline: "resumes the request tagged as tag",
  argmin: 1,
  argmax: 1,
  needsFile: true,
  async run(s, _f, [tag]) {
    if (!(await op(s, "resume", tag, (n) => n.debug.resume(tag)))) return false;
    s.print(`blkdebug: Resuming request '${tag}'\n`);
    // Let the resumed request run on, as qemu-io's main loop does.
    await new Promise((r) => setTimeout(r, 0));
    return true;
  },
};

const removeBreak: IoCommand = {
  name: "remove_break",
  args: "tag",
  oneline: "remove a breakpoint by tag",
  argmin: 1,
  argmax: 1,
  needsFile: true,
  run(s, _f, [tag]) {
    return op(s, "remove_break", tag, (n) => n.debug.removeBreak(tag));
  },
};

/** The blkdebug commands. */
export const BLKDEBUG_COMMANDS: readonly IoCommand[] = [brk, waitBreak, resume, removeBreak];
