/**
 * What `blkgraph report` reads out of a trace-event JSON file written by
 * `--trace-format=chrome` / `traceTo()`: the graph, every span and instant
 * by node, per-node counts and latency percentiles, and the flush epochs
 * (which writes each flush made durable, under the dm-log-writes model the
 * recorder and crash explorer use: a write that completed before a flush
 * began is durable once that flush completes; a FUA write when it completes).
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";

/** One span (request, flush, throttle wait) on a node. */
export interface ReportSpan {
  /** Operation (`read`, `write`, `flush`, `throttle wait`, ...). */
  name: string;
  /** Category (`request`, `flush`, `throttle`). */
  cat: string;
  /** Start, microseconds from the start of the trace. */
  ts: number;
  /** Duration in microseconds. */
  dur: number;
  /** Lane of the node (0 = first). */
  lane: number;
  /** Offset at this node. */
  offset: number;
  /** Length at this node. */
  length: number;
  /** Top-level request id. */
  req?: number;
  /** What the top-level request was (`write #block001 0+4096`). */
  reqText?: string;
  /** FUA write. */
  fua: boolean;
  /** Error text, when the request failed. */
  error?: string;
}

/** One instant (BLKDBG event, driver flush, injected error) on a node. */
export interface ReportInstant {
  /** Event name. */
  name: string;
  /** Category (`blkdbg`, `flush`, `inject`). */
  cat: string;
  /** Microseconds from the start of the trace. */
  ts: number;
  /** Lane of the node. */
  lane: number;
  /** Top-level request id. */
  req?: number;
}

/** One graph node with what happened on it. */
export interface ReportNode {
  /** Node name. */
  name: string;
  /** Driver name. */
  driver: string;
  /** Driver kind. */
  kind: string;
  /** Children by role. */
  children: { role: string; node: string }[];
  /** Lanes the node used. */
  lanes: number;
  /** Spans, by start time. */
  spans: ReportSpan[];
  /** Instants, by time. */
  instants: ReportInstant[];
}

/** Counts and latencies of one operation on one node. */
export interface OpStats {
  /** Operation. */
  op: string;
  /** Requests. */
  count: number;
  /** Bytes (sum of lengths). */
  bytes: number;
  /** Failed requests. */
  errors: number;
  /** Latency percentiles in microseconds. */
  p50: number;
  /** 90th percentile. */
  p90: number;
  /** 99th percentile. */
  p99: number;
  /** Longest. */
  max: number;
}

/** The writes one flush made durable on a node. */
export interface FlushEpoch {
  /** 1-based epoch number on the node. */
  index: number;
  /** The flush span (undefined for the writes no flush covered by the end of the trace). */
  flush?: ReportSpan;
  /** Writes that became durable with this flush (or FUA writes that were durable by themselves in this epoch). */
  writes: ReportSpan[];
}

/** The whole report model. */
export interface TraceReport {
  /** Nodes in trace order (parents before children). */
  nodes: ReportNode[];
  /** End of the last event, microseconds. */
  duration: number;
  /** Spans and instants read. */
  events: number;
}

interface RawEvent {
  name?: unknown;
  cat?: unknown;
  ph?: unknown;
  ts?: unknown;
  dur?: unknown;
  tid?: unknown;
  args?: Record<string, unknown>;
}

const WRITES = new Set(["write", "write-zeroes", "discard", "truncate"]);

function bad(why: string): never {
  throw new BlockError("EINVAL", `Cannot read the trace: ${why}`);
}

/** Reads a trace written by blkgraph (`--trace-format=chrome`); EINVAL naming what is wrong otherwise. */
export function parseTraceReport(text: string): TraceReport {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    bad(`it is not JSON (${(e as Error).message})`);
  }
  const d = doc as { traceEvents?: unknown; otherData?: { blkgraph?: { graph?: unknown } } };
  if (!d || typeof d !== "object" || !Array.isArray(d.traceEvents)) bad("there is no traceEvents array");
  const graph = d.otherData?.blkgraph?.graph;
  if (!Array.isArray(graph)) bad("otherData.blkgraph.graph is missing: the trace was not written by blkgraph --trace-format=chrome");
  const nodes: ReportNode[] = [];
  const byTid = new Map<number, { node: ReportNode; lane: number }>();
  for (const [i, g] of (graph as Record<string, unknown>[]).entries()) {
    if (!g || typeof g.name !== "string" || !Array.isArray(g.lanes)) bad(`graph entry ${i} has no name or lanes`);
    const children = Array.isArray(g.children) ? (g.children as { role: unknown; node: unknown }[]) : [];
    const node: ReportNode = {
      name: g.name,
      driver: String(g.driver ?? "?"),
      kind: String(g.kind ?? "?"),
      children: children.map((c) => ({ role: String(c.role), node: String(c.node) })),
      lanes: g.lanes.length,
      spans: [],
      instants: [],
    };
    nodes.push(node);
    (g.lanes as unknown[]).forEach((tid, lane) => byTid.set(Number(tid), { node, lane }));
  }
  let duration = 0;
  let events = 0;
  for (const raw of d.traceEvents as RawEvent[]) {
    if (!raw || typeof raw !== "object" || (raw.ph !== "X" && raw.ph !== "i")) continue;
    const at = byTid.get(Number(raw.tid));
    const ts = Number(raw.ts);
    if (!at || !Number.isFinite(ts)) continue;
    const args = raw.args ?? {};
    const req = args.req as { id?: unknown; op?: unknown; node?: unknown; offset?: unknown; length?: unknown } | undefined;
    const reqId = typeof req?.id === "number" ? req.id : undefined;
    events++;
    if (raw.ph === "X") {
      const dur = Math.max(0, Number(raw.dur) || 0);
      duration = Math.max(duration, ts + dur);
      at.node.spans.push({
        name: String(raw.name),
        cat: String(raw.cat ?? ""),
        ts,
        dur,
        lane: at.lane,
        offset: Number(args.offset ?? 0),
        length: Number(args.length ?? 0),
        req: reqId,
        reqText: req ? `${req.op} ${req.node} ${req.offset}+${req.length}` : undefined,
        fua: args.fua === true,
        error: typeof args.error === "string" ? args.error : undefined,
      });
    } else {
      duration = Math.max(duration, ts);
      at.node.instants.push({ name: String(raw.name), cat: String(raw.cat ?? ""), ts, lane: at.lane, req: reqId });
    }
  }
  for (const n of nodes) {
    n.spans.sort((a, b) => a.ts - b.ts || b.dur - a.dur);
    n.instants.sort((a, b) => a.ts - b.ts);
  }
  return { nodes, duration, events };
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: readonly number[], p: number): number {
  if (!sorted.length) return 0;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

/** Per-operation counts and latency percentiles of a node's request and flush spans. */
export function nodeStats(node: ReportNode): OpStats[] {
  const by = new Map<string, ReportSpan[]>();
  for (const s of node.spans) {
    if (s.cat !== "request" && s.cat !== "flush") continue;
    const list = by.get(s.name);
    if (list) list.push(s);
    else by.set(s.name, [s]);
  }
  return [...by].map(([op, list]) => {
    const lat = list.map((s) => s.dur).sort((a, b) => a - b);
    return {
      op,
      count: list.length,
      bytes: list.reduce((n, s) => n + s.length, 0),
      errors: list.filter((s) => s.error !== undefined).length,
      p50: percentile(lat, 50),
      p90: percentile(lat, 90),
      p99: percentile(lat, 99),
      max: lat[lat.length - 1],
    };
  }).sort((a, b) => b.count - a.count || a.op.localeCompare(b.op));
}

/**
 * The flush epochs of a node: each successful flush with the writes it made
 * durable, then (index after the last) the writes still not durable at the
 * end of the trace. A write made durable by FUA belongs to the epoch it
 * completed in.
 */
export function flushEpochs(node: ReportNode): FlushEpoch[] {
  const flushes = node.spans.filter((s) => s.cat === "flush" && s.error === undefined);
  const writes = node.spans.filter((s) => s.cat === "request" && WRITES.has(s.name) && s.error === undefined);
  const epochs: FlushEpoch[] = flushes.map((flush, i) => ({ index: i + 1, flush, writes: [] }));
  const pending: FlushEpoch = { index: flushes.length + 1, writes: [] };
  for (const w of writes) {
    const end = w.ts + w.dur;
    // FUA: durable at completion, shown with the next flush after it began.
    const k = w.fua ? flushes.findIndex((f) => f.ts + f.dur >= end) : flushes.findIndex((f) => f.ts >= end);
    (k < 0 ? pending : epochs[k]).writes.push(w);
  }
  return pending.writes.length ? [...epochs, pending] : epochs;
}
