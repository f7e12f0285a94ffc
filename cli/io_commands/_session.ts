/**
 * The state of a `blkgraph io` session (qemu-io's): the open image, the
 * requests started with `aio_*`, and the output helpers every command uses
 * (qemu-io's report line, number parsing and hexdump).
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import { type CliIO, cvtstr, openImage, openReason } from "../_common.ts";
import { optBool, parseSize } from "../../core/options.ts";
import { startTrace, type Trace, type TraceTarget } from "../_trace.ts";

/** A command's parsed flags: flag letter to its last value (`true` for plain flags), and every flag in order. */
export class IoFlags extends Map<string, string | true> {
  /** Every flag as given, repeats included (`reopen -o a -o b`). */
  readonly list: [string, string | true][] = [];
}

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
  /** Needs a writable image (qemu-io's BLK_PERM_WRITE): refused with "Block node is read-only" otherwise. */
  readonly write?: boolean;
  /** Runs the command; throws or returns false on failure. */
  run(s: IoSession, flags: IoFlags, operands: string[]): Promise<boolean>;
}

/** How a session opens images (the `io` verb's flags, `open`'s and `reopen`'s). */
export interface SessionOpenOptions {
  /** Format (`-f`). */
  format?: string;
  /** The name is a dotted options string (`--image-opts`). */
  imageOpts?: boolean;
  /** Read-only (`-r`). */
  readOnly?: boolean;
  /** Cache mode (`-t`; qemu-io's default is writethrough). */
  cache?: string;
  /** AIO mode of the graph (`-i`, `-k`: native). */
  aio?: string;
  /** Snapshot mode (`-s`): writes go to a temporary overlay. */
  snapshot?: boolean;
  /** Copy-on-read (`-C`). */
  copyOnRead?: boolean;
  /** Force-share (`-U`). */
  forceShare?: boolean;
  /** Node options (`open -o`), merged with the filename. */
  options?: Record<string, unknown>;
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
  /** How the open image was opened (what `reopen` starts from). */
  opened: { name: string | undefined; opts: SessionOpenOptions } | undefined;
  /** `--image-opts`: an `open` operand is an option string. */
  imageOpts = false;

  /** Creates a session writing to `io`. */
  constructor(io: CliIO) {
    this.io = io;
  }

  /** Prints text (qemu-io prints everything to stdout). */
  print(s: string): void {
    this.io.stdout(s);
  }

  /** Prints an error as qemu-io's error_report does: `PROG: message` on stderr. */
  report(message: string): void {
    this.io.stderr(`${this.io.prog ?? "blkgraph"}: ${message}\n`);
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

  /**
   * Opens an image as qemu-io's `openfile` does; prints "can't open device
   * NAME: REASON" and returns false when it fails. qemu-io's default cache
   * mode is writethrough.
   */
  async open(name: string | undefined, opts: SessionOpenOptions, reopening = false): Promise<boolean> {
    if (this.node) {
      this.report("file open already, try 'help close'");
      return false;
    }
    let options = opts.options;
    if (opts.forceShare && !opts.readOnly) {
      const shown = opts.imageOpts ? undefined : name;
      this.report(`can't open${shown === undefined ? "" : ` device ${shown}`}: force-share=on can only be used with read-only images`);
      return false;
    }
    if (opts.forceShare) {
      const given = options?.["force-share"];
      if (given !== undefined && optBool({ v: given }, "v", "") !== true) {
        this.report("-U conflicts with image options");
        return false;
      }
      options = { ...options, "force-share": "on" };
    }
    try {
      this.node = await openImage(name, {
        format: opts.format,
        imageOpts: opts.imageOpts,
        readOnly: opts.readOnly,
        cache: opts.cache ?? "writethrough",
        aio: opts.aio,
        snapshot: opts.snapshot,
        copyOnRead: opts.copyOnRead,
        forceShare: opts.forceShare,
        options,
      });
    } catch (e) {
      const reason = openReason(e, this.io);
      const shown = opts.imageOpts ? undefined : name;
      this.report(`can't open${shown === undefined ? "" : ` device ${shown}`}: ${reason}`);
      return false;
    }
    this.filename = name ?? "";
    this.opened = { name, opts };
    if (name !== undefined && !reopening) this.warnIfProbed(name);
    if (this.traceTarget !== undefined) this.trace = startTrace(this.node, { ...this.traceTarget, io: this.io });
    return true;
  }

  /** Waits for the aio requests, stops the trace and closes the open image. */
  async closeImage(): Promise<void> {
    await this.drain();
    this.trace?.stop();
    this.trace = undefined;
    const n = this.node;
    this.node = undefined;
    await n?.close();
  }

  /** Waits for every aio request. */
  async drain(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending]);
  }
}

/** Largest request qemu-io issues (QEMU's BDRV_REQUEST_MAX_BYTES). */
export const REQUEST_MAX_BYTES = 2147483136;

/**
 * Parses a qemu-io number (`cvtnum`): bytes with an optional b/k/M/G/T/P/E
 * suffix. Prints qemu-io's error and returns undefined when it is not one.
 */
export function cvtnum(s: IoSession, text: string): number | undefined {
  const hex = /^0x[0-9a-f]+$/i.test(text);
  const n = hex ? parseInt(text, 16) : parseSize(text);
  if (n === undefined) {
    // A well-formed number that does not fit is ERANGE, as qemu_strtosz.
    const big = hex || /^\d+(\.\d+)?[bkmgtpe]?$/i.test(text);
    s.print(
      big
        ? `Parsing error: argument too large -- ${text}\n`
        : `Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}\n`,
    );
    return undefined;
  }
  if (!Number.isSafeInteger(n)) {
    s.print(`Parsing error: argument too large -- ${text}\n`);
    return undefined;
  }
  return n;
}

/**
 * Parses a `-P` pattern byte as qemu-io does (strtol base 0: decimal, 0x hex,
 * 0 octal; the whole argument, 0..255). Prints "X is not a valid pattern
 * byte" and returns undefined otherwise (`-1`, `0x1ff`, `12ab`).
 */
export function parsePattern(s: IoSession, text: string): number | undefined {
  // strtol leaves an empty string unparsed with nothing after it: pattern 0.
  const m = /^[ \t\n]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  let n = text === "" ? 0 : NaN;
  if (m) {
    const digits = m[2];
    n = /^0[xX]/.test(digits) ? parseInt(digits, 16) : digits.startsWith("0") ? parseInt(digits, 8) : Number(digits);
    if (m[1] === "-") n = -n;
  }
  if (!(n >= 0 && n <= 255)) {
    s.print(`${text} is not a valid pattern byte\n`);
    return undefined;
  }
  return n;
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
  const text = (e as { strerror?: unknown })?.strerror;
  if (typeof text === "string") return text;
  return (e as Error)?.message ?? String(e);
}

/**
 * Prints qemu-io's "<what> failed: <strerror>". A corruption has its own
 * line on standard error, printed once when the image is marked corrupt, as
 * QEMU's qcow2_signal_corruption prints it ("qcow2: Marking image as
 * corrupt: ...").
 */
export function failed(s: IoSession, what: string, e: unknown): void {
  // The corruption line itself is printed when the driver marks the image
  // corrupt (invokeVerb's onCorruption), once, as QEMU prints it.
  s.print(`${what} failed: ${strerror(e)}\n`);
}

/**
 * Parses a command's flags as glibc's getopt does for qemu-io: flags may
 * come before or after the operands (`read 0 512 -P 1`), `--` ends them, and
 * a word such as `-1` is a flag too. Returns null (after printing the usage)
 * on an unknown flag or a missing value.
 */
export function getopt(s: IoSession, cmd: IoCommand, words: string[]): { flags: IoFlags; operands: string[] } | null {
  const spec = cmd.flags ?? "";
  const flags = new IoFlags();
  const operands: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    if (w === "--") {
      operands.push(...words.slice(i + 1));
      break;
    }
    if (!w.startsWith("-") || w === "-") {
      operands.push(w);
      continue;
    }
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
        flags.list.push([c, v]);
        break;
      }
      flags.set(c, true);
      flags.list.push([c, true]);
    }
  }
  return { flags, operands };
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

/**
 * Splits a command line into words as qemu-io's breakline does: at spaces
 * only, empty words dropped; quotes are ordinary characters (so
 * `open -o driver=qcow2 json:{"file.filename":"x"}` keeps its JSON).
 */
export function splitWords(line: string): string[] {
  return line.split(" ").filter((w) => w !== "");
}
