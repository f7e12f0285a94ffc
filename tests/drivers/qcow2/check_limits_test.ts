/**
 * qcow2 check on images the fuzzer damaged (issue 9.17): offsets past 2^53
 * read as zeros as in QEMU (check and repair complete with qemu-img's
 * results), more than INT_MAX clusters are refused at once (qemu-img:
 * "Check failed: File too large"), the refcount array takes the memory
 * QEMU's takes, messages are streamed, a refcount block pointer far past
 * the end of the file is rebuilt instead of growing the file to it, and
 * bitmap directory entries QEMU would not load are a corruption, not a
 * 32 GiB allocation.
 */

import assert from "node:assert/strict";
import { BlockError, type CheckResult, createImage, open } from "../../../mod.ts";
import { RefArray } from "../../../drivers/qcow2/_check_refarray.ts";
import { DiskRefcounts } from "../../../drivers/qcow2/_check_refcounts.ts";
import { hasTool, run, skipUnless, tempDir } from "../../_helpers/qemu.ts";

async function check(path: string, repair?: "all"): Promise<CheckResult> {
  await using node = await open({ driver: "qcow2", file: { driver: "file", filename: path } }, { readOnly: !repair, check: true });
  return await node.check({ repair });
}

/** qemu-img check's stderr lines and exit code. */
async function qemuCheck(path: string, repair?: "all"): Promise<{ code: number; lines: string[] }> {
  const r = await run("qemu-img", ["check", ...(repair ? ["-r", repair] : []), path]);
  return { code: r.code, lines: r.stderr.split("\n").filter(Boolean) };
}

/** 1 MiB image, guest cluster 0 written, L1 entry 0 := COPIED | 2^53. */
async function farL1(path: string): Promise<void> {
  await createImage(path, "qcow2", 1 << 20);
  {
    await using node = await open(path);
    await node.pwrite(0, new Uint8Array(65536).fill(1));
  }
  const img = await Deno.readFile(path);
  const v = new DataView(img.buffer);
  v.setBigUint64(Number(v.getBigUint64(40)), (1n << 63n) | (1n << 53n));
  await Deno.writeFile(path, img);
}

Deno.test("qcow2 check of an L1 entry at 2^53 completes with qemu-img's findings", async () => {
  await using d = await tempDir();
  const path = `${d.path}/f.qcow2`;
  await farL1(path);
  const r = await check(path);
  assert.equal(r.corruptions, 2);
  assert.equal(r.leaks, 2);
  if (hasTool("qemu-img")) {
    const q = await qemuCheck(path);
    assert.equal(q.code, 2);
    assert.deepEqual(r.messages, q.lines);
  }
});

Deno.test("qcow2 check -r all of an L1 entry at 2^53 repairs what qemu-img repairs", async () => {
  await using d = await tempDir();
  const path = `${d.path}/f.qcow2`;
  await farL1(path);
  const copy = `${d.path}/q.qcow2`;
  await Deno.copyFile(path, copy);
  const r = await check(path, "all");
  assert.equal(r.leaksFixed, 2);
  assert.equal(r.corruptionsFixed, 1);
  assert.equal(r.corruptions, 1); // the entry itself stays, for QEMU too
  if (hasTool("qemu-img")) {
    const q = await qemuCheck(copy, "all");
    assert.equal(q.code, 2);
    assert.deepEqual(r.messages, q.lines);
  }
});

Deno.test("qcow2 check refuses at once an image file of more than INT_MAX clusters, as qemu-img (File too large)", async () => {
  await using d = await tempDir();
  const path = `${d.path}/big.qcow2`;
  await createImage(path, "qcow2", 1 << 20, { options: { cluster_size: 512 } });
  await Deno.truncate(path, 2 ** 31 * 512 + 512); // sparse: 2^31 + 1 clusters
  const err = await check(path).then(() => undefined, (e) => e);
  assert.ok(err instanceof BlockError && err.code === "EFBIG", String(err));
  assert.match(err.message, /File too large/);
  if (hasTool("qemu-img")) {
    const q = await run("qemu-img", ["check", path]);
    assert.equal(q.code, 1);
    assert.match(q.stderr, /Check failed: File too large/);
  }
});

Deno.test("RefArray takes the bits of the image's refcount width per cluster and grows a cluster at a time, as QEMU's array", () => {
  for (const [order, bits] of [[0, 1], [1, 2], [2, 4], [3, 8], [4, 16], [5, 32], [6, 64]]) {
    const a = new RefArray(1 << 20, order, 65536);
    assert.equal(a.byteLength, (1 << 20) * bits / 8, `refcount_order ${order}`);
    a.set((1 << 20) + 5, 1);
    const step = 65536 * 8 / bits; // one cluster of array bytes
    assert.equal(a.byteLength, ((1 << 20) + step) * bits / 8, `grown by one cluster (order ${order})`);
    assert.equal(a.get((1 << 20) + 5), 1);
    assert.equal(a.get((1 << 20) + 4), 0);
  }
  // Packed entries keep their neighbours.
  const p = new RefArray(64, 1, 512);
  p.set(5, 3);
  p.set(6, 1);
  p.set(4, 2);
  assert.deepEqual([p.get(3), p.get(4), p.get(5), p.get(6), p.get(7)], [0, 2, 3, 1, 0]);
});

Deno.test("qcow2 check streams its lines to onMessage as it finds them, keeping none", async () => {
  await using d = await tempDir();
  const path = `${d.path}/l.qcow2`;
  await createImage(path, "qcow2", 1 << 20, { options: { cluster_size: 512 } });
  // 200 leaked clusters: refcount 1 for clusters nothing uses.
  const img = await Deno.readFile(path);
  const v = new DataView(img.buffer);
  const rb = Number(v.getBigUint64(Number(v.getBigUint64(48))));
  for (let c = 20; c < 220; c++) v.setUint16(rb + c * 2, 1);
  await Deno.writeFile(path, img.length >= 220 * 512 ? img : new Uint8Array([...img, ...new Uint8Array(220 * 512 - img.length)]));
  const lines: string[] = [];
  await using node = await open({ driver: "qcow2", file: { driver: "file", filename: path } }, { readOnly: true, check: true });
  const r = await node.check({ onMessage: (l) => lines.push(l) });
  assert.equal(r.leaks, 200);
  assert.equal(lines.length, 200);
  assert.equal(lines[0], "Leaked cluster 20 refcount=1 reference=0");
  assert.deepEqual(r.messages, []);
});

Deno.test("qcow2 check -r all rebuilds a refcount block pointer far past the end instead of growing the file to it", async () => {
  await using d = await tempDir();
  const path = `${d.path}/r.qcow2`;
  await createImage(path, "qcow2", 1 << 20, { options: { cluster_size: 512 } });
  {
    await using node = await open(path);
    await node.pwrite(0, new Uint8Array(4096).fill(3));
  }
  const img = await Deno.readFile(path);
  const v = new DataView(img.buffer);
  const rt = Number(v.getBigUint64(48));
  v.setBigUint64(rt + 8, 1n << 40n); // refcount block 1 at 1 TiB
  await Deno.writeFile(path, img);
  const r = await check(path, "all");
  assert.ok((await Deno.stat(path)).size < 1 << 20, "the file was not grown to 1 TiB");
  assert.ok(r.messages.includes("Rebuilding refcount structure"), r.messages.join("\n"));
  assert.equal(r.corruptions, 0);
  if (hasTool("qemu-img")) assert.equal((await run("qemu-img", ["check", path])).code, 0);
  await using node = await open(path, { readOnly: true });
  const back = new Uint8Array(4096);
  await node.pread(0, back);
  assert.ok(back.every((b) => b === 3));
});

Deno.test({
  name: "qcow2 check counts a bitmap directory entry QEMU would not load as a corruption, without reading its table",
  ignore: skipUnless("qemu-img"), // persistent bitmaps are made by qemu-img here
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/b.qcow2`;
    await run("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
    await run("qemu-img", ["bitmap", "--add", path, "b0"]);
    const img = await Deno.readFile(path);
    const v = new DataView(img.buffer);
    // The bitmaps extension follows the header; its directory entry's table size := 0xffffffff (32 GiB of table).
    let at = 112;
    while (v.getUint32(at) !== 0x23852875) at += 8 + Math.ceil(v.getUint32(at + 4) / 8) * 8;
    const dir = Number(v.getBigUint64(at + 8 + 16));
    v.setUint32(dir + 8, 0xffffffff);
    await Deno.writeFile(path, img);
    const r = await check(path);
    assert.ok(r.corruptions >= 1, r.messages.join("\n"));
    // QEMU's words for an entry it would not load (its open fails with them).
    assert.ok(r.messages.some((l) => /Bitmap 'b0' doesn't satisfy the constraints/.test(l)), r.messages.join("\n"));
  },
});

Deno.test("DiskRefcounts keeps a few MiB of refcount blocks whatever the image's size, writing changed ones back", async () => {
  // 64 KiB clusters (64 blocks fit in 4 MiB): a refcount table of 80 entries pointing at 80 blocks (clusters 100..179).
  const cs = 65536;
  await using file = await open({ driver: "memory", size: 200 * cs });
  const table = new Uint8Array(cs);
  const tv = new DataView(table.buffer);
  for (let i = 0; i < 80; i++) tv.setBigUint64(i * 8, BigInt((100 + i) * cs));
  await file.pwrite(cs, table);
  const disk = new DiskRefcounts(file, cs, 4);
  await disk.load(cs, 1);
  const first = (await disk.block(0))!;
  disk.write(first, 3, 7);
  for (let i = 1; i < 80; i++) await disk.block(i);
  assert.equal(disk.cached, 64);
  // Block 0 left the cache: its change is on disk already.
  const back = new Uint8Array(2);
  await file.pread(100 * cs + 6, back);
  assert.equal(new DataView(back.buffer).getUint16(0), 7);
  assert.equal(await disk.get(3), 7, "read again from the file");
});

Deno.test({
  name:
    "qcow2 check reports a v3 snapshot table entry without its 16 bytes of extra data and check -r all completes it, as qemu-img check does",
  ignore: skipUnless("qemu-img"), // internal snapshots are made by qemu-img here
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/s.qcow2`;
    await run("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
    await run("qemu-img", ["snapshot", "-c", "s1", path]);
    const img = await Deno.readFile(path);
    const v = new DataView(img.buffer);
    const table = Number(v.getBigUint64(64));
    // extra_data_size 24 -> 8: the entry now ends early (its id and name move up 16 bytes).
    v.setUint32(table + 36, 8);
    img.copyWithin(table + 48, table + 64, table + 64 + 64);
    await Deno.writeFile(path, img);
    const r = await check(path);
    assert.ok(r.messages.includes("ERROR snapshot table entry 0 is incomplete"), r.messages.join("\n"));
    assert.ok(r.corruptions >= 1);
    const q = await qemuCheck(path);
    assert.ok(q.lines.includes("ERROR snapshot table entry 0 is incomplete"), q.lines.join("\n"));
    // check -r all rewrites the table with the entry completed, as qemu-img does: both checks are clean afterwards.
    const rr = await check(path, "all");
    assert.deepStrictEqual([rr.corruptions, rr.corruptionsFixed >= 1], [0, true], rr.messages.join("\n"));
    assert.deepStrictEqual((await check(path)).corruptions, 0);
    assert.deepStrictEqual((await qemuCheck(path)).code, 0);
  },
});
