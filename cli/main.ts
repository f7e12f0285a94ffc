/**
 * The `blkgraph` command line: qemu-img's verbs and qemu-io's command
 * language on blkgraph's block layer.
 *
 * ```sh
 * deno run -A cli/main.ts info --output=json disk.qcow2
 * deno run -A cli/main.ts io -c 'write -P 0xab 0 64k' -f raw disk.img
 * ```
 *
 * @module
 */

import "../_drivers.ts";
import { closeAllNodes } from "../core/open.ts";
import { type CliIO, invokeVerb, progName, type Verb, verbTerminationHandler } from "./_common.ts";

export type { CliIO, Verb } from "./_common.ts";
import { VERBS } from "./_verbs.ts";

/** Every verb, in the order `--help` lists them; each verb's module is imported when it runs. */
export { VERBS };

/** qemu-img 7.2's verbs. */
const QEMU_IMG_NAMES = [
  "amend",
  "bench",
  "bitmap",
  "check",
  "commit",
  "compare",
  "convert",
  "create",
  "dd",
  "info",
  "map",
  "measure",
  "snapshot",
  "rebase",
  "resize",
];

/** The verbs of the `qemu-img` drop-in: qemu-img's own (not `io`, `nbd`, `demo`, `report`, `crash-explore`). */
export const QEMU_IMG_VERBS: readonly Verb[] = VERBS.filter((v) => QEMU_IMG_NAMES.includes(v.name));

function toFileUrl(path: string): string {
  const abs = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  return new URL(`file://${abs.split("/").map(encodeURIComponent).join("/")}`).href;
}

function usage(prog: string, verbs: readonly Verb[]): string {
  const width = Math.max(...verbs.map((v) => v.name.length));
  return [
    `Usage: ${prog}${prog === "blkgraph" ? " [--load MODULE]..." : ""} VERB [options] ...`,
    "",
    "A qemu-img / qemu-io work-alike on the blkgraph block layer.",
    "",
    "Verbs:",
    ...verbs.map((v) => `  ${v.name.padEnd(width)}  ${v.summary}`),
    "",
    `Run '${prog} VERB --help' for a verb's options.${prog === "blkgraph" ? " --load MODULE imports a module first" : ""}`,
    ...(prog === "blkgraph" ? ["(a driver of your own that calls registerDriver)."] : []),
    "",
  ].join("\n");
}

/**
 * Runs the command line in-process and resolves to the exit code; output
 * goes to `io` (tests collect it).
 *
 * @example
 * ```ts
 * import { main } from "@blkgraph/blkgraph/cli";
 * const code = await main(["--help"], { stdout: (s) => console.log(s), stderr: (s) => console.error(s) });
 * console.log(code); // 0
 * ```
 */
export async function main(args: string[], io: CliIO): Promise<number> {
  // `--load MODULE` (repeatable, before the verb) imports a module that registers drivers, as nbdkit loads plugins.
  while (args[0] === "--load" || args[0]?.startsWith("--load=")) {
    const spec = args[0] === "--load" ? args[1] : args[0].slice("--load=".length);
    args = args.slice(args[0] === "--load" ? 2 : 1);
    if (!spec) {
      io.stderr("blkgraph: --load needs a module path or URL\n");
      return 1;
    }
    try {
      await import(/^[a-z][a-z0-9+.-]*:/i.test(spec) ? spec : toFileUrl(spec));
    } catch (e) {
      io.stderr(`blkgraph: Could not load module '${spec}': ${(e as Error).message}\n`);
      return 1;
    }
  }
  return await dispatch(args, io, VERBS);
}

/**
 * Runs `args` against a verb table: `--help`, `--version`, then the verb
 * named by the first argument. Messages name `io.prog` (default `blkgraph`).
 *
 * @example
 * ```ts
 * import { dispatch, QEMU_IMG_VERBS } from "./main.ts";
 * const code = await dispatch(["--version"], { stdout: (s) => console.log(s), stderr: (s) => console.error(s), prog: "qemu-img" }, QEMU_IMG_VERBS);
 * console.log(code); // 0
 * ```
 */
export async function dispatch(args: string[], io: CliIO, verbs: readonly Verb[]): Promise<number> {
  const prog = progName(io);
  const [verbName, ...rest] = args;
  if (verbName === undefined || verbName === "--help" || verbName === "-h" || verbName === "help") {
    io[verbName === undefined ? "stderr" : "stdout"](usage(prog, verbs));
    return verbName === undefined ? 1 : 0;
  }
  if (verbName === "--version" || verbName === "-V") {
    io.stdout(`${prog} version 0.1.0 (blkgraph)\n`);
    return 0;
  }
  const verb = verbs.find((v) => v.name === verbName);
  if (!verb) {
    io.stderr(`${prog}: Command not found: ${verbName}\nTry '${prog} --help' for more information.\n`);
    return 1;
  }
  return await invokeVerb(verb, rest, io);
}

/** Options of {@linkcode processIO}. */
export interface ProcessIOOptions {
  /**
   * Buffer standard output as C's stdio does when it is not a terminal (a
   * 4 KiB block buffer, written when full and on `flush()`; standard error
   * is unbuffered), so output merged from both streams comes out in the
   * order qemu-img and qemu-io produce it. The drop-in entry points use it.
   */
  stdio?: boolean;
}

/** A {@linkcode CliIO} on the process's standard streams. */
export function processIO(opts: ProcessIOOptions = {}): CliIO {
  const enc = new TextEncoder();
  const write = (f: { writeSync(b: Uint8Array): number }, b: Uint8Array) => {
    for (let off = 0; off < b.length;) off += f.writeSync(b.subarray(off));
  };
  let lines: AsyncIterator<string> | undefined;
  const isTTY = Deno.stdout.isTerminal();
  const io: CliIO = {
    stdout: (s) => write(Deno.stdout, enc.encode(s)),
    stderr: (s) => write(Deno.stderr, enc.encode(s)),
    isTTY,
    async readLine() {
      lines ??= readLines(Deno.stdin.readable);
      const r = await lines.next();
      return r.done ? null : r.value;
    },
  };
  if (opts.stdio && !isTTY) {
    const BLOCK = 4096;
    const buf = new Uint8Array(BLOCK);
    let used = 0;
    const flush = () => {
      if (used) write(Deno.stdout, buf.subarray(0, used));
      used = 0;
    };
    io.stdout = (s) => {
      let b = enc.encode(s);
      // glibc's fully buffered stream: fill the buffer, write it when full,
      // write whole blocks of what is left directly, keep the rest.
      const n = Math.min(BLOCK - used, b.length);
      buf.set(b.subarray(0, n), used);
      used += n;
      b = b.subarray(n);
      if (!b.length) return;
      flush();
      const direct = b.length - (b.length % BLOCK);
      if (direct) write(Deno.stdout, b.subarray(0, direct));
      buf.set(b.subarray(direct));
      used = b.length - direct;
    };
    io.flush = flush;
  }
  return io;
}

async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of stream) {
    buf += dec.decode(chunk, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, nl);
      buf = buf.slice(nl + 1);
    }
  }
  if (buf) yield buf;
}

/**
 * Makes SIGINT and SIGTERM close every open image (caches written back and
 * flushed) before the process ends, unless a running verb took them over.
 * The entry points (blkgraph, qemu-img, qemu-io) install it.
 *
 * @example
 * ```ts
 * import { closeImagesOnSignals } from "./main.ts";
 * const remove = closeImagesOnSignals();
 * remove();
 * ```
 */
export function closeImagesOnSignals(): () => void {
  const listeners = (["SIGINT", "SIGTERM"] as const).map((sig) => {
    const code = sig === "SIGINT" ? 130 : 143;
    const fn = () => {
      const verb = verbTerminationHandler();
      if (verb) verb();
      else closeAllNodes().finally(() => Deno.exit(code));
    };
    Deno.addSignalListener(sig, fn);
    return [sig, fn] as const;
  });
  return () => {
    for (const [sig, fn] of listeners) Deno.removeSignalListener(sig, fn);
  };
}

if (import.meta.main) {
  closeImagesOnSignals();
  const code = await main(Deno.args, processIO());
  Deno.exit(code);
}
