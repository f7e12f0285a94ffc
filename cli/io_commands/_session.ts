/**
 * The state of a `blkgraph io` session (qemu-io's): the open image, the
 * requests started with `aio_*`, and the output helpers every command uses
 * (qemu-io's report line, number parsing and hexdump).
 *
 * @module
 */

import { BlockError, CorruptImageError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import { type CliIO, cvtstr } from "../_common.ts";
import { parseSize } from "../../core/options.ts";
import type { Trace, TraceTarget } from "../_trace.ts";

/** A command's parsed flags: flag letter to value (`true` for plain flags). */
export type IoFlags = Map<string, string | true>;

/** One command of the io command table. */
export interface IoCommand {
  /** Command name. */
  readonly name: string;
  /** Other names. */
  readonly altnames?: readonly string[];
  /** Argument synopsis, as qemu-io's help shows it. */
  readonly args: string;
  /** One-line description. */
  readonly oneline: string;
  /** getopt flag letters (`"CP:qv"`; a colon takes a value). */
  readonly flags?: string;
  /** Fewest operands (flags included, as qemu-io counts). */
  readonly argmin: number;
  /** Most operands (-1 = any). */
  readonly argmax: number;
  /** Needs an open image. */
  readonly needsFile?: boolean;
  /** Runs the command; throws or returns false on failure. */
  run(s: IoSession, flags: IoFlags, operands: string[]): Promise<boolean>;
}

/** How a session opens images (the `io` verb's flags). */
export interface SessionOpenOptions {
  /** Format (`-f`). */
  format?: string;
  /** Dotted options filename (`--image-opts`). */
  imageOpts?: boolean;
  /** Read-only (`-r`). */
  readOnly?: boolean;
  /** Cache mode (`-t`). */
  cache?: string;
}

/** A qemu-io session. */
export class IoSession {
  /** Where output goes. */
  readonly io: CliIO;
  /** The open image, if any. */
  node: BlockNode | undefined;
  /** Name of the open image. */
  filename = "";
  /** Requests started by aio_read/aio_write and not yet collected. */
  readonly pending: Set<Promise<void>> = new Set();
  /** A command failed (the exit code becomes 1). */
  failed = false;
  /** `quit` was given. */
  quit = false;
  /** Trace target for newly opened images (`--trace`). */
  traceTarget: TraceTarget | undefined;
  /** The trace of the open image. */
  trace: Trace | undefined;
  /** The command table (set by the io verb). */
  commands: readonly IoCommand[] = [];

  /** Creates a session writing to `io`. */
  constructor(io: CliIO) {
    this.io = io;
  }

  /** Prints text (qemu-io prints everything to stdout). */
  print(s: string): void {
    this.io.stdout(s);
  }

  /** Prints qemu-io's warning when a writable image's format was probed as raw. */
  warnIfProbed(name: string): void {
    if (!this.node?.probed || this.node.driver.name !== "raw" || this.node.readOnly) return;
    this.io.stderr(
      `WARNING: Image format was not specified for '${name}' and probing guessed raw.\n` +
        "         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n" +
        "         Specify the 'raw' format explicitly to remove the restrictions.\n",
    );
  }

  /** Waits for every aio request. */
  async drain(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending]);
  }
}

/**
 * Parses a qemu-io number (`cvtnum`): bytes with an optional b/k/M/G/T/P/E
 * suffix. Prints qemu-io's error and returns undefined when it is not one.
 */
export function cvtnum(s: IoSession, text: string): number | undefined {
  const n = /^0x[0-9a-f]+$/i.test(text) ? parseInt(text, 16) : parseSize(text);
  if (n === undefined || !Number.isSafeInteger(n)) {
    s.print(`Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}\n`);
    return undefined;
  }
  return n;
}

/** Parses a `-P` pattern byte as strtol(base 0) does (decimal, 0x hex, 0 octal). */
export function parsePattern(s: IoSession, text: string): number | undefined {
  let n: number;
  if (/^0x[0-9a-f]+$/i.test(text)) n = parseInt(text, 16);
  else if (/^0[0-7]+$/.test(text)) n = parseInt(text, 8);
  else if (/^-?\d+$/.test(text)) n = Number(text);
  else {
    s.print(`non-numeric pattern -- ${text}\n`);
    return undefined;
  }
  return n & 0xff;
}

/** qemu-io's `timestr`: "00.00 sec" under a second, "H:MM:SS.ss" above (or with -C). */
export function timestr(ms: number, fixed: boolean): string {
  const total = ms / 1000;
  const sec = Math.floor(total);
  if (!fixed && sec === 0) return `${total.toFixed(2).padStart(5, "0")} sec`;
  const h = Math.floor(sec / 3600);
  const m = Math.floor((sec % 3600) / 60);
  const secs = (sec % 60) + (total - sec);
  return `${h}:${String(m).padStart(2, "0")}:${secs.toFixed(2).padStart(5, "0")}`;
}

/** qemu-io's report after an I/O command ("wrote 512/512 bytes at offset 0" and the rate line). */
export function report(op: string, ms: number, offset: number, count: number, total: number, cnt: number, bare: boolean): string {
  const secs = Math.max(ms, 1e-6) / 1000;
  const ts = timestr(ms, bare);
  if (bare) return `${total},${cnt},${ts},${(total / secs).toFixed(3)},${(cnt / secs).toFixed(3)}\n`;
  return `${op} ${total}/${count} bytes at offset ${offset}\n${cvtstr(total)}, ${cnt} ops; ${ts} (${cvtstr(total / secs)}/sec and ${
    (cnt / secs).toFixed(4)
  } ops/sec)\n`;
}

/** qemu-io's `dump_buffer`: 16 bytes a line, hex then alphanumerics. */
export function dumpBuffer(buf: Uint8Array, offset: number): string {
  let out = "";
  for (let i = 0; i < buf.length; i += 16) {
    const row = buf.subarray(i, Math.min(buf.length, i + 16));
    let hex = "";
    let txt = "";
    for (const b of row) {
      hex += b.toString(16).padStart(2, "0") + " ";
      const alnum = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a);
      txt += alnum ? String.fromCharCode(b) : ".";
    }
    out += `${(offset + i).toString(16).padStart(8, "0")}:  ${hex} ${txt}\n`;
  }
  return out;
}

/** strerror text for a failed request ("Input/output error"). */
export function strerror(e: unknown): string {
  if (e instanceof BlockError) return e.strerror;
  return (e as Error)?.message ?? String(e);
}

/**
 * Prints qemu-io's "<what> failed: <strerror>"; a corruption also has its
 * own line on standard error, as QEMU's qcow2_signal_corruption prints it
 * ("qcow2: Marking image as corrupt: ...").
 */
export function failed(s: IoSession, what: string, e: unknown): void {
  if (e instanceof CorruptImageError) s.io.stderr(`${e.message}\n`);
  s.print(`${what} failed: ${strerror(e)}\n`);
}

/** Parses getopt-style flags from a command's words; returns null (after printing usage) on an unknown flag. */
export function getopt(s: IoSession, cmd: IoCommand, words: string[]): { flags: IoFlags; operands: string[] } | null {
  const spec = cmd.flags ?? "";
  const flags: IoFlags = new Map();
  let i = 0;
  for (; i < words.length; i++) {
    const w = words[i];
    if (w === "--") {
      i++;
      break;
    }
    if (!w.startsWith("-") || w === "-" || /^-\d/.test(w)) break;
    for (let j = 1; j < w.length; j++) {
      const c = w[j];
      const at = spec.indexOf(c);
      if (at < 0 || c === ":") {
        s.io.stderr(`${cmd.name}: invalid option -- '${c}'\n`);
        s.print(usageLine(cmd));
        return null;
      }
      if (spec[at + 1] === ":") {
        const v = j + 1 < w.length ? w.slice(j + 1) : words[++i];
        if (v === undefined) {
          s.io.stderr(`${cmd.name}: option requires an argument -- '${c}'\n`);
          s.print(usageLine(cmd));
          return null;
        }
        flags.set(c, v);
        break;
      }
      flags.set(c, true);
    }
  }
  return { flags, operands: words.slice(i) };
}

/** Prints a command's usage line and reports failure. */
export function usage(s: IoSession, cmd: IoCommand): false {
  s.print(usageLine(cmd));
  return false;
}

/** The help line of a command: "name args -- oneline". */
export function usageLine(cmd: IoCommand): string {
  return `${cmd.name} ${cmd.args} -- ${cmd.oneline}\n`;
}

/** Splits a command line into words (single and double quotes group). */
export function splitWords(line: string): string[] {
  const words: string[] = [];
  let cur = "";
  let quote = "";
  let has = false;
  for (const c of line) {
    if (quote) {
      if (c === quote) quote = "";
      else cur += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      has = true;
    } else if (c === " " || c === "\t") {
      if (has || cur) words.push(cur);
      cur = "";
      has = false;
    } else cur += c;
  }
  if (has || cur) words.push(cur);
  return words;
}
