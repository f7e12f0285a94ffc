/**
 * `blkgraph report`: the HTML page is self-contained and holds what the
 * trace holds — checked against the trace JSON itself (pure Deno, runs
 * everywhere) and, where Chromium is installed, in the rendered page (DOM
 * after the page's script ran, zoom, and a screenshot of the timeline).
 */

import assert from "node:assert/strict";
import { countColour, decodePng, noChromium, openPage } from "../_helpers/chromium.ts";
import { tempDir } from "../_helpers/qemu.ts";
import { makeTrace } from "./_trace_fixture.ts";
import { cli } from "./_run.ts";

interface Ev {
  name: string;
  cat?: string;
  ph: string;
  ts: number;
  dur?: number;
  tid: number;
  args?: { error?: string; fua?: boolean };
}
interface Doc {
  traceEvents: Ev[];
  otherData: { blkgraph: { graph: { name: string; driver: string; lanes: number[] }[] } };
}

const count = (html: string, re: RegExp) => (html.match(re) ?? []).length;

async function report(dir: string, extra: string[] = []): Promise<{ html: string; doc: Doc; path: string; image: string }> {
  const { image, trace } = await makeTrace(dir);
  const path = `${dir}/report.html`;
  const r = await cli(["report", ...extra.map((a) => a.replace("IMAGE", image)), "-o", path, trace]);
  assert.equal(r.code, 0, r.stderr);
  return { html: await Deno.readTextFile(path), doc: JSON.parse(await Deno.readTextFile(trace)), path, image };
}

/** Writes on `node` that completed before its last successful flush began: what the flushes made durable. */
function durableWrites(doc: Doc, node: string): number {
  const tids = new Set(doc.otherData.blkgraph.graph.find((n) => n.name === node)!.lanes);
  const on = doc.traceEvents.filter((e) => e.ph === "X" && tids.has(e.tid) && !e.args?.error);
  const flushes = on.filter((e) => e.cat === "flush");
  const last = Math.max(...flushes.map((f) => f.ts));
  return on.filter((e) =>
    e.cat === "request" && ["write", "write-zeroes", "discard", "truncate"].includes(e.name) && e.ts + e.dur! <= last && !e.args?.fua
  ).length;
}

Deno.test("report writes a self-contained page: no network, no external scripts or styles", async () => {
  await using dir = await tempDir();
  const { html } = await report(dir.path);
  assert.match(html, /<meta http-equiv="Content-Security-Policy" content="default-src 'none';/);
  assert.equal(count(html, /<script[^>]*\ssrc=/g), 0);
  assert.equal(count(html, /<link\b/g), 0);
  assert.deepEqual([...new Set(html.match(/https?:\/\/[^\s"'<)]+/g) ?? [])], ["http://www.w3.org/2000/svg"]);
});

Deno.test("report draws every node of the graph and a timeline mark for every span and instant of the trace", async () => {
  await using dir = await tempDir();
  const { html, doc } = await report(dir.path);
  for (const n of doc.otherData.blkgraph.graph) assert.ok(html.includes(`class="node" data-node="${n.name}"`), n.name);
  assert.equal(count(html, /<rect class="span /g), doc.traceEvents.filter((e) => e.ph === "X").length);
  assert.equal(count(html, /<line class="instant /g), doc.traceEvents.filter((e) => e.ph === "i").length);
  assert.equal(count(html, /<rect class="span op-throttle-wait/g), doc.traceEvents.filter((e) => e.cat === "throttle").length);
  assert.ok(count(html, /<rect class="span op-throttle-wait/g) > 0, "the fixture's throttle waited");
  assert.equal(count(html, /<line class="instant cat-inject/g), 1);
  assert.equal(count(html, /class="span op-[a-z-]+ failed"/g), doc.traceEvents.filter((e) => e.ph === "X" && e.args?.error).length);
});

Deno.test("report's per-node table counts each operation as the trace does", async () => {
  await using dir = await tempDir();
  const { html, doc } = await report(dir.path);
  const stats = html.slice(html.indexOf('<div id="stats">'), html.indexOf("</div>", html.indexOf('<div id="stats">')));
  for (const n of doc.otherData.blkgraph.graph) {
    const tids = new Set(n.lanes);
    const ops = new Map<string, number>();
    for (const e of doc.traceEvents) {
      if (e.ph === "X" && tids.has(e.tid) && e.cat !== "throttle") ops.set(e.name, (ops.get(e.name) ?? 0) + 1);
    }
    for (const [op, c] of ops) {
      assert.ok(stats.includes(`<td class="l">${n.driver} ${n.name}</td><td>${op}</td><td>${c}</td>`), `${n.name} ${op} ${c}`);
    }
  }
  assert.match(stats, /<th>p50<\/th><th>p90<\/th><th>p99<\/th><th>max<\/th>/);
});

Deno.test("report's flush epochs count the writes each flush made durable on the file node", async () => {
  await using dir = await tempDir();
  const { html, doc } = await report(dir.path);
  const file = doc.otherData.blkgraph.graph.find((n) => n.driver === "file")!;
  const at = html.indexOf(`<div class="epochs" data-node="${file.name}">`);
  assert.ok(at >= 0, "the file node has an epoch view");
  const section = html.slice(at, html.indexOf("</table></div>", at));
  const rows = [...section.matchAll(/<tr><td class="l">(\d+)<\/td><td>[^<]*<\/td><td>[^<]*<\/td><td>(\d+)<\/td>/g)];
  assert.ok(rows.length >= 2, "one row per flush");
  assert.equal(rows.reduce((n, r) => n + Number(r[2]), 0), durableWrites(doc, file.name));
  assert.ok(count(section, /<rect class="flush"/g) === rows.length);
});

Deno.test("report --image adds the allocation map of the image", async () => {
  await using dir = await tempDir();
  const { html } = await report(dir.path, ["--image=IMAGE", "-f", "qcow2"]);
  const map = html.slice(html.indexOf('<div id="map">'));
  for (const k of ["header", "l1", "l2", "refcount-table", "refcount-block"]) assert.ok(map.includes(`class="meta kind-${k}"`), k);
});

Deno.test("report refuses a file that is not a blkgraph trace, naming what is missing", async () => {
  await using dir = await tempDir();
  await Deno.writeTextFile(`${dir.path}/x.json`, JSON.stringify({ traceEvents: [] }));
  const r = await cli(["report", "-o", `${dir.path}/r.html`, `${dir.path}/x.json`]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /otherData\.blkgraph\.graph is missing/);
  await Deno.writeTextFile(`${dir.path}/y.json`, "{not json");
  assert.match((await cli(["report", `${dir.path}/y.json`])).stderr, /it is not JSON/);
});

Deno.test({
  name: "report renders in headless Chromium: the DOM holds the spans, zoom redraws the axis, the screenshot shows the timeline",
  ignore: noChromium(),
  async fn() {
    await using dir = await tempDir();
    const { path, doc } = await report(dir.path, ["--image=IMAGE", "-f", "qcow2"]);
    const page = await openPage();
    try {
      await page.load(`file://${path}`);
      assert.equal(await page.evaluate<string>("document.body.dataset.ready"), "1", "the page's script ran");
      const spans = doc.traceEvents.filter((e) => e.ph === "X").length;
      assert.equal(await page.evaluate<number>("document.querySelectorAll('#timeline rect.span').length"), spans);
      assert.equal(await page.evaluate<number>("document.querySelectorAll('#graph g.node').length"), doc.otherData.blkgraph.graph.length);
      assert.ok(await page.evaluate<number>("document.querySelectorAll('#map rect.meta').length") > 0);
      const before = await page.evaluate<string[]>("[...document.querySelectorAll('#timeline .axis text')].map(t => t.textContent)");
      await page.evaluate("document.querySelector('.zoombar[data-for=timeline] button[data-zoom=\"0.5\"]').click()");
      const view = await page.evaluate<{ a: number; b: number; hi: number }>(
        "(() => { const s = document.getElementById('timeline'); return { a: +s.dataset.viewA, b: +s.dataset.viewB, hi: +s.dataset.hi }; })()",
      );
      assert.ok(Math.abs(view.b - view.a - view.hi / 2) < view.hi * 1e-6, "zoom in halves the visible span");
      const after = await page.evaluate<string[]>("[...document.querySelectorAll('#timeline .axis text')].map(t => t.textContent)");
      assert.notDeepEqual(after, before, "the axis was redrawn");
      await page.evaluate("document.querySelector('.zoombar[data-for=timeline] button[data-zoom=reset]').click()");
      const box = await page.evaluate<{ x: number; y: number; width: number; height: number }>(
        "(() => { const r = document.getElementById('timeline').getBoundingClientRect(); return { x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height }; })()",
      );
      const png = await page.screenshot(box);
      const keep = Deno.env.get("BLKGRAPH_KEEP_SCREENSHOT");
      if (keep) await Deno.writeFile(keep, png);
      const img = decodePng(png);
      assert.equal(img.width, Math.round(box.width));
      for (const [what, colour] of [["write", "#f28e2b"], ["read", "#4e79a7"], ["flush", "#e15759"]]) {
        assert.ok(countColour(img, colour) > 0, `the screenshot shows ${what} spans (${colour})`);
      }
    } finally {
      await page.close();
    }
  },
});
