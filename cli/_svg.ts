/**
 * Small SVG/HTML building blocks for the project's pictures (report
 * timelines, the node graph, allocation maps): escaping, elements, the
 * colour tables, number formats, axis ticks, and the zoomable time-axis
 * SVG that the report's inline script pans and zooms.
 *
 * @module
 */

/** Escapes text for HTML/SVG content and attribute values. */
export function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

/** Builds an element: attributes are escaped; `children` are markup already. */
export function el(tag: string, attrs: Record<string, string | number | undefined>, children = ""): string {
  const a = Object.entries(attrs).filter(([, v]) => v !== undefined).map(([k, v]) => ` ${k}="${esc(String(v))}"`).join("");
  return `<${tag}${a}>${children}</${tag}>`;
}

/** Colour of each request operation (and throttle waits). */
export const OP_COLOURS: Readonly<Record<string, string>> = {
  read: "#4e79a7",
  write: "#f28e2b",
  "write-zeroes": "#edc948",
  discard: "#b07aa1",
  flush: "#e15759",
  "block-status": "#76b7b2",
  truncate: "#9c755f",
  "throttle wait": "#bab0ac",
};

/** Colour of each instant category. */
export const INSTANT_COLOURS: Readonly<Record<string, string>> = {
  blkdbg: "#2f7d32",
  flush: "#b71c1c",
  inject: "#ff00ff",
};

/** Colour of each metadata kind, data and free space in allocation maps. */
export const KIND_COLOURS: Readonly<Record<string, string>> = {
  header: "#1b1b1b",
  l1: "#d62728",
  l2: "#ff7f0e",
  "refcount-table": "#2ca02c",
  "refcount-block": "#98df8a",
  "snapshot-table": "#9467bd",
  "snapshot-l1": "#c5b0d5",
  "snapshot-l2": "#e7cfe9",
  "bitmap-directory": "#8c564b",
  "bitmap-table": "#c49c94",
  "bitmap-data": "#e377c2",
  "crypto-header": "#17becf",
  data: "#1f77b4",
  free: "#e8e8e8",
};

/** Colours of the backing-chain layers (depth 0 = the top image). */
export const LAYER_COLOURS: readonly string[] = ["#1f77b4", "#5b9bd5", "#08306b", "#9ecae1", "#4292c6", "#2171b5", "#6baed6"];

/** A class-safe name (`write-zeroes`, `throttle-wait`). */
export function cls(s: string): string {
  return s.replace(/[^a-z0-9-]+/gi, "-").toLowerCase();
}

/** Bytes for people: 512 B, 64 KiB, 1.5 MiB. */
export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** Microseconds for people: 850 µs, 1.58 ms, 2.31 s. */
export function micros(us: number): string {
  if (us < 1000) return `${us < 10 ? us.toFixed(2) : us.toFixed(0)} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : 1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

/** Round tick values (1, 2 or 5 × 10^k apart) covering `[lo, hi]`, about `n` of them. */
export function ticks(lo: number, hi: number, n = 8): number[] {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)) + 0);
  return out;
}

/** Width of the label column of a zoomable SVG. */
export const LABEL_W = 220;

/** One row of a zoomable time-axis SVG. */
export interface ZoomRow {
  /** Label shown left of the row (text). */
  label: string;
  /** Row height in pixels. */
  height: number;
  /** The row's marks, in time units on x and pixels from the row's top on y. */
  marks: string;
  /** Extra class of the row's label. */
  labelClass?: string;
}

/**
 * An SVG whose x axis is time (or bytes) from `lo` to `hi`: a fixed label
 * column, then a plot the report's script pans and zooms (its marks are in
 * axis units; the plot's transform maps them to pixels). The axis ticks are
 * drawn here and redrawn by the script after a zoom.
 */
export function zoomSvg(
  id: string,
  rows: ZoomRow[],
  opts: { lo: number; hi: number; width?: number; unit: "us" | "bytes" | "clock" },
): string {
  const width = opts.width ?? 1200;
  const plotW = width - LABEL_W - 10;
  const axisH = 22;
  const hi = opts.hi > opts.lo ? opts.hi : opts.lo + 1;
  const k = plotW / (hi - opts.lo);
  let y = axisH;
  let labels = "";
  let plot = "";
  for (const r of rows) {
    labels += el("text", { x: 6, y: y + Math.min(r.height, 18) - 5, class: `label ${r.labelClass ?? ""}`.trim() }, esc(r.label));
    labels += el("line", { x1: 0, x2: width, y1: y + r.height, y2: y + r.height, class: "rowline" });
    plot += el("g", { transform: `translate(0,${y})` }, r.marks);
    y += r.height;
  }
  const fmt = opts.unit === "us" ? micros : opts.unit === "bytes" ? bytes : (v: number) => String(v);
  const axis = ticks(opts.lo, hi).map((t) => {
    const x = LABEL_W + (t - opts.lo) * k;
    return el("line", { x1: x, x2: x, y1: axisH - 4, y2: y, class: "tick" }) +
      el("text", { x: x + 2, y: axisH - 7, class: "ticklabel" }, esc(fmt(t)));
  }).join("");
  return el(
    "svg",
    {
      id,
      class: "zoomable",
      width,
      height: y + 4,
      viewBox: `0 0 ${width} ${y + 4}`,
      "data-lo": opts.lo,
      "data-hi": hi,
      "data-unit": opts.unit,
      "data-label-w": LABEL_W,
      "data-plot-w": plotW,
      "data-axis-h": axisH,
    },
    el("g", { class: "axis" }, axis) +
      el(
        "svg",
        { x: LABEL_W, y: 0, width: plotW, height: y, class: "plotclip" },
        el("g", { class: "plot", transform: `scale(${k},1) translate(${-opts.lo},0)` }, plot),
      ) +
      el("g", { class: "labels" }, labels),
  );
}
