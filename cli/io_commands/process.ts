/**
 * qemu-io's `reopen`, `sigraise` and `abort`: reopening the image with new
 * options (read-only or read-write, cache mode, driver options such as
 * qcow2's `lazy-refcounts`) and ending the process with a signal, as the
 * iotests do to simulate a crash.
 *
 * `reopen` flushes and closes the graph, then opens it again from the same
 * name with the changed options: what was written is on disk before the new
 * graph reads it, and node names given with `node-name` stay the same. A
 * snapshot-mode (`-s`) image is refused: its temporary overlay would be lost.
 *
 * @module
 */

import { parseCacheMode } from "../../core/open.ts";
import type { BlockNode } from "../../core/node.ts";
import { isPlainObject, parseDotted, unflatten } from "../../core/spec.ts";
import { errorMessage } from "../_common.ts";
import { cvtnum, type IoCommand, type IoSession, usage } from "./_session.ts";

/** Linux signal numbers and the names Deno.kill takes. */
const SIGNALS: Record<number, Deno.Signal> = {
  1: "SIGHUP",
  2: "SIGINT",
  3: "SIGQUIT",
  4: "SIGILL",
  5: "SIGTRAP",
  6: "SIGABRT",
  7: "SIGBUS",
  8: "SIGFPE",
  9: "SIGKILL",
  10: "SIGUSR1",
  11: "SIGSEGV",
  12: "SIGUSR2",
  13: "SIGPIPE",
  14: "SIGALRM",
  15: "SIGTERM",
  17: "SIGCHLD",
  18: "SIGCONT",
  19: "SIGSTOP",
  20: "SIGTSTP",
  21: "SIGTTIN",
  22: "SIGTTOU",
  23: "SIGURG",
  24: "SIGXCPU",
  25: "SIGXFSZ",
  26: "SIGVTALRM",
  27: "SIGPROF",
  28: "SIGWINCH",
  29: "SIGIO",
  30: "SIGPWR",
  31: "SIGSYS",
};

/** Linux's NSIG. */
const NSIG = 65;

/** Raises `sig` in this process (raise(3)), after writing out buffered output as qemu-io does. */
function raise(s: IoSession, sig: number): void {
  s.io.flush?.();
  const name = SIGNALS[sig];
  if (name) Deno.kill(Deno.pid, name);
}

const sigraise: IoCommand = {
  name: "sigraise",
  args: "signal",
  oneline: "raises a signal",
  argmin: 1,
  argmax: 1,
  run(s, _flags, [arg]) {
    const sig = cvtnum(s, arg);
    if (sig === undefined) return Promise.resolve(false);
    if (sig > NSIG) {
      s.print(`signal argument '${arg}' is too large to be a valid signal\n`);
      return Promise.resolve(false);
    }
    raise(s, sig);
    return Promise.resolve(true);
  },
};

const abort: IoCommand = {
  name: "abort",
  args: "",
  oneline: "simulate a program crash using abort(3)",
  argmin: 0,
  argmax: 0,
  run(s) {
    raise(s, 6);
    return Promise.resolve(true);
  },
};

/** The four options reopen validates as QEMU's option parser does. */
const BOOL_KEYS = ["read-only", "auto-read-only", "cache.direct", "cache.no-flush"];

function flat(o: Record<string, unknown>, prefix = "", out: Record<string, unknown> = {}): Record<string, unknown> {
  for (const [k, v] of Object.entries(o)) {
    if (isPlainObject(v)) flat(v, `${prefix}${k}.`, out);
    else out[prefix + k] = v;
  }
  return out;
}

/** The node a dotted option prefix (`file.`, `backing.file.`) names, starting at `top`. */
function nodeAt(top: BlockNode, path: string[]): BlockNode | undefined {
  let n: BlockNode | undefined = top;
  for (const role of path) n = n?.children.get(role);
  return n;
}

const reopen: IoCommand = {
  name: "reopen",
  args: "[(-r|-w)] [-c cache] [-o options]",
  oneline: "reopens an image with new options",
  flags: "c:o:rw",
  argmin: 0,
  argmax: -1,
  needsFile: true,
  async run(s, flags, operands) {
    let readOnly = s.node!.readOnly;
    let cache = s.opened?.opts.cache;
    let rw = false;
    let cacheGiven = false;
    const given: Record<string, unknown> = {};
    for (const [c, v] of flags.list) {
      if (c === "c") {
        try {
          parseCacheMode(v as string);
        } catch {
          s.report(`Invalid cache option: ${v}`);
          return false;
        }
        cache = v as string;
        cacheGiven = true;
      } else if (c === "o") {
        try {
          Object.assign(given, flat(parseDotted(v as string)));
        } catch (e) {
          s.report(errorMessage(e));
          return false;
        }
      } else {
        if (rw) {
          s.report("Only one -r/-w option may be given");
          return false;
        }
        rw = true;
        readOnly = c === "r";
      }
    }
    if (operands.length) return usage(s, reopen);
    if ("read-only" in given && rw) {
      s.report("Cannot set both -r/-w and 'read-only'");
      return false;
    }
    if (("cache.direct" in given || "cache.no-flush" in given) && cacheGiven) {
      s.report("Cannot set both -c and the cache options");
      return false;
    }
    for (const k of BOOL_KEYS) {
      if (k in given && !["on", "off"].includes(String(given[k]))) {
        s.report(`Parameter '${k}' expects 'on' or 'off'`);
        return false;
      }
    }
    if ("read-only" in given) readOnly = given["read-only"] === "on";
    // A node keeps its name and driver across a reopen (QEMU's bdrv_reopen_prepare).
    for (const [k, v] of Object.entries(given)) {
      const parts = k.split(".");
      const last = parts.pop()!;
      if (last !== "node-name" && last !== "driver") continue;
      const n = nodeAt(s.node!, parts);
      const current = n && (last === "driver" ? n.driver.name : n.name);
      if (current !== String(v)) {
        s.report(`Cannot change the option '${last}'`);
        return false;
      }
      // Unchanged, so nothing to pass on: a lone `backing.driver` would
      // otherwise describe a backing node without its file.
      delete given[k];
    }
    const before = s.opened;
    if (!before) {
      s.report("Cannot reopen an image that was not opened by name");
      return false;
    }
    if (before.opts.snapshot) {
      s.report("Cannot reopen an image opened in snapshot mode (-s): its temporary overlay would be lost");
      return false;
    }
    const { "read-only": _ro, ...rest } = given;
    const options = unflatten({ ...flat(before.opts.options ?? {}), ...rest });
    await s.drain();
    try {
      await s.node!.flush();
    } catch (e) {
      s.report(errorMessage(e));
      return false;
    }
    await s.closeImage();
    const next = { ...before.opts, readOnly, cache, options: Object.keys(options).length ? options : undefined };
    if (await s.open(before.name, next, true)) return true;
    // Like a failed bdrv_reopen, keep the image as it was.
    await s.open(before.name, before.opts, true);
    return false;
  },
};

/** The process commands. */
export const PROCESS_COMMANDS: readonly IoCommand[] = [reopen, sigraise, abort];
