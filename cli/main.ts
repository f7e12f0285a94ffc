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

import "../mod.ts";
import { closeAllNodes } from "../core/open.ts";
import { type CliIO, invokeVerb, type Verb, verbTerminationHandler } from "./_common.ts";

export type { CliIO, Verb } from "./_common.ts";
import { benchVerb } from "./bench.ts";
import { checkVerb } from "./check.ts";
import { compareVerb } from "./compare.ts";
import { convertVerb } from "./convert.ts";
import { createVerb } from "./create.ts";
import { demoVerb } from "./demo.ts";
import { infoVerb } from "./info.ts";
import { ioVerb } from "./io.ts";
import { mapVerb } from "./map.ts";
import { measureVerb } from "./measure.ts";
import { nbdVerb } from "./nbd.ts";
import { rebaseVerb } from "./rebase.ts";
import { resizeVerb } from "./resize.ts";
import { snapshotVerb } from "./snapshot.ts";
import { amendVerb } from "./amend.ts";
import { commitVerb } from "./commit.ts";
import { reportVerb } from "./report.ts";
import { crashExploreVerb } from "./crash_explore.ts";

/** Every verb, in the order `--help` lists them. */
export const VERBS: readonly Verb[] = [
  amendVerb,
  benchVerb,
  checkVerb,
  commitVerb,
  compareVerb,
  convertVerb,
  crashExploreVerb,
  createVerb,
  infoVerb,
  mapVerb,
  measureVerb,
  nbdVerb,
  rebaseVerb,
  reportVerb,
  resizeVerb,
  snapshotVerb,
  ioVerb,
  demoVerb,
];

function toFileUrl(path: string): string {
  const abs = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  return new URL(`file://${abs.split("/").map(encodeURIComponent).join("/")}`).href;
}

function usage(): string {
  const width = Math.max(...VERBS.map((v) => v.name.length));
  return [
    "Usage: blkgraph [--load MODULE]... VERB [options] ...",
    "",
    "A qemu-img / qemu-io work-alike on the blkgraph block layer.",
    "",
    "Verbs:",
    ...VERBS.map((v) => `  ${v.name.padEnd(width)}  ${v.summary}`),
    "",
    "Run 'blkgraph VERB --help' for a verb's options. --load MODULE imports a module first",
    "(a driver of your own that calls registerDriver).",
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
  const [verbName, ...rest] = args;
  if (verbName === undefined || verbName === "--help" || verbName === "-h" || verbName === "help") {
    io[verbName === undefined ? "stderr" : "stdout"](usage());
    return verbName === undefined ? 1 : 0;
  }
  if (verbName === "--version" || verbName === "-V") {
    io.stdout("blkgraph version 0.1.0\n");
    return 0;
  }
  const verb = VERBS.find((v) => v.name === verbName);
  if (!verb) {
    io.stderr(`blkgraph: Command not found: ${verbName}\nTry 'blkgraph --help' for more information.\n`);
    return 1;
  }
  return await invokeVerb(verb, rest, io);
}

/** A {@linkcode CliIO} on the process's standard streams. */
export function processIO(): CliIO {
  const enc = new TextEncoder();
  const write = (f: { writeSync(b: Uint8Array): number }, s: string) => {
    const b = enc.encode(s);
    for (let off = 0; off < b.length;) off += f.writeSync(b.subarray(off));
  };
  let lines: AsyncIterator<string> | undefined;
  return {
    stdout: (s) => write(Deno.stdout, s),
    stderr: (s) => write(Deno.stderr, s),
    isTTY: Deno.stdout.isTerminal(),
    async readLine() {
      lines ??= readLines(Deno.stdin.readable);
      const r = await lines.next();
      return r.done ? null : r.value;
    },
  };
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

if (import.meta.main) {
  // SIGINT and SIGTERM close every open image (caches written back and flushed) before the process ends.
  for (const [sig, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
    Deno.addSignalListener(sig, () => {
      const verb = verbTerminationHandler();
      if (verb) verb();
      else closeAllNodes().finally(() => Deno.exit(code));
    });
  }
  const code = await main(Deno.args, processIO());
  Deno.exit(code);
}
