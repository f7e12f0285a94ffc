/**
 * The allocation map as a picture (`map --output=svg`, and in reports):
 * a guest strip coloured by the backing-chain layer that defines each range,
 * then for every layer its host file as a strip (metadata clusters coloured
 * by kind, data clusters, free space) and a guest-offset × host-offset plot
 * of where its data lives, which shows fragmentation at a glance.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import type { BlockNode } from "../core/node.ts";
import type { MetadataExtent } from "../core/types.ts";
import { formatNode } from "./_common.ts";
import { bytes, cls, el, esc, KIND_COLOURS, LAYER_COLOURS } from "./_svg.ts";
import { type MapEntry, mapExtents } from "./_map_extents.ts";

const W = 900;
const LEFT = 10;
const STRIP_H = 22;
const PLOT_H = 220;

/** One layer of the backing chain as the picture shows it. */
export interface MapLayer {
  /** Depth (0 = the top image). */
  depth: number;
  /** The format node. */
  node: BlockNode;
  /** Host file name, when known. */
  filename: string;
  /** Length of the layer's file in bytes. */
  fileLength: number;
  /** Metadata extents (empty when the format keeps none or cannot list it). */
  metadata: MetadataExtent[];
}

function hostName(n: BlockNode): string {
  for (let c: BlockNode | undefined = n; c; c = c.primaryChild) {
    if (typeof c.options.filename === "string") return c.options.filename;
  }
  return n.name;
}

/** The layers of the chain under `top`, each with its metadata extents. */
export async function mapLayers(top: BlockNode): Promise<MapLayer[]> {
  const layers: MapLayer[] = [];
  for (let n: BlockNode | undefined = formatNode(top), d = 0; n && d < 64; n = n.backing ? formatNode(n.backing) : undefined, d++) {
    let metadata: MetadataExtent[] = [];
    try {
      metadata = await n.metadataExtents();
    } catch (e) {
      if (!(e instanceof BlockError && e.code === "ENOTSUP")) throw e;
    }
    const file = n.driver.kind === "format" ? n.file ?? n : n;
    layers.push({ depth: d, node: n, filename: hostName(n), fileLength: file.length, metadata });
  }
  return layers;
}

const px = (off: number, size: number) => LEFT + (size > 0 ? (off / size) * W : 0);
const pw = (len: number, size: number) => Math.max(0.5, size > 0 ? (len / size) * W : 0);

function strip(y: number, label: string, body: string, cssClass: string): string {
  return el(
    "g",
    { class: cssClass, transform: `translate(0,${y})` },
    el("text", { x: LEFT, y: 12, class: "label" }, esc(label)) +
      el("rect", { x: LEFT, y: 16, width: W, height: STRIP_H, fill: KIND_COLOURS.free, class: "background" }) +
      el("g", { transform: "translate(0,16)" }, body),
  );
}

/** Draws the map of `entries` (from {@linkcode mapExtents}) over `layers`. */
export function mapSvg(entries: readonly MapEntry[], layers: readonly MapLayer[], opts: { title: string; size: number }): string {
  const size = opts.size;
  let y = 26;
  let parts = el("text", { x: LEFT, y: 16, class: "title" }, esc(`${opts.title}: ${bytes(size)} virtual, ${layers.length} layer(s)`));
  const guest = entries.map((e) => {
    const fill = e.data ? LAYER_COLOURS[e.depth % LAYER_COLOURS.length] : e.present ? "#ffffff" : KIND_COLOURS.free;
    const what = e.data ? `data from layer ${e.depth}` : e.present ? `zeros (layer ${e.depth})` : "unallocated";
    return el("rect", {
      class: `guest ${e.data ? `depth-${e.depth}` : e.present ? "zero" : "unallocated"}`,
      x: px(e.start, size),
      y: 0,
      width: pw(e.length, size),
      height: STRIP_H,
      fill,
      "data-start": e.start,
      "data-length": e.length,
    }, el("title", {}, esc(`guest ${e.start}+${e.length}: ${what}`)));
  }).join("");
  parts += strip(y, `guest offsets 0 – ${bytes(size)} (colour: layer that defines the range)`, guest, "guest-strip");
  y += STRIP_H + 26;
  const kinds = new Set<string>();
  for (const layer of layers) {
    const fl = Math.max(layer.fileLength, 1);
    const data = entries.filter((e) => e.depth === layer.depth && e.data && e.offset !== undefined);
    let host = "";
    for (const m of layer.metadata) {
      kinds.add(m.kind);
      host += el("rect", {
        class: `meta kind-${cls(m.kind)}`,
        x: px(m.offset, fl),
        y: 0,
        width: pw(m.length, fl),
        height: STRIP_H,
        fill: KIND_COLOURS[m.kind] ?? "#444",
        "data-offset": m.offset,
        "data-length": m.length,
      }, el("title", {}, esc(`${m.label ?? m.kind}: host ${m.offset}+${m.length}`)));
    }
    for (const e of data) {
      host += el("rect", {
        class: "data",
        x: px(e.offset!, fl),
        y: 0,
        width: pw(e.length, fl),
        height: STRIP_H,
        fill: LAYER_COLOURS[layer.depth % LAYER_COLOURS.length],
        "data-offset": e.offset,
        "data-length": e.length,
      }, el("title", {}, esc(`data: guest ${e.start}+${e.length} at host ${e.offset}`)));
    }
    const name = `${layer.node.driver.name} ${layer.filename}`;
    parts += strip(y, `layer ${layer.depth}: ${name} — host file ${bytes(layer.fileLength)}`, host, `host-strip layer-${layer.depth}`);
    y += STRIP_H + 24;
    // Guest × host plot: a diagonal segment per data extent.
    let plot = el("rect", { x: LEFT, y: 0, width: W, height: PLOT_H, fill: "#fafafa", stroke: "#ccc" });
    for (const m of layer.metadata) {
      plot += el("rect", {
        class: `metaband kind-${cls(m.kind)}`,
        x: LEFT,
        y: PLOT_H - (m.offset + m.length) / fl * PLOT_H,
        width: 6,
        height: Math.max(0.5, m.length / fl * PLOT_H),
        fill: KIND_COLOURS[m.kind] ?? "#444",
      });
    }
    for (const e of data) {
      plot += el("line", {
        class: "extent",
        x1: px(e.start, size),
        y1: PLOT_H - (e.offset! / fl) * PLOT_H,
        x2: px(e.start + e.length, size),
        y2: PLOT_H - ((e.offset! + e.length) / fl) * PLOT_H,
        stroke: LAYER_COLOURS[layer.depth % LAYER_COLOURS.length],
        "stroke-width": 2,
      }, el("title", {}, esc(`guest ${e.start}+${e.length} → host ${e.offset}`)));
    }
    parts += el(
      "g",
      { class: `plot layer-${layer.depth}`, transform: `translate(0,${y})` },
      el(
        "text",
        { x: LEFT, y: 12, class: "label" },
        esc(`layer ${layer.depth}: guest offset (x) → host offset (y), ${data.length} data extents`),
      ) +
        el("g", { transform: "translate(0,16)" }, plot),
    );
    y += PLOT_H + 36;
  }
  const legendItems = [
    ...[...kinds].map((k) => [k, KIND_COLOURS[k] ?? "#444"]),
    ...layers.map((l) => [`data, layer ${l.depth}`, LAYER_COLOURS[l.depth % LAYER_COLOURS.length]]),
    ["free / unallocated", KIND_COLOURS.free],
  ];
  let legend = "";
  legendItems.forEach(([name, colour], i) => {
    const x = LEFT + (i % 5) * 180, ly = Math.floor(i / 5) * 16;
    legend += el(
      "g",
      { class: "legend-item", transform: `translate(${x},${ly})` },
      el("rect", { width: 11, height: 11, fill: colour, stroke: "#999" }) + el("text", { x: 15, y: 10 }, esc(name)),
    );
  });
  parts += el("g", { class: "legend", transform: `translate(0,${y})` }, legend);
  y += Math.ceil(legendItems.length / 5) * 16 + 10;
  const style = "<style>text{font:11px system-ui,sans-serif}.title{font-size:13px;font-weight:700}.label{font-weight:600}</style>";
  return el("svg", {
    xmlns: "http://www.w3.org/2000/svg",
    class: "allocation-map",
    width: W + 2 * LEFT,
    height: y,
    viewBox: `0 0 ${W + 2 * LEFT} ${y}`,
  }, style + parts);
}

/** Maps the whole image under `node` and draws it. */
export async function renderMapSvg(node: BlockNode, opts: { title: string }): Promise<string> {
  const size = node.length;
  const entries = await mapExtents(node, 0, size, false);
  return mapSvg(entries, await mapLayers(node), { title: opts.title, size });
}
