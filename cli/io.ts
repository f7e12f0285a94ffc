/**
 * `blkgraph io`: qemu-io's command language on a blkgraph image. Commands
 * come from `-c` (in order) or, without `-c`, from an interactive
 * `qemu-io> ` prompt on standard input.
 *
 * @module
 */

import { type CliIO, errorMessage, flagList, flagString, needPositionals, openImage, parseVerbArgs, type Verb } from "./_common.ts";
import { startTrace, TRACE_FLAGS, traceFlags } from "./_trace.ts";
import { BLKDEBUG_COMMANDS } from "./io_commands/blkdebug.ts";
import { MISC_COMMANDS } from "./io_commands/misc.ts";
import { RW_COMMANDS } from "./io_commands/rw.ts";
import { getopt, type IoCommand, IoSession, splitWords } from "./io_commands/_session.ts";

/** Every io command. */
export const IO_COMMANDS: readonly IoCommand[] = [...RW_COMMANDS, ...MISC_COMMANDS, ...BLKDEBUG_COMMANDS];

const USAGE =
  `Usage: blkgraph io [-c cmd]... [-f fmt] [--image-opts] [-r] [-t cache] [-n] [-U] [--trace[=FILE]] [--trace-format=text|json|chrome] [file]

qemu-io's command language: each -c runs one command (read, write, readv,
writev, aio_read, aio_write, aio_flush, flush, discard, alloc, map, length,
truncate, info, open, close, break, wait_break, resume, remove_break, help,
quit). Without -c, commands are read from standard input at a 'qemu-io> '
prompt. Run "blkgraph io -c help" for the command list.
`;

function argCountError(cmd: IoCommand, n: number): string {
  if (cmd.argmax === -1) return `bad argument count ${n} to ${cmd.name}, expected at least ${cmd.argmin} arguments\n`;
  if (cmd.argmin === cmd.argmax) return `bad argument count ${n} to ${cmd.name}, expected ${cmd.argmin} arguments\n`;
  return `bad argument count ${n} to ${cmd.name}, expected between ${cmd.argmin} and ${cmd.argmax} arguments\n`;
}

/** Runs one command line in a session; false when it failed. */
export async function execLine(s: IoSession, line: string): Promise<boolean> {
  const words = splitWords(line.trim());
  if (!words.length) return true;
  const [name, ...rest] = words;
  const cmd = s.commands.find((c) => c.name === name || c.altnames?.includes(name));
  if (!cmd) {
    s.io.stderr(`command "${name}" not found\n`);
    return false;
  }
  if (cmd.needsFile && !s.node) {
    s.io.stderr(`no file open, try 'help open'\n`);
    return false;
  }
  if (rest.length < cmd.argmin || (cmd.argmax !== -1 && rest.length > cmd.argmax)) {
    s.io.stderr(argCountError(cmd, rest.length));
    return false;
  }
  const parsed = getopt(s, cmd, rest);
  if (!parsed) return false;
  try {
    return (await cmd.run(s, parsed.flags, parsed.operands)) !== false;
  } catch (e) {
    s.print(`${cmd.name}: ${errorMessage(e)}\n`);
    return false;
  }
}

/** Runs commands (or the prompt) on a session and closes its image. */
export async function runSession(s: IoSession, commands: string[] | undefined): Promise<void> {
  try {
    if (commands) {
      for (const c of commands) {
        if (!(await execLine(s, c))) s.failed = true;
        if (s.quit) break;
      }
    } else {
      while (!s.quit) {
        s.io.stdout("qemu-io> ");
        const line = s.io.readLine ? await s.io.readLine() : null;
        if (line === null) {
          s.io.stdout("\n");
          break;
        }
        if (!(await execLine(s, line))) s.failed = true;
      }
    }
    await s.drain();
  } finally {
    s.trace?.stop();
    await s.node?.close();
    s.node = undefined;
  }
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      cmd: { type: "string", short: "c", multiple: true },
      format: { type: "string", short: "f" },
      "image-opts": { type: "boolean" },
      "read-only": { type: "boolean", short: "r" },
      cache: { type: "string", short: "t" },
      nocache: { type: "boolean", short: "n" },
      snapshot: { type: "boolean", short: "s" },
      "force-share": { type: "boolean", short: "U" },
      aio: { type: "string", short: "i" },
      discard: { type: "string", short: "d" },
      misalign: { type: "boolean", short: "m" },
      "native-aio": { type: "boolean", short: "k" },
      ...TRACE_FLAGS,
      trace: { type: "string", short: "T" },
      object: { type: "string", multiple: true },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 0, 1, "at most one filename");
  const s = new IoSession(io);
  s.commands = IO_COMMANDS;
  s.traceTarget = traceFlags(p.values);
  if (p.positionals.length) {
    const name = p.positionals[0];
    s.node = await openImage(name, {
      format: flagString(p.values, "format"),
      imageOpts: p.values["image-opts"] === true,
      readOnly: p.values["read-only"] === true,
      cache: flagString(p.values, "cache") ?? (p.values.nocache === true ? "none" : undefined),
    });
    s.filename = name;
    s.warnIfProbed(name);
    if (s.traceTarget !== undefined) s.trace = startTrace(s.node, { ...s.traceTarget, io });
  }
  const cmds = flagList(p.values, "cmd");
  await runSession(s, cmds.length ? cmds : undefined);
  return s.failed ? 1 : 0;
}

/** The `io` verb. */
export const ioVerb: Verb = { name: "io", summary: "qemu-io's command language (-c cmd, or a prompt)", run };
