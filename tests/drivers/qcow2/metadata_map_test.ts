/**
 * `metadataExtents()` of qcow2 images QEMU wrote: together with the data
 * clusters qemu-img map reports, the metadata clusters are exactly the
 * clusters with a non-zero refcount (read straight from the file here, not
 * through the driver), and each kind shows up where QEMU put it.
 */

import assert from "node:assert/strict";
import { createImage, type MetadataExtent, open } from "../../../mod.ts";
import { runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

/** Clusters with a non-zero refcount, decoded from the file's refcount table (16-bit refcounts). */
async function refcounted(path: string): Promise<Set<number>> {
  const f = await Deno.readFile(path);
  const v = new DataView(f.buffer);
  const cs = 2 ** v.getUint32(20);
  assert.equal(v.getUint32(96), 4, "the test decodes 16-bit refcounts only");
  const rt = Number(v.getBigUint64(48));
  const rtClusters = v.getUint32(56);
  const out = new Set<number>();
  for (let i = 0; i < (rtClusters * cs) / 8; i++) {
    const block = Number(v.getBigUint64(rt + i * 8) & ~0x1ffn);
    if (!block) continue;
    for (let j = 0; j < cs / 2; j++) {
      if (block + j * 2 + 2 <= f.length && v.getUint16(block + j * 2)) out.add(i * (cs / 2) + j);
    }
  }
  return out;
}

/** Host clusters of the image's own data, from qemu-img map. */
async function dataClusters(path: string, cs: number): Promise<Set<number>> {
  const r = await runOk("qemu-img", ["map", "--output=json", "-f", "qcow2", path]);
  const out = new Set<number>();
  for (const e of JSON.parse(r.stdout) as { depth: number; data: boolean; offset?: number; length: number }[]) {
    if (e.depth !== 0 || !e.data || e.offset === undefined) continue;
    for (let o = e.offset; o < e.offset + e.length; o += cs) out.add(o / cs);
  }
  return out;
}

async function extents(path: string): Promise<MetadataExtent[]> {
  await using n = await open({ driver: "qcow2", file: { driver: "file", filename: path } }, { readOnly: true });
  return await n.metadataExtents();
}

function clustersOf(ext: MetadataExtent[], cs: number): Set<number> {
  const out = new Set<number>();
  for (const e of ext) for (let o = e.offset; o < e.offset + e.length; o += cs) out.add(o / cs);
  return out;
}

Deno.test({
  name: "qcow2 metadataExtents() and qemu-img map's data clusters are exactly the refcounted clusters (data, snapshot, bitmap)",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", path, "64M"]);
    await runOk("qemu-io", ["-c", "write -P 1 0 1M", "-c", "write -P 2 40M 64k", path]);
    await runOk("qemu-img", ["snapshot", "-c", "s1", path]);
    await runOk("qemu-img", ["bitmap", "--add", path, "bm0"]);
    await runOk("qemu-io", ["-c", "write -P 3 8M 64k", path]); // new cluster: the bitmap gets a data cluster
    const ext = await extents(path);
    const cs = 65536;
    const meta = clustersOf(ext, cs);
    const data = await dataClusters(path, cs);
    assert.deepEqual([...meta].filter((c) => data.has(c)), [], "metadata and data clusters are disjoint");
    const union = new Set([...meta, ...data]);
    assert.deepEqual([...union].sort((a, b) => a - b), [...(await refcounted(path))].sort((a, b) => a - b));
    const kinds = new Set(ext.map((e) => e.kind));
    for (
      const k of [
        "header",
        "l1",
        "l2",
        "refcount-table",
        "refcount-block",
        "snapshot-table",
        "snapshot-l1",
        "bitmap-directory",
        "bitmap-table",
        "bitmap-data",
      ]
    ) {
      assert.ok(kinds.has(k), `${k} is listed`);
    }
    assert.deepEqual(ext.filter((e) => e.kind === "header"), [{ kind: "header", offset: 0, length: cs, label: "header and extensions" }]);
    assert.equal(ext.filter((e) => e.kind === "l2").length, 1, "one L2 table maps 512 MiB with 64 KiB clusters");
  },
});

Deno.test({
  name: "qcow2 metadataExtents() lists an L2 table only a snapshot still uses as snapshot-l2",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/s.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "16M"]);
    await runOk("qemu-io", ["-c", "write -P 1 0 128k", path]);
    await runOk("qemu-img", ["snapshot", "-c", "before", path]);
    await runOk("qemu-io", ["-c", "write -P 2 0 64k", path]); // copies the shared L2 table and one data cluster
    const ext = await extents(path);
    const cs = 65536;
    const snapL2 = ext.filter((e) => e.kind === "snapshot-l2");
    assert.equal(snapL2.length, 1);
    assert.match(snapL2[0].label!, /snapshot 'before' L2 table 0/);
    const activeL2 = ext.filter((e) => e.kind === "l2");
    assert.equal(activeL2.length, 1);
    assert.notEqual(activeL2[0].offset, snapL2[0].offset);
    // What is refcounted and neither metadata nor active data: the one data cluster only the snapshot still maps.
    const meta = clustersOf(ext, cs);
    const data = await dataClusters(path, cs);
    const rest = [...(await refcounted(path))].filter((c) => !meta.has(c) && !data.has(c));
    assert.equal(rest.length, 1);
  },
});

Deno.test("metadataExtents() is ENOTSUP on a node whose driver keeps no metadata map, and a filter asks its child", async () => {
  await using raw = await open({ driver: "raw", file: { driver: "memory", size: 65536 } });
  await assert.rejects(
    raw.metadataExtents(),
    (e: Error & { code?: string }) => e.code === "ENOTSUP" && /does not support it/.test(e.message),
  );
  await using dir = await tempDir();
  const path = `${dir.path}/f.qcow2`;
  await createImage(path, "qcow2", 1 << 20);
  await using top = await open({ driver: "throttle", limits: {}, file: { driver: "qcow2", file: { driver: "file", filename: path } } });
  const ext = await top.metadataExtents();
  assert.equal(ext[0].kind, "header");
  assert.ok(ext.some((e) => e.kind === "refcount-table"));
});
