/**
 * The crash-exploration report (`blkgraph crash-explore --report`,
 * `bench/crash_explore.ts --report`): a table of the states explored per
 * workload and mode with each oracle's verdict, and for every failing state
 * what the oracle said, its minimal replay, and the host log drawn on the
 * flush-epoch timeline (logical clock) with each write marked durable,
 * kept from the crash epoch, torn, dropped, or after the crash.
 *
 * @module
 */

import type { RecordedOp } from "../filters/recorder.ts";
import { classify } from "../filters/crash/explorer.ts";
import type { CrashFailure } from "../filters/crash/run.ts";
import { legend, page, table, zoomBar } from "./_report_page.ts";
import { el, esc, type ZoomRow, zoomSvg } from "./_svg.ts";

/** One exploration: a workload (or a recorded log) in one mode. */
export interface CrashRun {
  /** Workload name (or the log's file name). */
  workload: string;
  /** Metadata mode (`ordered`, `metadata-sync`, `lazy`, or `recorded`). */
  mode: string;
  /** States explored. */
  states: number;
  /** Checks run per oracle. */
  checks: Record<string, number>;
  /** Failing states (minimised, with their replay). */
  failures: CrashFailure[];
  /** Wall time in seconds. */
  seconds: number;
  /** The host log the states were generated from. */
  log: readonly RecordedOp[];
}

/** How a log op ended up in a failing state. */
export type OpFate = "durable" | "kept" | "torn" | "dropped" | "after" | "flush" | "other";

/** Colours of the fates. */
export const FATE_COLOURS: Readonly<Record<OpFate, string>> = {
  durable: "#2e7d32",
  kept: "#f28e2b",
  torn: "#edc948",
  dropped: "#c7c7c7",
  after: "#eeeeee",
  flush: "#e15759",
  other: "#9c755f",
};

const ROW_H = 18;

/** The fate of every op of `log` in the (minimal) state of `f`. */
export function opFates(log: readonly RecordedOp[], f: CrashFailure): OpFate[] {
  const r = f.minimal ?? f.recipe;
  const { durable, pending } = classify(log, r.crashPoint);
  const fates: OpFate[] = log.map((op) => (op.op === "flush" ? "flush" : op.submit > r.crashPoint ? "after" : "other"));
  for (const i of durable) fates[i] = "durable";
  for (const i of pending) fates[i] = "dropped";
  for (const i of r.applied) fates[i] = "kept";
  if (r.torn) fates[r.torn.op] = "torn";
  return fates;
}

/** The host log of a failing state on its flush-epoch timeline. */
export function failureTimeline(id: string, log: readonly RecordedOp[], f: CrashFailure): string {
  const fates = opFates(log, f);
  const end = Math.max(1, ...log.map((op) => op.complete ?? op.submit));
  const lo = Math.min(...log.map((op) => op.submit), end) - 1;
  const crash = (f.minimal ?? f.recipe).crashPoint;
  let flushes = "";
  let writes = "";
  log.forEach((op, i) => {
    const x = op.submit;
    const w = Math.max(0.5, (op.complete ?? end) - op.submit);
    const attrs = {
      class: `op fate-${fates[i]}`,
      "data-index": i,
      x,
      y: 2,
      width: w,
      height: ROW_H - 4,
      fill: FATE_COLOURS[fates[i]],
      stroke: "#666",
      "stroke-width": 0.5,
      "vector-effect": "non-scaling-stroke",
    };
    const title = el(
      "title",
      {},
      esc(`#${i} ${op.op} ${op.offset}+${op.length}${op.fua ? " FUA" : ""} [${op.submit}–${op.complete ?? "…"}]: ${fates[i]}`),
    );
    if (op.op === "flush") flushes += el("rect", attrs, title);
    else writes += el("rect", attrs, title);
  });
  const line = (cls: string) =>
    el("line", {
      class: cls,
      x1: crash,
      x2: crash,
      y1: 0,
      y2: ROW_H,
      stroke: "#d00000",
      "stroke-width": 2,
      "vector-effect": "non-scaling-stroke",
    }, el("title", {}, `crash at clock ${crash}`));
  const rows: ZoomRow[] = [
    { label: "flushes", height: ROW_H, marks: flushes + line("crashpoint") },
    { label: "writes, discards, truncates", height: ROW_H, marks: writes + line("crashpoint") },
  ];
  return zoomSvg(id, rows, { lo, hi: end + 1, unit: "clock" });
}

function replayTable(log: readonly RecordedOp[], f: CrashFailure): string {
  const rows = (f.replay ?? []).map((op) => [
    String(op.index),
    esc(op.op),
    String(op.offset),
    String(op.length),
    op.durable ? "durable" : op.tornAt !== undefined ? `torn at ${op.tornAt} bytes` : "kept from the crash epoch",
    esc(String(log[op.index]?.submit ?? "")),
  ]);
  return `<div class="replay">${table(["#", "op", "offset", "length", "why applied", "submitted at"], rows)}</div>`;
}

function oracleNames(runs: readonly CrashRun[]): string[] {
  return [...new Set(runs.flatMap((r) => Object.keys(r.checks)))];
}

/** The whole crash report page. */
export function renderCrashReport(runs: readonly CrashRun[], opts: { title?: string; settings?: string } = {}): string {
  const title = opts.title ?? "blkgraph crash exploration";
  const oracles = oracleNames(runs);
  const rows = runs.map((r) => [
    esc(r.workload),
    esc(r.mode),
    String(r.states),
    ...oracles.map((o) => {
      const failed = r.failures.filter((f) => f.oracle === o).length;
      const n = r.checks[o];
      return n === undefined ? "—" : `<span class="verdict ${failed ? "fail" : "pass"}">${failed ? "FAIL" : "pass"}</span> (${n} checks)`;
    }),
    String(r.failures.length),
    r.seconds.toFixed(1),
  ]);
  const summary = table(
    ["workload", "mode", "states", ...oracles.map(esc), "failures", "seconds"],
    rows,
    (i) => (runs[i].failures.length ? "fail" : "pass"),
  );
  let details = "";
  let n = 0;
  for (const r of runs) {
    for (const f of r.failures) {
      const id = `failure-${n++}`;
      const rec = f.minimal ?? f.recipe;
      const dropped = opFates(r.log, f).flatMap((fate, i) => (fate === "dropped" ? [i] : []));
      details += `<div class="failure" data-workload="${esc(r.workload)}" data-mode="${esc(r.mode)}" data-oracle="${esc(f.oracle)}">
<h3>${esc(`${r.workload} / ${r.mode}: state ${f.index} (${f.kind}) fails ${f.oracle}`)}</h3>
<p class="message">${esc(f.message)}</p>
<p class="muted">Minimal state: crash at clock ${rec.crashPoint}; ${rec.applied.length} crash-epoch ops kept${
        rec.torn ? `, op ${rec.torn.op} torn at ${rec.torn.bytes} bytes` : ""
      }; ${dropped.length} dropped (${dropped.length ? esc(dropped.map((i) => `#${i}`).join(" ")) : "none"}); replay the ${
        f.replay?.length ?? 0
      } ops below on the base image in order.</p>
${zoomBar(id)}${failureTimeline(id, r.log, f)}
${replayTable(r.log, f)}</div>`;
    }
  }
  const body = `<h1>${esc(title)}</h1>
${opts.settings ? `<p class="muted" id="settings">${esc(opts.settings)}</p>` : ""}
<h2>States per workload and mode</h2><div id="summary">${summary}</div>
<h2>Failing states</h2>
${
    legend(
      (Object.keys(FATE_COLOURS) as OpFate[]).map((
        k,
      ) => [k === "after" ? "after the crash" : k === "kept" ? "kept (crash epoch)" : k, FATE_COLOURS[k]]),
    )
  }
<div id="failures">${details || '<p class="muted">No state failed an oracle.</p>'}</div>`;
  return page(title, body);
}
