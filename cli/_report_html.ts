/**
 * Renders a trace report ({@link ./_report_model.ts}) as one self-contained
 * HTML page: the graph of nodes, the zoomable timeline (a row per node lane,
 * a rectangle per span, a tick per instant), per-node counts and latency
 * percentiles, and the flush-epoch view (which writes each flush made
 * durable), plus an allocation map when one is given.
 *
 * @module
 */

import { type FlushEpoch, flushEpochs, nodeStats, type ReportNode, type TraceReport } from "./_report_model.ts";
import { legend, page, table, zoomBar } from "./_report_page.ts";
import { bytes, cls, el, esc, INSTANT_COLOURS, micros, OP_COLOURS, type ZoomRow, zoomSvg } from "./_svg.ts";

/** Spans drawn at most in the timeline (the rest are counted, not drawn). */
export const MAX_DRAWN = 20_000;
const LANE_H = 18;
const EPOCH_COLOURS = ["#f28e2b", "#59a14f"];
const PENDING_COLOUR = "#bbbbbb";

/** The node graph: a box per node, layered from the top nodes down, an edge per child labelled with its role. */
export function graphSvg(nodes: readonly ReportNode[]): string {
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const depth = new Map<string, number>();
  const hasParent = new Set(nodes.flatMap((n) => n.children.map((c) => c.node)));
  const visit = (n: ReportNode, d: number) => {
    if ((depth.get(n.name) ?? -1) >= d) return;
    depth.set(n.name, d);
    for (const c of n.children) {
      const child = byName.get(c.node);
      if (child && d < nodes.length) visit(child, d + 1);
    }
  };
  for (const n of nodes) if (!hasParent.has(n.name)) visit(n, 0);
  for (const n of nodes) if (!depth.has(n.name)) visit(n, 0);
  const levels: ReportNode[][] = [];
  for (const n of nodes) (levels[depth.get(n.name)!] ??= []).push(n);
  const W = 190, H = 46, GX = 30, GY = 44;
  const pos = new Map<string, { x: number; y: number }>();
  const width = Math.max(...levels.map((l) => l.length)) * (W + GX) + GX;
  levels.forEach((level, d) => {
    const offset = (width - level.length * (W + GX) + GX) / 2;
    level.forEach((n, i) => pos.set(n.name, { x: offset + i * (W + GX), y: 10 + d * (H + GY) }));
  });
  let edges = "";
  for (const n of nodes) {
    const p = pos.get(n.name)!;
    for (const c of n.children) {
      const q = pos.get(c.node);
      if (!q) continue;
      const x1 = p.x + W / 2, y1 = p.y + H, x2 = q.x + W / 2, y2 = q.y;
      edges += el("path", { class: "edge", d: `M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${(y1 + y2) / 2} ${x2},${y2}` });
      edges += el("text", { x: (x1 + x2) / 2 + 4, y: (y1 + y2) / 2, class: "role" }, esc(c.role));
    }
  }
  const boxes = nodes.map((n) => {
    const p = pos.get(n.name)!;
    const requests = n.spans.filter((s) => s.cat === "request" || s.cat === "flush").length;
    return el(
      "g",
      { class: "node", "data-node": n.name, transform: `translate(${p.x},${p.y})` },
      el("rect", { width: W, height: H, rx: 6 }) +
        el("text", { x: 8, y: 16, class: "drv" }, esc(`${n.driver} (${n.kind})`)) +
        el("text", { x: 8, y: 30 }, esc(n.name)) +
        el("text", { x: 8, y: 42, class: "count" }, `${requests} requests, ${n.instants.length} events`),
    );
  }).join("");
  const height = levels.length * (H + GY) + 10;
  return el("svg", { id: "graph", width, height, viewBox: `0 0 ${width} ${height}` }, edges + boxes);
}

function spanTitle(n: ReportNode, s: ReportNode["spans"][number]): string {
  const where = s.cat === "request" ? ` ${s.offset}+${s.length}` : s.name === "throttle wait" ? ` ${s.length} bytes` : "";
  const req = s.req !== undefined ? ` · req ${s.req} (${s.reqText})` : "";
  return `${s.name}${where} on ${n.name} · ${micros(s.dur)}${req}${s.fua ? " · FUA" : ""}${s.error ? ` · failed: ${s.error}` : ""}`;
}

/** The timeline: one row per lane of every node, spans as rectangles, instants as ticks. */
export function timelineSvg(report: TraceReport): { svg: string; drawn: number; total: number } {
  let drawn = 0;
  let total = 0;
  const rows: ZoomRow[] = [];
  for (const n of report.nodes) {
    const lanes: string[] = Array.from({ length: Math.max(1, n.lanes) }, () => "");
    for (const s of n.spans) {
      total++;
      if (drawn >= MAX_DRAWN) continue;
      drawn++;
      const colour = OP_COLOURS[s.name] ?? "#888";
      lanes[s.lane] += el(
        "rect",
        {
          class: `span op-${cls(s.name)}${s.error ? " failed" : ""}`,
          x: s.ts,
          y: 2,
          width: s.dur,
          height: LANE_H - 4,
          fill: colour,
          stroke: s.error ? "#d00000" : colour,
          "stroke-width": 1,
          "vector-effect": "non-scaling-stroke",
          "data-req": s.req,
        },
        el("title", {}, esc(spanTitle(n, s))),
      );
    }
    for (const i of n.instants) {
      lanes[i.lane] += el(
        "line",
        {
          class: `instant cat-${cls(i.cat)}`,
          x1: i.ts,
          x2: i.ts,
          y1: 0,
          y2: LANE_H,
          stroke: INSTANT_COLOURS[i.cat] ?? "#000",
          "stroke-width": i.cat === "inject" ? 3 : 1.5,
          "vector-effect": "non-scaling-stroke",
          "data-req": i.req,
        },
        el("title", {}, esc(`${i.name} on ${n.name}${i.req !== undefined ? ` · req ${i.req}` : ""}`)),
      );
    }
    lanes.forEach((marks, lane) =>
      rows.push({
        label: lane ? `  · lane ${lane + 1}` : `${n.driver} ${n.name}`,
        height: LANE_H,
        marks,
        labelClass: lane ? "lane" : "nodelabel",
      })
    );
  }
  return { svg: zoomSvg("timeline", rows, { lo: 0, hi: report.duration, unit: "us" }), drawn, total };
}

function statsTable(report: TraceReport): string {
  const rows: string[][] = [];
  for (const n of report.nodes) {
    for (const s of nodeStats(n)) {
      rows.push([
        esc(`${n.driver} ${n.name}`),
        esc(s.op),
        String(s.count),
        esc(bytes(s.bytes)),
        String(s.errors),
        esc(micros(s.p50)),
        esc(micros(s.p90)),
        esc(micros(s.p99)),
        esc(micros(s.max)),
      ]);
    }
  }
  return `<div id="stats">${table(["node", "op", "count", "bytes", "errors", "p50", "p90", "p99", "max"], rows)}</div>`;
}

function epochColour(e: FlushEpoch): string {
  return e.flush ? EPOCH_COLOURS[(e.index - 1) % 2] : PENDING_COLOUR;
}

/** The flush-epoch view of one node: its flushes over the writes each made durable. */
export function epochSection(n: ReportNode, lo: number, hi: number): string {
  const epochs = flushEpochs(n);
  if (!epochs.some((e) => e.flush)) return "";
  const id = `epochs-${cls(n.name)}`;
  let flushes = "";
  let writes = "";
  for (const e of epochs) {
    if (e.flush) {
      flushes += el("rect", {
        class: "flush",
        "data-epoch": e.index,
        x: e.flush.ts,
        y: 2,
        width: e.flush.dur,
        height: LANE_H - 4,
        fill: OP_COLOURS.flush,
        stroke: OP_COLOURS.flush,
        "vector-effect": "non-scaling-stroke",
      }, el("title", {}, esc(`flush ${e.index}: ${micros(e.flush.dur)}, made ${e.writes.length} writes durable`)));
    }
    for (const w of e.writes) {
      writes += el(
        "rect",
        {
          class: `write epoch-${e.flush ? e.index : "pending"}`,
          "data-epoch": e.flush ? e.index : "pending",
          x: w.ts,
          y: 2,
          width: w.dur,
          height: LANE_H - 4,
          fill: epochColour(e),
          stroke: epochColour(e),
          "vector-effect": "non-scaling-stroke",
        },
        el("title", {}, esc(`${w.name} ${w.offset}+${w.length} · ${e.flush ? `durable with flush ${e.index}` : "not durable at the end"}`)),
      );
    }
  }
  const svg = zoomSvg(id, [{ label: "flushes", height: LANE_H, marks: flushes }, {
    label: "writes by epoch",
    height: LANE_H,
    marks: writes,
  }], {
    lo,
    hi,
    unit: "us",
  });
  const rows = epochs.map((e) => {
    const list = e.writes.slice(0, 6).map((w) => `${w.name} ${w.offset}+${w.length}${w.req !== undefined ? ` (req ${w.req})` : ""}`).join(
      ", ",
    );
    return [
      e.flush ? String(e.index) : "after the last flush",
      e.flush ? esc(micros(e.flush.ts)) : "—",
      e.flush?.reqText ? esc(`req ${e.flush.req} ${e.flush.reqText}`) : "—",
      String(e.writes.length),
      esc(bytes(e.writes.reduce((s, w) => s + w.length, 0))),
      `<span class="mono">${esc(list)}${e.writes.length > 6 ? ` … (+${e.writes.length - 6})` : ""}</span>`,
    ];
  });
  return `<div class="epochs" data-node="${esc(n.name)}"><h3>${esc(`${n.driver} ${n.name}`)}</h3>${zoomBar(id)}${svg}` +
    table(["flush", "at", "issued by", "writes made durable", "bytes", "writes"], rows, (i) => epochs[i].flush ? undefined : "pending") +
    `</div>`;
}

/** Options for {@linkcode renderTraceReport}. */
export interface TraceReportOptions {
  /** Page title. */
  title?: string;
  /** An allocation map SVG to include (from `map --output=svg`). */
  mapSvg?: string;
}

/** The whole trace report page. */
export function renderTraceReport(report: TraceReport, opts: TraceReportOptions = {}): string {
  const title = opts.title ?? "blkgraph trace report";
  const tl = timelineSvg(report);
  const ops = [...new Set(report.nodes.flatMap((n) => n.spans.map((s) => s.name)))];
  const cats = [...new Set(report.nodes.flatMap((n) => n.instants.map((i) => i.cat)))];
  const epochs = report.nodes.map((n) => epochSection(n, 0, report.duration)).filter(Boolean);
  const body = `<h1>${esc(title)}</h1>
<p class="muted" id="summary">${report.nodes.length} nodes · ${tl.total} spans · ${report.events - tl.total} instant events · ${
    esc(micros(report.duration))
  }</p>
<h2>Graph</h2>${graphSvg(report.nodes)}
<h2>Timeline</h2>
${
    legend([
      ...ops.map((o): [string, string] => [o, OP_COLOURS[o] ?? "#888"]),
      ...cats.map((c): [string, string] => [`${c} event`, INSTANT_COLOURS[c] ?? "#000"]),
    ])
  }
${zoomBar("timeline")}${tl.svg}
${tl.drawn < tl.total ? `<p class="muted">Drawn: the first ${tl.drawn} of ${tl.total} spans.</p>` : ""}
<h2>Requests per node</h2>${statsTable(report)}
<h2>Flush epochs</h2>
<p class="muted">A write that completed before a flush began is durable once that flush completes (a FUA write when it completes).</p>
<div id="epochs">${epochs.length ? epochs.join("\n") : '<p class="muted">No flush reached a node in this trace.</p>'}</div>
${opts.mapSvg ? `<h2>Allocation map</h2><div id="map">${opts.mapSvg}</div>` : ""}`;
  return page(title, body);
}
