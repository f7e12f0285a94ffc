/**
 * Shared plumbing for the `blkgraph` verbs: the output sink, argument parsing
 * with `--help`, image opening (`-f`, `--image-opts`, `json:`, dotted specs),
 * size arguments and qemu's number formats.
 *
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";
import { BlockError, CacheFlushError, onCorruption, onDriverMessage, onOpenRepair, qemuReportedLines } from "../core/errors.ts";
import type { BlockNode } from "../core/node.ts";
import { hasProtocol, open } from "../core/open.ts";
import { isAioMode, parseSize } from "../core/options.ts";
import { defineObject, removeSecret } from "../core/secrets.ts";
import { looksDotted, normaliseSpec, parseDotted } from "../core/spec.ts";
import { takeDashValues } from "./_getopt.ts";
import { mergeSpecs, withoutBacking } from "./_open_specs.ts";

export { mergeSpecs };

/** Where a verb writes its output; tests pass collecting functions. */
export interface CliIO {
  /** Writes text to standard output (no newline added). */
  stdout(s: string): void;
  /** Writes text to standard error (no newline added). */
  stderr(s: string): void;
  /** Standard output is a terminal (progress bars redraw in place). */
  isTTY?: boolean;
  /** Reads one line of input (without the newline); null at end of input. */
  readLine?(): Promise<string | null>;
  /** Writes out buffered standard output (C's fflush(stdout)); absent when stdout is not buffered. */
  flush?(): void;
  /**
   * Program name that prefixes error messages (`blkgraph`, or `qemu-img` /
   * `qemu-io` for the drop-in entry points). Default `blkgraph`.
   */
  prog?: string;
}

/** The program name errors are prefixed with (`io.prog`, default `blkgraph`). */
export function progName(io: CliIO): string {
  return io.prog ?? "blkgraph";
}

/** Why an open failed, for `io`: QEMU's words in the drop-ins, blkgraph's otherwise. */
export function openReason(e: unknown, io: CliIO): string {
  if (e instanceof OpenError) return io.prog !== undefined ? e.qemuReason : e.reason;
  return errorText(e, io);
}

/** An error's text for `io`: QEMU's words in the drop-in qemu-img and qemu-io ({@linkcode BlockError.qemuMessage}), blkgraph's own otherwise. */
export function errorText(e: unknown, io: CliIO): string {
  if (io.prog !== undefined && (e instanceof BlockError || e instanceof CliError)) return e.qemuMessage;
  return e instanceof Error ? e.message : String(e);
}

/** One verb of the command line. */
export interface Verb {
  /** Name on the command line (`info`, `check`). */
  readonly name: string;
  /** One-line description for `blkgraph --help`. */
  readonly summary: string;
  /** Runs the verb and resolves to its exit code. */
  run(args: string[], io: CliIO): Promise<number>;
}

/**
 * An error the CLI reports as `PROG: <message>` with an exit code. Its
 * `cause` (the block layer's error it reports) carries what QEMU's driver
 * would have printed first: the drop-ins print the chain's
 * {@linkcode qemuReportedLines} before the message.
 */
export class CliError extends Error {
  /** Exit code to return. */
  readonly exitCode: number;
  /** The message in QEMU's words, where it differs (the drop-ins print it; see BlockError.qemuMessage). */
  readonly qemuMessage: string;
  /** Creates an error with a message, an exit code (default 1), QEMU's words for it (default: the message) and a cause. */
  constructor(message: string, exitCode = 1, qemuMessage?: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "CliError";
    this.exitCode = exitCode;
    this.qemuMessage = qemuMessage ?? message;
  }
}

/** Option table as `node:util` parseArgs takes it. */
export type OptionTable = NonNullable<ParseArgsConfig["options"]>;

/** Parsed flags: strings, booleans or (for `multiple`) arrays of them. */
export type Flags = Record<string, string | boolean | (string | boolean)[] | undefined>;

/** Result of {@linkcode parseVerbArgs}: flags and positionals, or null after `--help`. */
export interface ParsedArgs {
  /** Option values by long name. */
  values: Flags;
  /** Positional arguments. */
  positionals: string[];
}

/**
 * Parses a verb's arguments; prints `usage` and returns null for `-h/--help`.
 * Unknown or malformed options are a {@linkcode CliError} naming the option.
 */
export function parseVerbArgs(args: string[], options: OptionTable, usage: string, io: CliIO): ParsedArgs | null {
  let parsed;
  // `--trace` alone means "trace to stdout"; parseArgs needs a value for it.
  args = takeDashValues(args.map((a) => (a === "--trace" ? "--trace=-" : a)), options);
  try {
    parsed = parseArgs({ args, options: { help: { type: "boolean", short: "h" }, ...options }, allowPositionals: true, strict: true });
  } catch (e) {
    throw new CliError(`${(e as Error).message.replace(/\. To specify.*$/s, "")}\nTry '--help' for more information.`);
  }
  if (parsed.values.help) {
    io.stdout(usage.endsWith("\n") ? usage : usage + "\n");
    return null;
  }
  const values = parsed.values as Flags;
  applyObjects(flagList(values, "object"));
  return { values, positionals: parsed.positionals };
}

/** Ids of the objects `--object` defined during the verb now running (removed when it ends). */
const verbObjects: string[] = [];
/** Object types a verb defines itself (nbd: `tls-creds-x509`). */
const verbObjectTypes = new Set<string>();

/** Declares an `--object` type that the verb handling it defines itself; the common `--object` handling leaves it alone. */
export function verbObjectType(type: string): void {
  verbObjectTypes.add(type);
}

/**
 * Defines QEMU objects given with `--object` (secrets: `secret,id=sec0,data=...`)
 * before any image is opened; {@linkcode invokeVerb} removes them when the
 * verb ends, so in-process runs do not leak secrets into each other.
 */
export function applyObjects(args: readonly string[]): void {
  for (const a of args) {
    const type = /^(?:qom-type=)?([^,=]+)(?:,|$)/.exec(a)?.[1] ?? /(?:^|,)qom-type=([^,]+)/.exec(a)?.[1];
    if (type !== undefined && verbObjectTypes.has(type)) continue;
    try {
      verbObjects.push(defineObject(a));
    } catch (e) {
      throw new CliError(errorMessage(e));
    }
  }
}

/** Reads a string flag (the last one when repeated). */
export function flagString(values: Flags, name: string): string | undefined {
  const v = values[name];
  if (Array.isArray(v)) return v.length ? String(v[v.length - 1]) : undefined;
  return typeof v === "string" ? v : undefined;
}

/** Reads a repeatable string flag as a list. */
export function flagList(values: Flags, name: string): string[] {
  const v = values[name];
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).map(String);
}

/** Parses a size argument with k/M/G/T suffixes; a clear error otherwise. */
export function sizeArg(text: string, what = "size"): number {
  const n = parseSize(text);
  if (n === undefined) {
    throw new CliError(`Invalid ${what} '${text}': expected a number with an optional k, M, G, T, P or E suffix`);
  }
  return n;
}

/** Parses an integer argument (decimal or 0x hex). */
export function intArg(text: string, what: string): number {
  const n = /^0x[0-9a-f]+$/i.test(text) ? parseInt(text, 16) : /^-?\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n)) throw new CliError(`Invalid ${what} '${text}': expected an integer`);
  return n;
}

/** How to open an image from the command line. */
export interface ImageArgs {
  /** Format (`-f`); probed when absent. */
  format?: string;
  /** The filename is a dotted option string (`--image-opts`). */
  imageOpts?: boolean;
  /** Open read-only. */
  readOnly?: boolean;
  /** Cache mode (`-t`). */
  cache?: string;
  /** AIO mode of the whole graph (`-i`: threads, native, io_uring). */
  aio?: string;
  /** Do not open the backing chain of a plain filename (qemu-img info's BDRV_O_NO_BACKING). */
  noBacking?: boolean;
  /** `-U`: open read-only even while another process writes the image. */
  forceShare?: boolean;
  /** Open for a consistency check (qemu-img check). */
  check?: boolean;
  /** Snapshot mode: writes go to a temporary overlay (qemu-io `-s`). */
  snapshot?: boolean;
  /** Copy-on-read filter on top (qemu-io `-C`). */
  copyOnRead?: boolean;
  /** Node options merged with a plain filename (qemu-io `open -o`); with no filename they are the whole spec. */
  options?: Record<string, unknown>;
  /** More options for the image's top node, whatever form names it (`snapshot.id` for convert -l). */
  formatOptions?: Record<string, unknown>;
  /** Only describe the image (qemu-img info's BDRV_O_NO_IO): an encrypted image opens without its key. */
  noIo?: boolean;
  /** More options for the format node of a plain filename (convert passes the target's `key-secret`). */
  extra?: Record<string, string>;
}

/**
 * The image named on the command line could not be opened. The message is
 * qemu-img's ("Could not open 'NAME': REASON"); qemu-io prints
 * "can't open device NAME: REASON" from the parts.
 */
export class OpenError extends CliError {
  /** The name as given (undefined for options without a filename). */
  readonly filename: string | undefined;
  /** Why the open failed (the block layer's message). */
  readonly reason: string;
  /** Why, in QEMU's words (the block layer's `qemuMessage`): what the drop-ins print. */
  readonly qemuReason: string;
  /** The block layer's error. */
  override readonly cause: unknown;
  /** Creates the error for `filename` failing with `cause`. */
  constructor(filename: string | undefined, cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    const say = (why: string) => filename === undefined ? `Could not open image: ${why}` : `Could not open '${filename}': ${why}`;
    super(say(reason), 1, cause instanceof BlockError ? say(cause.qemuMessage) : undefined);
    this.filename = filename;
    this.reason = reason;
    this.qemuReason = cause instanceof BlockError ? cause.qemuMessage : reason;
    this.cause = cause;
  }
}

/**
 * Opens an image named on the command line: a filename (format from `-f` or
 * probed), a `json:{...}` filename, a dotted spec, or (with `--image-opts`)
 * dotted options.
 */
export async function openImage(filename: string | undefined, opts: ImageArgs = {}): Promise<BlockNode> {
  const cache = opts.cache;
  // -U only means something for read-only opens (qemu-img refuses it on writes).
  const forceShare = (opts.forceShare ?? false) && (opts.readOnly ?? false);
  const noIo = opts.noIo;
  if (opts.imageOpts && opts.format) throw new CliError("--image-opts and --format are mutually exclusive");
  const how = {
    readOnly: opts.readOnly,
    cache,
    aio: opts.aio,
    forceShare,
    check: opts.check,
    snapshot: opts.snapshot,
    copyOnRead: opts.copyOnRead,
    noIo,
  };
  const top = opts.formatOptions;
  try {
    if (filename === undefined) return await open(opts.options ?? {}, how);
    // BDRV_O_NO_BACKING holds for options too: the format node gets `backing: null` unless they name one.
    const noBacking = (spec: Record<string, unknown>) => opts.noBacking ? withoutBacking(spec) : spec;
    if (opts.imageOpts || looksDotted(filename)) {
      const spec = normaliseSpec(filename.startsWith("json:") ? filename : parseDotted(filename));
      return await open(noBacking(top ? { ...spec, ...top } : spec), how);
    }
    if (filename.startsWith("json:")) {
      // json: options merged with the ones given beside it; those win (QEMU's qdict_join without overwrite).
      const spec = opts.options ? mergeSpecs(normaliseSpec(filename), opts.options) : normaliseSpec(filename);
      return await open(noBacking(top ? { ...spec, ...top } : spec), how);
    }
    const given = { ...opts.options, ...(opts.noBacking ? { backing: null } : {}), ...opts.extra, ...top };
    const spec = Object.keys(given).length ? { ...given, filename } : filename;
    return await open(spec, { ...how, format: opts.format });
  } catch (e) {
    throw new OpenError(filename, e);
  }
}

/** Standard image flags every verb accepts (`-f`, `--image-opts`, `-U`, `-t`, `-T`). */
export const IMAGE_FLAGS: OptionTable = {
  format: { type: "string", short: "f" },
  "image-opts": { type: "boolean" },
  "force-share": { type: "boolean", short: "U" },
  cache: { type: "string", short: "t" },
  "src-cache": { type: "string", short: "T" },
  quiet: { type: "boolean", short: "q" },
  "object": { type: "string", multiple: true },
};

/** Reads `-f`/`--image-opts`/`-t` from parsed flags. */
export function imageArgs(values: Flags, readOnly: boolean): ImageArgs {
  return {
    format: flagString(values, "format"),
    imageOpts: values["image-opts"] === true,
    readOnly,
    cache: flagString(values, "cache"),
    aio: aioArg(values),
    forceShare: values["force-share"] === true,
  };
}

/** `-i` (a verb that has it: bench, qemu-io): the graph's AIO mode, checked as qemu-img's bdrv_parse_aio. */
export function aioArg(values: Flags): string | undefined {
  const aio = flagString(values, "aio");
  if (aio !== undefined && !isAioMode(aio)) throw new CliError(`Invalid aio option: ${aio}`);
  return aio;
}

/** Requires between `min` and `max` positional arguments; `what` names them in the error. */
export function needPositionals(positionals: string[], min: number, max: number, what: string): void {
  if (positionals.length < min) throw new CliError(`Expecting ${what}\nTry '--help' for more information.`);
  if (positionals.length > max) throw new CliError(`Unexpected argument '${positionals[max]}'\nTry '--help' for more information.`);
}

/**
 * The path of backing file `backing` named in image `overlay` (QEMU's
 * bdrv_get_full_backing_filename_from_filename): a protocol name or an
 * absolute path as is, otherwise relative to the overlay's directory.
 *
 * @example
 * ```ts
 * import { resolveBackingPath } from "./_common.ts";
 * console.log(resolveBackingPath("/img/top.qcow2", "./image:base.qcow2")); // /img/./image:base.qcow2
 * ```
 */
export function resolveBackingPath(overlay: string, backing: string): string {
  if (backing.startsWith("/") || hasProtocol(backing) || !overlay.includes("/")) return backing;
  return overlay.slice(0, overlay.lastIndexOf("/") + 1) + backing;
}

/** `--output` must be `human` or `json` (qemu-img's message otherwise). */
export function checkOutputFormat(values: Flags): void {
  const o = flagString(values, "output");
  if (o !== undefined && o !== "human" && o !== "json") {
    throw new CliError(`--output must be used with human or json as argument.`);
  }
}

const UNITS = ["", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/** qemu's `size_to_str`: three significant digits and a binary unit ("64 MiB", "1.5 KiB"). */
export function sizeToStr(n: number): string {
  let i = 0;
  // frexp(val / (1000/1024)) picks the unit so the shown value stays below 1000.
  while (i < UNITS.length - 1 && n / (1000 / 1024) >= 2 ** (10 * (i + 1))) i++;
  const v = n / 2 ** (10 * i);
  let s = Number(v.toPrecision(3)).toString();
  if (s.includes("e")) s = v.toFixed(0);
  return `${s} ${UNITS[i] || "B"}`;
}

/**
 * printf's `%.Nf`: like `toFixed`, but an exact tie rounds to even as glibc
 * does (1.0625 → "1.062"), where `toFixed` rounds it up.
 */
export function cFixed(x: number, digits: number): string {
  const scale = 10 ** digits;
  const scaled = x * scale;
  if (Number.isSafeInteger(Math.floor(scaled)) && scaled - Math.floor(scaled) === 0.5 && scaled / scale === x) {
    const lo = Math.floor(scaled);
    return ((lo % 2 === 0 ? lo : lo + 1) / scale).toFixed(digits);
  }
  return x.toFixed(digits);
}

/** qemu-io's `cvtstr`: "64 KiB", "1.500 KiB", "4.001 GiB", "435.791371 bytes" (%.3f with a unit, %f without; ".000" dropped). */
export function cvtstr(value: number): string {
  const units: [number, string][] = [[2 ** 60, " EiB"], [2 ** 50, " PiB"], [2 ** 40, " TiB"], [2 ** 30, " GiB"], [2 ** 20, " MiB"], [
    2 ** 10,
    " KiB",
  ]];
  let str = "";
  let suffix = " bytes";
  for (const [div, sfx] of units) {
    if (value >= div) {
      str = cFixed(value / div, 3);
      suffix = sfx;
      break;
    }
  }
  if (!str) str = cFixed(value, 6);
  const trim = str.indexOf(".000");
  return (trim >= 0 ? str.slice(0, trim) : str) + suffix;
}

/** Formats an error for the user: the message of a BlockError or CliError. */
export function errorMessage(e: unknown): string {
  if (e instanceof BlockError || e instanceof CliError) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}

/** Collects every node of a graph (each once), top first. */
export function graphNodes(top: BlockNode): BlockNode[] {
  const seen = new Set<BlockNode>();
  const walk = (n: BlockNode) => {
    if (seen.has(n)) return;
    seen.add(n);
    for (const c of n.children.values()) walk(c);
  };
  walk(top);
  return [...seen];
}

/** The format node a user means: the top node, below any filters. */
export function formatNode(top: BlockNode): BlockNode {
  return top.formatNode;
}

/** The protocol node holding the image's bytes (first `file` chain leaf). */
export function protocolNode(top: BlockNode): BlockNode {
  let n = top;
  while (n.driver.kind !== "protocol") {
    const c = n.primaryChild;
    if (!c) break;
    n = c;
  }
  return n;
}

export { isZero } from "../core/_bytes.ts";

let terminationHandler: (() => void) | undefined;

/**
 * Lets a verb take over SIGINT/SIGTERM while it runs (the nbd server shuts
 * down gracefully and exits 0, as qemu-nbd); otherwise the CLI closes every
 * open image and exits 130/143. Returns a function that gives them back.
 */
export function handleTermination(fn: () => void): () => void {
  terminationHandler = fn;
  return () => {
    if (terminationHandler === fn) terminationHandler = undefined;
  };
}

/** The verb's termination handler, if one took over. */
export function verbTerminationHandler(): (() => void) | undefined {
  return terminationHandler;
}

/** Runs a verb, turning a thrown error into `PROG: <message>` on stderr and an exit code. */
export async function invokeVerb(verb: Verb, args: string[], io: CliIO): Promise<number> {
  // A driver marking an image corrupt is announced as QEMU does (no program prefix).
  const stopCorruption = onCorruption((r) =>
    io.stderr(`${r.format}: Marking image as corrupt: ${r.message}; further corruption events will be suppressed\n`)
  );
  // So is the repair of a dirty image at open (its check's lines).
  const stopRepair = onOpenRepair((r) => io.stderr(`${r.message}\n`));
  // And the errors a driver goes past (a cluster it could not free).
  const stopMessages = onDriverMessage((m) => io.stderr(`${m.message}\n`));
  const stop = () => {
    stopCorruption();
    stopRepair();
    stopMessages();
  };
  const objectsBefore = verbObjects.length;
  try {
    return await verb.run(args, io);
  } catch (e) {
    // What QEMU's drivers print with error_report on the way to the error comes first in the drop-ins, innermost first.
    // Caches that failed at close are only such lines (one each, as QEMU's qcow2_inactivate prints them).
    const drop = io.prog !== undefined;
    const lines = [...(drop ? qemuReportedLines(e) : []), ...(drop && e instanceof CacheFlushError ? [] : [errorText(e, io)])];
    for (const line of lines) io.stderr(`${progName(io)}: ${line}\n`);
    return e instanceof CliError ? e.exitCode : 1;
  } finally {
    stop();
    for (const id of verbObjects.splice(objectsBefore)) removeSecret(id);
  }
}
