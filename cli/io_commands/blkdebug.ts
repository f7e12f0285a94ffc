/**
 * qemu-io's blkdebug commands: break, wait_break, resume and remove_break.
 * They act on the first node down the graph whose driver offers
 * breakpoints (the blkdebug filter).
 *
 * @module
 */

import { isBlkdebugEvent } from "../../core/events.ts";
import type { BlockNode } from "../../core/node.ts";
import { graphNodes } from "../_common.ts";
import type { IoCommand, IoSession } from "./_session.ts";

/** The breakpoint API a blkdebug instance offers. */
export interface BreakpointApi {
  /** Suspends the next request that raises `event`, tagging it `tag`. */
  break(event: string, tag: string): void;
  /** Resolves when a request is suspended at `tag`. */
  waitBreak(tag: string): Promise<void>;
  /** Resumes the request suspended at `tag`. */
  resume(tag: string): void;
  /** Removes the breakpoint `tag`. */
  removeBreak(tag: string): void;
}

/** Finds the breakpoint API in the graph under `top`. */
export function findBreakpoints(top: BlockNode): BreakpointApi | undefined {
  for (const n of graphNodes(top)) {
    const inst = n.instance as Partial<BreakpointApi>;
    if (typeof inst.break === "function" && typeof inst.resume === "function") return inst as BreakpointApi;
  }
  return undefined;
}

/** qemu-io's failure line for each command ("Could not set breakpoint: ..."). */
function failLine(what: string, tag: string, why: string): string {
  if (what === "break") return `Could not set breakpoint: ${why}\n`;
  if (what === "resume") return `Could not resume request: ${why}\n`;
  if (what === "remove_break") return `Could not remove breakpoint ${tag}: ${why}\n`;
  return `${what} failed: ${why}\n`;
}

function api(s: IoSession, what: string, tag: string): BreakpointApi | undefined {
  const a = findBreakpoints(s.node!);
  if (!a) s.print(failLine(what, tag, "Operation not supported"));
  return a;
}

function fail(s: IoSession, what: string, tag: string, e: unknown): false {
  const msg = (e as { strerror?: string }).strerror ?? (e as Error).message;
  s.print(failLine(what, tag, msg));
  return false;
}

const brk: IoCommand = {
  name: "break",
  args: "event tag",
  oneline: "sets a breakpoint on event and tags the stopped request as tag",
  argmin: 2,
  argmax: 2,
  needsFile: true,
  run(s, _f, [event, tag]) {
    const a = api(s, "break", tag);
    if (!a) return Promise.resolve(false);
    if (!isBlkdebugEvent(event)) {
      s.print(failLine("break", tag, "No such file or directory"));
      return Promise.resolve(false);
    }
    try {
      a.break(event, tag);
    } catch (e) {
      return Promise.resolve(fail(s, "break", tag, e));
    }
    return Promise.resolve(true);
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
    const a = api(s, "wait_break", tag);
    if (!a) return false;
    try {
      await a.waitBreak(tag);
    } catch (e) {
      return fail(s, "wait_break", tag, e);
    }
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
    const a = api(s, "resume", tag);
    if (!a) return false;
    try {
      a.resume(tag);
    } catch (e) {
      return fail(s, "resume", tag, e);
    }
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
    const a = api(s, "remove_break", tag);
    if (!a) return Promise.resolve(false);
    try {
      a.removeBreak(tag);
    } catch (e) {
      return Promise.resolve(fail(s, "remove_break", tag, e));
    }
    return Promise.resolve(true);
  },
};

/** The blkdebug commands. */
export const BLKDEBUG_COMMANDS: readonly IoCommand[] = [brk, waitBreak, resume, removeBreak];
