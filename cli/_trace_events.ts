/**
 * The Chrome / Perfetto trace-event writer: turns the node events of a
 * graph (request begin/end, BLKDBG events, flushes, throttle waits, injected
 * errors) into the "JSON Object Format" of the Trace Event Format that
 * `chrome://tracing`, Perfetto and `blkgraph report` load.
 *
 * Layout: one process (`pid` 1, "blkgraph"), one thread per graph node
 * (named after the driver and node), and more threads ("lanes") for a node
 * only while requests overlap on it, because spans on one thread must nest.
 * A span that serves the same top-level request as the open span on top of
 * a lane nests under it (a throttle wait inside the throttle node's request,
 * a FUA write's flush inside the write); everything else takes a free lane.
 * Spans are complete (`X`) events with microsecond `ts`/`dur`, instants are
 * `i` events with thread scope. Events are written in timestamp order: a
 * span is held back until every span that began before it has ended.
 *
 * @module
 */

import type { BlockNode, NodeEvent } from "../core/node.ts";
import type { RequestInfo } from "../core/types.ts";
import { BlockError } from "../core/errors.ts";

/** Where a trace goes: a function or an object that takes text chunks in order. */
export type TraceSink = ((text: string) => void) | { write(text: string): void };

/** A running trace from {@linkcode traceTo}. */
export interface Tracer {
  /** Trace events written or waiting to be written so far. */
  readonly events: number;
  /** Detaches from the graph, ends spans still open, and writes the end of the JSON document. */
  stop(): void;
}

/** One node of the traced graph, as written to `otherData.blkgraph.graph`. */
export interface TraceGraphNode {
  /** Node name. */
  name: string;
  /** Driver name. */
  driver: string;
  /** Driver kind. */
  kind: string;
  /** Thread id of the node's first lane. */
  tid: number;
  /** Thread ids of all the node's lanes (the first is `tid`). */
  lanes: number[];
  /** Children by role. */
  children: { role: string; node: string }[];
}

/** A trace event as this writer produces it (a subset of the format's fields). */
export interface TraceEvent {
  /** Event name. */
  name: string;
  /** Category. */
  cat?: string;
  /** Phase: `X` complete, `i` instant, `M` metadata. */
  ph: "X" | "i" | "M";
  /** Timestamp in microseconds. */
  ts?: number;
  /** Duration in microseconds (`X`). */
  dur?: number;
  /** Process id. */
  pid: number;
  /** Thread id. */
  tid: number;
  /** Instant scope (`t` = thread). */
  s?: "t";
  /** Arguments shown in the viewer. */
  args?: Record<string, unknown>;
}

const PID = 1;
/** Held-back events are written unsorted past this many (a request that never ends must not hold memory). */
const MAX_HELD = 100_000;

interface Span {
  key: string;
  node: number;
  lane: number;
  begin: number;
  name: string;
  cat: string;
  reqId: number | undefined;
  args: Record<string, unknown>;
}

interface NodeTrack {
  node: BlockNode;
  /** Per lane: the thread id and the stack of open spans. */
  lanes: { tid: number; stack: Span[] }[];
}

function reqArgs(r: RequestInfo | undefined): Record<string, unknown> | undefined {
  return r ? { id: r.id, op: r.op, node: r.node, offset: r.offset, length: r.length } : undefined;
}

function errorText(e: unknown): string {
  if (e instanceof BlockError) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}

const us = (ms: number) => Math.round(ms * 1000) / 1000;

/** Collects every node of the graphs under `tops` (each once), parents before children. */
function collect(tops: readonly BlockNode[]): BlockNode[] {
  const seen = new Set<BlockNode>();
  const walk = (n: BlockNode) => {
    if (seen.has(n)) return;
    seen.add(n);
    for (const c of n.children.values()) walk(c);
  };
  for (const t of tops) walk(t);
  return [...seen];
}

/**
 * Traces every node of the graph under `node` (or of several graphs) into
 * `sink` as Chrome/Perfetto trace-event JSON until `stop()`.
 *
 * @example
 * ```ts
 * import { open, traceTo } from "@blkgraph/blkgraph";
 * await using disk = await open({ driver: "raw", file: { driver: "memory", size: 65536 } });
 * let json = "";
 * const tracer = traceTo(disk, (text) => void (json += text));
 * await disk.pwrite(0, new Uint8Array(4096));
 * await disk.flush();
 * tracer.stop();
 * const trace = JSON.parse(json);
 * console.log(trace.traceEvents.filter((e: { ph: string }) => e.ph === "X").length > 0); // true
 * ```
 */
export function traceTo(node: BlockNode | readonly BlockNode[], sink: TraceSink): Tracer {
  const write = typeof sink === "function" ? sink : (t: string) => sink.write(t);
  const nodes = collect(Array.isArray(node) ? node : [node as BlockNode]);
  const t0 = performance.now();
  const tracks: NodeTrack[] = [];
  const index = new Map<BlockNode, number>();
  const open = new Map<string, Span[]>();
  let held: TraceEvent[] = [];
  let count = 0;
  let nextTid = 1;
  let first = true;
  let stopped = false;

  // Output goes to the sink in chunks of about 64 KiB (and at stop()): one
  // sink call per event would cost a system call per event for a file.
  let chunk = "";
  const out = (e: TraceEvent) => {
    chunk += (first ? "\n" : ",\n") + JSON.stringify(e);
    first = false;
    if (chunk.length >= 1 << 16) {
      write(chunk);
      chunk = "";
    }
  };
  const ts = (time: number) => us((time - t0) * 1000);

  const newLane = (t: number): number => {
    const track = tracks[t];
    const lane = track.lanes.length;
    const tid = nextTid++;
    track.lanes.push({ tid, stack: [] });
    const n = track.node;
    const label = `${n.driver.name} ${n.name}${lane ? ` · lane ${lane + 1}` : ""}`;
    out({ name: "thread_name", ph: "M", pid: PID, tid, args: { name: label } });
    out({ name: "thread_sort_index", ph: "M", pid: PID, tid, args: { sort_index: t * 1000 + lane } });
    count += 2;
    return lane;
  };

  write(`{"displayTimeUnit":"ms","traceEvents":[`);
  out({ name: "process_name", ph: "M", pid: PID, tid: 0, args: { name: "blkgraph" } });
  count++;
  for (const n of nodes) {
    index.set(n, tracks.length);
    tracks.push({ node: n, lanes: [] });
    newLane(tracks.length - 1);
  }

  const hold = (e: TraceEvent) => {
    held.push(e);
    count++;
    if (held.length > MAX_HELD) release(Infinity);
  };
  /** Writes held events that start before `mark`, in timestamp order. */
  const release = (mark: number) => {
    if (!held.length) return;
    const ready = held.filter((e) => e.ts! < mark);
    if (!ready.length) return;
    held = held.filter((e) => e.ts! >= mark);
    ready.sort((a, b) => a.ts! - b.ts! || (a.ph === "X" ? 0 : 1) - (b.ph === "X" ? 0 : 1) || (b.dur ?? 0) - (a.dur ?? 0));
    for (const e of ready) out(e);
  };
  const watermark = () => {
    let m = Infinity;
    for (const t of tracks) for (const l of t.lanes) if (l.stack.length) m = Math.min(m, l.stack[0].begin);
    return m;
  };

  /** The lane whose innermost open span serves request `reqId`, if any. */
  const laneOf = (t: number, reqId: number | undefined): number | undefined => {
    if (reqId === undefined) return undefined;
    const lanes = tracks[t].lanes;
    for (let i = lanes.length - 1; i >= 0; i--) {
      const top = lanes[i].stack[lanes[i].stack.length - 1];
      if (top && top.reqId === reqId) return i;
    }
    return undefined;
  };

  const begin = (
    t: number,
    key: string,
    time: number,
    name: string,
    cat: string,
    reqId: number | undefined,
    args: Record<string, unknown>,
  ) => {
    let lane = laneOf(t, reqId);
    if (lane === undefined) {
      lane = tracks[t].lanes.findIndex((l) => l.stack.length === 0);
      if (lane < 0) lane = newLane(t);
    }
    const span: Span = { key, node: t, lane, begin: ts(time), name, cat, reqId, args };
    tracks[t].lanes[lane].stack.push(span);
    const list = open.get(key);
    if (list) list.push(span);
    else open.set(key, [span]);
  };

  const close = (span: Span, end: number, extra?: Record<string, unknown>) => {
    const track = tracks[span.node];
    const stack = track.lanes[span.lane].stack;
    const at = stack.indexOf(span);
    if (at < stack.length - 1) {
      // Something nested under this span outlives it: move it (and what is
      // nested under it) to a lane of its own so spans on a lane stay nested.
      const moved = stack.splice(at + 1);
      const lane = newLane(span.node);
      for (const s of moved) s.lane = lane;
      track.lanes[lane].stack.push(...moved);
    }
    stack.splice(at, 1);
    const args = extra ? { ...span.args, ...extra } : span.args;
    hold({
      name: span.name,
      cat: span.cat,
      ph: "X",
      ts: span.begin,
      dur: Math.max(0, us(end - span.begin)),
      pid: PID,
      tid: track.lanes[span.lane].tid,
      args,
    });
  };

  const end = (key: string, time: number, extra?: Record<string, unknown>) => {
    const list = open.get(key);
    const span = list?.pop();
    if (!span) return; // began before the trace did
    if (!list!.length) open.delete(key);
    close(span, ts(time), extra);
    release(watermark());
  };

  const instant = (t: number, time: number, name: string, cat: string, reqId: number | undefined, args: Record<string, unknown>) => {
    const lane = laneOf(t, reqId) ?? 0;
    hold({ name, cat, ph: "i", s: "t", ts: ts(time), pid: PID, tid: tracks[t].lanes[lane].tid, args });
    if (!open.size) release(Infinity);
  };

  const listener = (e: NodeEvent) => {
    const t = index.get(e.node);
    if (t === undefined || stopped) return;
    switch (e.kind) {
      case "request": {
        const key = `r|${t}|${e.req.id}|${e.op}|${e.offset}|${e.length}`;
        if (e.phase === "begin") {
          const args: Record<string, unknown> = { offset: e.offset, length: e.length, req: reqArgs(e.req) };
          if (e.fua) args.fua = true;
          begin(t, key, e.time, e.op, e.op === "flush" ? "flush" : "request", e.req.id, args);
        } else {
          end(key, e.time, e.error === undefined ? undefined : { error: errorText(e.error) });
        }
        break;
      }
      case "throttle": {
        const key = `t|${t}|${e.req?.id}|${e.bytes}|${e.write}`;
        if (e.phase === "begin") {
          begin(t, key, e.time, "throttle wait", "throttle", e.req?.id, { bytes: e.bytes, write: e.write, req: reqArgs(e.req) });
        } else end(key, e.time);
        break;
      }
      case "blkdbg":
        instant(t, e.time, e.event, "blkdbg", e.req?.id, { req: reqArgs(e.req) });
        break;
      case "flush":
        instant(t, e.time, "flush (driver)", "flush", e.req?.id, { req: reqArgs(e.req) });
        break;
      case "inject":
        instant(t, e.time, `inject ${e.code}`, "inject", e.req?.id, {
          op: e.op,
          offset: e.offset,
          length: e.length,
          code: e.code,
          event: e.event,
          req: reqArgs(e.req),
        });
        break;
    }
  };
  const removers = nodes.map((n) => n.addListener(listener));

  return {
    get events() {
      return count;
    },
    stop() {
      if (stopped) return;
      stopped = true;
      for (const r of removers) r();
      const now = ts(performance.now());
      for (const list of open.values()) for (const s of list) close(s, now, { unfinished: true });
      open.clear();
      release(Infinity);
      const graph: TraceGraphNode[] = tracks.map((tr) => ({
        name: tr.node.name,
        driver: tr.node.driver.name,
        kind: tr.node.driver.kind,
        tid: tr.lanes[0].tid,
        lanes: tr.lanes.map((l) => l.tid),
        children: [...tr.node.children].filter(([, c]) => index.has(c)).map(([role, c]) => ({ role, node: c.name })),
      }));
      write(chunk + `\n],"otherData":${JSON.stringify({ blkgraph: { version: 1, graph } })}}\n`);
    },
  };
}
