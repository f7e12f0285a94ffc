/**
 * `map --output=svg`: the picture's extents are qemu-img map's extents, its
 * metadata marks are the driver's metadata extents per layer, and it is
 * well-formed SVG that Chromium renders.
 */

import assert from "node:assert/strict";
import { open } from "../../mod.ts";
import { noChromium, openPage } from "../_helpers/chromium.ts";
import { runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

interface QemuMap {
  start: number;
  length: number;
  depth: number;
  data: boolean;
  offset?: number;
}

async function chain(dir: string): Promise<{ base: string; top: string }> {
  const base = `${dir}/base.qcow2`;
  const top = `${dir}/top.qcow2`;
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "8M"]);
  await runOk("qemu-io", ["-c", "write -P 1 0 1M", "-c", "write -P 2 4M 64k", base]);
  await runOk("qemu-img", ["snapshot", "-c", "s1", base]);
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
  await runOk("qemu-io", ["-c", "write -P 5 2M 128k", "-c", "write -P 6 6M 64k", top]);
  return { base, top };
}

const count = (s: string, re: RegExp) => (s.match(re) ?? []).length;

Deno.test({
  name: "map --output=svg draws qemu-img map's extents on the guest strip and each layer's data against its host offsets",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const { top } = await chain(dir.path);
    const r = await cli(["map", "--output=svg", top]);
    assert.equal(r.code, 0, r.stderr);
    const svg = r.stdout;
    const qemu: QemuMap[] = JSON.parse((await runOk("qemu-img", ["map", "--output=json", top])).stdout);
    const guest = [...svg.matchAll(/<rect class="guest [^"]*"[^>]*data-start="(\d+)" data-length="(\d+)"/g)].map((
      m,
    ) => [Number(m[1]), Number(m[2])]);
    assert.deepEqual(guest, qemu.map((e) => [e.start, e.length]));
    for (const depth of [0, 1]) {
      const plot = svg.slice(
        svg.indexOf(`<g class="plot layer-${depth}"`),
        svg.indexOf("</g></g>", svg.indexOf(`<g class="plot layer-${depth}"`)),
      );
      assert.equal(
        count(plot, /<line class="extent"/g),
        qemu.filter((e) => e.depth === depth && e.data && e.offset !== undefined).length,
        `layer ${depth}`,
      );
    }
    assert.match(svg, /layer 0: qcow2 [^<]*top\.qcow2/);
    assert.match(svg, /layer 1: qcow2 [^<]*base\.qcow2/);
  },
});

Deno.test({
  name: "map --output=svg marks every metadata extent of every layer, coloured and labelled by kind",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const { top } = await chain(dir.path);
    const svg = (await cli(["map", "--output=svg", top])).stdout;
    await using node = await open({ driver: "qcow2", file: { driver: "file", filename: top } }, { readOnly: true });
    const layers = [await node.metadataExtents(), await node.backing!.metadataExtents()];
    for (const [depth, ext] of layers.entries()) {
      const at = svg.indexOf(`<g class="host-strip layer-${depth}"`);
      const strip = svg.slice(at, svg.indexOf("</g></g>", at));
      const drawn = [...strip.matchAll(/<rect class="meta kind-([a-z0-9-]+)"[^>]*data-offset="(\d+)" data-length="(\d+)"/g)].map((
        m,
      ) => [m[1], Number(m[2]), Number(m[3])]);
      assert.deepEqual(drawn, ext.map((e) => [e.kind, e.offset, e.length]), `layer ${depth}`);
    }
    assert.ok(layers[1].some((e) => e.kind === "snapshot-table"), "the base layer has a snapshot table");
    const fills = new Map<string, Set<string>>();
    for (const m of svg.matchAll(/<rect class="meta kind-([a-z0-9-]+)"[^>]*fill="(#[0-9a-f]{6})"/g)) {
      (fills.get(m[1]) ?? fills.set(m[1], new Set()).get(m[1])!).add(m[2]);
    }
    assert.ok([...fills.values()].every((f) => f.size === 1), "one colour per kind");
    const colours = [...fills.values()].map((f) => [...f][0]);
    assert.equal(new Set(colours).size, colours.length, "kinds have distinct colours");
    for (const k of ["header", "l1", "l2", "refcount-table", "refcount-block", "snapshot-table", "snapshot-l1"]) {
      assert.match(svg, new RegExp(`<g class="legend-item"[^>]*><rect[^>]*/?>(</rect>)?<text[^>]*>${k}</text>`), `legend names ${k}`);
    }
  },
});

Deno.test("map --output=svg of a raw image draws its data without metadata", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/r.raw`;
  await Deno.writeFile(path, new Uint8Array(1 << 20).fill(7));
  const r = await cli(["map", "--output=svg", "-f", "raw", path]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(count(r.stdout, /<rect class="meta /g), 0);
  assert.ok(count(r.stdout, /<rect class="guest depth-0"/g) >= 1);
  assert.match(r.stdout, /layer 0: raw /);
});

Deno.test({
  name: "map --output=svg is well-formed SVG that Chromium parses and renders with every mark",
  ignore: ignore || noChromium(),
  async fn() {
    await using dir = await tempDir();
    const { top } = await chain(dir.path);
    const svg = (await cli(["map", "--output=svg", top])).stdout;
    const file = `${dir.path}/map.svg`;
    await Deno.writeTextFile(file, svg);
    const page = await openPage();
    try {
      await page.load(`file://${file}`);
      assert.equal(await page.evaluate<string>("document.documentElement.tagName"), "svg");
      assert.equal(await page.evaluate<number>("document.querySelectorAll('rect.meta').length"), count(svg, /<rect class="meta /g));
      assert.equal(await page.evaluate<number>("document.querySelectorAll('parsererror').length"), 0);
    } finally {
      await page.close();
    }
  },
});
