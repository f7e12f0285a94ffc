/**
 * `--trace` for the CLI: prints every BLKDBG event and flush of every node of
 * a graph as it happens, writes them as JSON lines to a file, or (with
 * `--trace-format=chrome`) writes the Chrome/Perfetto trace-event JSON of
 * every request, event, flush, throttle wait and injected error. Verbs take
 * {@linkcode TRACE_FLAGS}, read them with {@linkcode traceFlags} and call
 * {@linkcode startTrace} on the nodes they open.
 *
 * @module
 */

import type { BlockNode, NodeEvent } from "../core/node.ts";
import { CliError, type CliIO, type Flags, flagString, graphNodes, type OptionTable } from "./_common.ts";
import { traceTo } from "./_trace_events.ts";

/** A running trace; `stop()` detaches it and closes the file. */
export interface Trace {
  /** Events seen so far. */
  readonly count: number;
  /** Detaches the listeners and closes the trace file. */
  stop(): void;
}

/** How events are written: readable lines, JSON lines, or Chrome trace-event JSON. */
export type TraceFormat = "text" | "json" | "chrome";

/** Where and how to trace, from `--trace[=FILE]` and `--trace-format`. */
export interface TraceTarget {
  /** `true` for standard output, else a filename. */
  target: string | true;
  /** The format (default: text on standard output, JSON lines in a file). */
  format: TraceFormat;
}

/** The `--trace` and `--trace-format` options, for a verb's option table. */
export const TRACE_FLAGS: OptionTable = {
  trace: { type: "string" },
  "trace-format": { type: "string" },
};

/** Formats one node event as a human-readable trace line. */
export function formatTraceLine(e: NodeEvent, t0: number): string {
  const what = e.kind === "blkdbg"
    ? e.event
    : e.kind === "inject"
    ? `inject ${e.code}`
    : e.kind === "throttle"
    ? `throttle ${e.phase}`
    : e.kind;
  const r = e.req;
  const req = r ? ` req=${r.id} ${r.op} ${r.offset}+${r.length}` : "";
  const node = `${e.node.driver.name} ${e.node.name}`;
  return `[${(e.time - t0).toFixed(3).padStart(9)} ms] ${node.padEnd(18)} ${what.padEnd(22)}${req}\n`;
}

/** Formats one node event as a JSON object (one line). */
export function traceJson(e: NodeEvent, t0: number): string {
  const r = e.req;
  return JSON.stringify({
    t: Number((e.time - t0).toFixed(3)),
    kind: e.kind,
    event: e.kind === "blkdbg" ? e.event : e.kind === "inject" ? `inject ${e.code}` : e.kind,
    node: e.node.name,
    driver: e.node.driver.name,
    req: r ? { id: r.id, op: r.op, offset: r.offset, length: r.length } : undefined,
  }) + "\n";
}

/** A trace file written synchronously (Deno's own file API: node:fs would cost every CLI run its load time). */
interface TraceFile {
  write(text: string): void;
  close(): void;
}

function openTraceFile(target: string): TraceFile {
  let f: Deno.FsFile;
  try {
    f = Deno.openSync(target, { write: true, create: true, truncate: true });
  } catch (e) {
    throw new CliError(`Cannot open trace file '${target}': ${(e as Error).message}`);
  }
  const enc = new TextEncoder();
  return {
    write(text) {
      const b = enc.encode(text);
      for (let at = 0; at < b.length;) at += f.writeSync(b.subarray(at));
    },
    close: () => f.close(),
  };
}

/**
 * Starts tracing every node of the graphs under `nodes` (the text and JSON
 * lines formats leave request begin/end out, as before request spans
 * existed; the Chrome format has them all).
 */
export function startTrace(nodes: BlockNode | readonly BlockNode[], opts: TraceTarget & { io: CliIO }): Trace {
  const { target, format, io } = opts;
  const tops = Array.isArray(nodes) ? nodes : [nodes as BlockNode];
  if (format === "chrome") {
    if (target === true) throw new CliError("--trace-format=chrome needs a file: give --trace=FILE");
    let fd: TraceFile | undefined = openTraceFile(target);
    const tracer = traceTo(tops, (text) => fd!.write(text));
    return {
      get count() {
        return tracer.events;
      },
      stop() {
        if (fd === undefined) return;
        tracer.stop();
        fd.close();
        fd = undefined;
      },
    };
  }
  const t0 = performance.now();
  let fd = target === true ? undefined : openTraceFile(target);
  const json = format === "json";
  let count = 0;
  const listener = (e: NodeEvent) => {
    if (e.kind === "request") return;
    count++;
    const line = json ? traceJson(e, t0) : formatTraceLine(e, t0);
    if (fd !== undefined) fd.write(line);
    else io.stdout(line);
  };
  const all = new Set(tops.flatMap((t) => graphNodes(t)));
  const removers = [...all].map((n) => n.addListener(listener));
  return {
    get count() {
      return count;
    },
    stop() {
      for (const r of removers) r();
      if (fd !== undefined) fd.close();
      fd = undefined;
    },
  };
}

/** Reads a `--trace[=FILE]` flag value: undefined (off), true (stdout) or a filename. */
export function traceTarget(v: string | boolean | (string | boolean)[] | undefined): string | true | undefined {
  if (Array.isArray(v)) v = v[v.length - 1];
  if (v === undefined || v === false) return undefined;
  if (v === true || v === "" || v === "-") return true;
  return v;
}

/** Reads `--trace` and `--trace-format`; undefined when tracing is off. A format without `--trace` is an error. */
export function traceFlags(values: Flags): TraceTarget | undefined {
  const target = traceTarget(values.trace);
  const f = flagString(values, "trace-format");
  if (f !== undefined && f !== "text" && f !== "json" && f !== "chrome") {
    throw new CliError(`Invalid --trace-format '${f}': expected text, json or chrome`);
  }
  if (target === undefined) {
    if (f !== undefined) throw new CliError(`--trace-format=${f} needs --trace=FILE`);
    return undefined;
  }
  if (f === "chrome" && target === true) throw new CliError("--trace-format=chrome needs a file: give --trace=FILE");
  return { target, format: f ?? (target === true ? "text" : "json") };
}
