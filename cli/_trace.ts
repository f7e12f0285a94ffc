/**
 * `--trace` for the CLI: prints every BLKDBG event and flush of every node of
 * a graph as it happens, or writes them as JSON lines to a file.
 *
 * @module
 */

import * as fs from "node:fs";
import type { BlockNode, NodeEvent } from "../core/node.ts";
import { CliError, type CliIO, graphNodes } from "./_common.ts";

/** A running trace; `stop()` detaches it and closes the file. */
export interface Trace {
  /** Events seen so far. */
  readonly count: number;
  /** Detaches the listeners and closes the trace file. */
  stop(): void;
}

/** Formats one node event as a human-readable trace line. */
export function formatTraceLine(e: NodeEvent, t0: number): string {
  const what = e.kind === "blkdbg" ? e.event : "flush";
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
    event: e.kind === "blkdbg" ? e.event : "flush",
    node: e.node.name,
    driver: e.node.driver.name,
    req: r ? { id: r.id, op: r.op, offset: r.offset, length: r.length } : undefined,
  }) + "\n";
}

/**
 * Starts tracing every node of the graph under `top`. `target` is `true`
 * (print to the CLI's stdout) or a filename (JSON lines).
 */
export function startTrace(top: BlockNode, target: string | true, io: CliIO): Trace {
  const t0 = performance.now();
  let fd: number | undefined;
  if (target !== true) {
    try {
      fd = fs.openSync(target, "w");
    } catch (e) {
      throw new CliError(`Cannot open trace file '${target}': ${(e as Error).message}`);
    }
  }
  let count = 0;
  const listener = (e: NodeEvent) => {
    count++;
    if (fd !== undefined) fs.writeSync(fd, traceJson(e, t0));
    else io.stdout(formatTraceLine(e, t0));
  };
  const removers = graphNodes(top).map((n) => n.addListener(listener));
  return {
    get count() {
      return count;
    },
    stop() {
      for (const r of removers) r();
      if (fd !== undefined) fs.closeSync(fd);
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
