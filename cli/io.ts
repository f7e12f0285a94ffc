/**
 * `blkgraph io`: qemu-io's command language on a blkgraph image. Commands
 * come from `-c` (in order) or, without `-c`, from an interactive
 * `qemu-io> ` prompt on standard input.
 *
 * @module
 */

import { aioArg, CliError, type CliIO, flagList, flagString, needPositionals, parseVerbArgs, progName, type Verb } from "./_common.ts";
import { TRACE_FLAGS, traceFlags } from "./_trace.ts";
import { BLKDEBUG_COMMANDS } from "./io_commands/blkdebug.ts";
import { MISC_COMMANDS } from "./io_commands/misc.ts";
import { PROCESS_COMMANDS } from "./io_commands/process.ts";
import { RW_COMMANDS } from "./io_commands/rw.ts";
import { getopt, type IoCommand, IoSession, splitWords } from "./io_commands/_session.ts";
import { errorMessage } from "./_common.ts";
import { parseCacheMode } from "../core/open.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

/** Every io command. */
export const IO_COMMANDS: readonly IoCommand[] = [...RW_COMMANDS, ...MISC_COMMANDS, ...BLKDEBUG_COMMANDS, ...PROCESS_COMMANDS];

const USAGE = `Usage: blkgraph io [OPTIONS]... [-c STRING]... [file]

qemu-io's options and command language: each -c runs one command (read,
write, readv, writev, aio_read, aio_write, aio_flush, flush, discard,
alloc, map, length, truncate, info, open, close, reopen, break,
wait_break, resume, remove_break, sleep, sigraise, abort, help, quit).
Without -c, commands are read from standard input at a 'qemu-io> '
prompt. Run "blkgraph io -c help" for the command list.

  -f, --format FMT     the image's format (probed otherwise)
  --image-opts         the file is an option string (driver=...,file.filename=...)
  -r, --read-only      open read-only
  -s, --snapshot       writes go to a temporary overlay; the image is unchanged
  -C, --copy-on-read   reads copy backing-file data into the image
  -n, --nocache        cache=none (O_DIRECT)
  -t, --cache=MODE     writethrough (default), writeback, none, directsync, unsafe
  -U, --force-share    read an image another process is writing (with -r)
  -T, --trace[=FILE]   print every BLKDBG event and flush (JSON lines to FILE)
  --trace-format=F     text, json or chrome (Chrome/Perfetto trace events)
  -V, --version        print the version
`;

function argCountError(cmd: IoCommand, n: number): string {
  if (cmd.argmax === -1) return `bad argument count ${n} to ${cmd.name}, expected at least ${cmd.argmin} arguments\n`;
  if (cmd.argmin === cmd.argmax) return `bad argument count ${n} to ${cmd.name}, expected ${cmd.argmin} arguments\n`;
  return `bad argument count ${n} to ${cmd.name}, expected between ${cmd.argmin} and ${cmd.argmax} arguments\n`;
}

/** Runs one command line in a session; false when it failed. */
export async function execLine(s: IoSession, line: string): Promise<boolean> {
  const words = splitWords(line);
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
  // qemu-io asks for write permission before a writing command runs.
  if (cmd.write && s.node?.readOnly) {
    s.report("Block node is read-only");
    return false;
  }
  const parsed = getopt(s, cmd, rest);
  if (!parsed) return false;
  try {
    return (await cmd.run(s, parsed.flags, parsed.operands)) !== false;
  } catch (e) {
    s.report(`${cmd.name}: ${errorMessage(e)}`);
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
        s.io.flush?.();
        const line = s.io.readLine ? await s.io.readLine() : null;
        if (line === null) {
          // qemu-io leaves the last prompt without a newline; a terminal gets one.
          if (s.io.isTTY) s.io.stdout("\n");
          break;
        }
        if (!(await execLine(s, line))) s.failed = true;
      }
    }
  } finally {
    await s.closeImage();
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
      "copy-on-read": { type: "boolean", short: "C" },
      "force-share": { type: "boolean", short: "U" },
      aio: { type: "string", short: "i" },
      discard: { type: "string", short: "d" },
      misalign: { type: "boolean", short: "m" },
      "native-aio": { type: "boolean", short: "k" },
      ...TRACE_FLAGS,
      ...TRACE_FLAGS,
      trace: { type: "string", short: "T" },
      object: { type: "string", multiple: true },
      version: { type: "boolean", short: "V" },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  if (p.values.version === true) {
    io.stdout(`${progName(io)} version 0.1.0 (blkgraph)\n`);
    return 0;
  }
  needPositionals(p.positionals, 0, 1, "at most one filename");
  const format = flagString(p.values, "format");
  const imageOpts = p.values["image-opts"] === true;
  if (format !== undefined && imageOpts) throw new CliError("--image-opts and -f are mutually exclusive");
  // -k is Linux native AIO, -i names the mode (qemu-io's bdrv_parse_aio).
  const aio = aioArg(p.values) ?? (p.values["native-aio"] === true ? "native" : undefined);
  const discard = flagString(p.values, "discard");
  if (discard !== undefined && !["ignore", "off", "unmap", "on"].includes(discard)) {
    throw new CliError(`Invalid discard option: ${discard}`);
  }
  let cache = flagString(p.values, "cache") ?? (p.values.nocache === true ? "none" : undefined);
  if (cache !== undefined) {
    try {
      parseCacheMode(cache);
    } catch {
      throw new CliError(`Invalid cache option: ${cache}`);
    }
  }
  if (p.values.nocache === true && flagString(p.values, "cache") === undefined) cache = "none";
  const s = new IoSession(io);
  s.commands = IO_COMMANDS;
  s.imageOpts = imageOpts;
  s.traceTarget = traceFlags(p.values);
  if (p.positionals.length) {
    const ok = await s.open(p.positionals[0], {
      format,
      imageOpts,
      readOnly: p.values["read-only"] === true,
      cache,
      aio,
      snapshot: p.values.snapshot === true,
      copyOnRead: p.values["copy-on-read"] === true,
      forceShare: p.values["force-share"] === true,
    });
    if (!ok) return 1;
  }
  const cmds = flagList(p.values, "cmd");
  await runSession(s, cmds.length ? cmds : undefined);
  return s.failed ? 1 : 0;
}

/** The `io` verb. */
export const ioVerb: Verb = { name: "io", summary: VERB_SUMMARIES.io, run };
