/**
 * QEMU's metadata overlap checks (issue 9.16): a write that would land on
 * the header, an L1/L2 table, the refcount table or a refcount block, the
 * snapshot table, a snapshot's tables or the bitmap directory is refused
 * with EIO, QEMU's message and the corrupt bit. Images are made by blkgraph
 * (so the tests run without QEMU) or by qemu-img for snapshots and bitmaps;
 * where qemu-io is installed it runs the same write on a copy and its
 * stderr line must be our error message.
 */

import assert from "node:assert/strict";
import { BlockError, CorruptImageError, createImage, open } from "../../../mod.ts";
import { hasTool, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { layoutOf, regionOf } from "../../fuzz/_layout.ts";
import { parseOverlapOptions } from "../../../drivers/qcow2/_overlap.ts";
import { cli } from "../../cli/_run.ts";

/** A 1 MiB qcow2 image (64 KiB clusters) with guest cluster 0 written, made by blkgraph. */
async function makeImage(path: string, opts: Record<string, string> = {}): Promise<void> {
  await createImage(path, "qcow2", 1 << 20, { options: opts });
  await using img = await open({ driver: "qcow2", file: { driver: "file", filename: path } });
  await img.pwrite(0, new Uint8Array(65536).fill(1));
}

/** Points L2 entry `index` of the first L2 table at host `target`, COPIED (an in-place write goes there). */
async function pointEntryAt(path: string, target: number, index = 1): Promise<void> {
  const img = await Deno.readFile(path);
  const v = new DataView(img.buffer);
  const l1 = Number(v.getBigUint64(40));
  const l2 = Number(v.getBigUint64(l1) & 0x00fffffffffffe00n);
  v.setBigUint64(l2 + index * 8, (1n << 63n) | BigInt(target));
  await Deno.writeFile(path, img);
}

/** Sets the refcount of cluster 0 to 0 (16-bit refcounts). */
async function zeroHeaderRefcount(path: string): Promise<void> {
  const img = await Deno.readFile(path);
  const v = new DataView(img.buffer);
  const rt = Number(v.getBigUint64(48));
  const rb = Number(v.getBigUint64(rt));
  v.setUint16(rb, 0);
  await Deno.writeFile(path, img);
}

function corruptBit(img: Uint8Array): boolean {
  return (new DataView(img.buffer).getUint32(76) & 2) !== 0;
}

/** Runs `write -P 0x22 off len` through blkgraph; returns the error (or undefined). */
async function ourWrite(spec: Record<string, unknown>, off: number, len: number): Promise<BlockError | undefined> {
  await using img = await open(spec);
  try {
    await img.pwrite(off, new Uint8Array(len).fill(0x22));
    await img.flush();
  } catch (e) {
    if (!(e instanceof BlockError)) throw e;
    return e;
  }
  return undefined;
}

/** qemu-io's corruption line for the same write (undefined when it reported none). */
async function qemuWrite(path: string, off: number, len: number, json?: Record<string, unknown>): Promise<string | undefined> {
  const target = json ? `json:${JSON.stringify(json)}` : path;
  const r = await run("qemu-io", ["-c", `write -P 0x22 ${off} ${len}`, target]);
  return r.stderr.split("\n").find((l) => l.startsWith("qcow2: "));
}

function fileSpec(path: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { driver: "qcow2", ...extra, file: { driver: "file", filename: path } };
}

/** One overlap case: our error message must be QEMU's line, and both set the corrupt bit. */
async function expectOverlap(path: string, what: string, off = 65536, len = 4096): Promise<void> {
  const copy = `${path}.qemu`;
  await Deno.copyFile(path, copy);
  const err = await ourWrite(fileSpec(path), off, len);
  assert.ok(err instanceof CorruptImageError, `expected a corruption error, got ${err}`);
  assert.equal(err.code, "EIO");
  assert.equal(err.message, `qcow2: Marking image as corrupt: ${what}; further corruption events will be suppressed`);
  assert.ok(corruptBit(await Deno.readFile(path)), "the corrupt bit is set");
  if (hasTool("qemu-io")) {
    assert.equal(await qemuWrite(copy, off, len), err.message, "qemu-io says the same");
    assert.ok(corruptBit(await Deno.readFile(copy)), "qemu-io set the corrupt bit too");
  }
}

Deno.test("qcow2 refuses to allocate an L2 table at offset 0 when cluster 0's refcount is 0 (issue 9.16 reproducer)", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.qcow2`;
  await createImage(path, "qcow2", 1 << 20);
  await zeroHeaderRefcount(path);
  await expectOverlap(path, "Preventing invalid allocation of L2 table at offset 0", 65536, 65536);
  // The image still probes as qcow2 and reads as before: nothing was written over the header.
  await using ro = await open(path, { readOnly: true });
  assert.equal(ro.driver.name, "qcow2");
  const back = new Uint8Array(65536);
  await ro.pread(65536, back);
  assert.ok(back.every((b) => b === 0));
});

Deno.test("qcow2 refuses a data cluster allocated over the header (overlaps with qcow2_header)", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.qcow2`;
  await makeImage(path);
  await zeroHeaderRefcount(path);
  await expectOverlap(path, "Preventing invalid write on metadata (overlaps with qcow2_header)");
});

for (const kind of ["l1", "l2", "refcount-table", "refcount-block"] as const) {
  const names = { l1: "active L1 table", l2: "active L2 table", "refcount-table": "refcount table", "refcount-block": "refcount block" };
  Deno.test(`qcow2 refuses an in-place write over the ${names[kind]} (overlaps with ${names[kind]})`, async () => {
    await using d = await tempDir();
    const path = `${d.path}/x.qcow2`;
    await makeImage(path);
    const target = regionOf(layoutOf(await Deno.readFile(path)), kind)!.offset;
    await pointEntryAt(path, target);
    await expectOverlap(path, `Preventing invalid write on metadata (overlaps with ${names[kind]})`);
  });
}

Deno.test("qcow2 with overlap-check=none writes over metadata, as QEMU does", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.qcow2`;
  await makeImage(path);
  const l1 = regionOf(layoutOf(await Deno.readFile(path)), "l1")!.offset;
  await pointEntryAt(path, l1);
  assert.equal(await ourWrite(fileSpec(path, { "overlap-check": "none" }), 65536, 4096), undefined);
  const img = await Deno.readFile(path);
  assert.equal(img[l1], 0x22, "the L1 table was overwritten");
  assert.ok(!corruptBit(img));
});

Deno.test("qcow2 overlap-check.<structure> turns one check off or on over the template", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.qcow2`;
  await makeImage(path);
  const l1 = regionOf(layoutOf(await Deno.readFile(path)), "l1")!.offset;
  await pointEntryAt(path, l1);
  const saved = await Deno.readFile(path);
  // Default template, active-l1 off: the write goes through.
  assert.equal(await ourWrite(fileSpec(path, { "overlap-check": { "active-l1": false } }), 65536, 4096), undefined);
  await Deno.writeFile(path, saved);
  // Template none, active-l1 on: refused.
  const err = await ourWrite(fileSpec(path, { "overlap-check": { template: "none", "active-l1": true } }), 65536, 4096);
  assert.match(err?.message ?? "", /overlaps with active L1 table/);
});

Deno.test("qcow2 refuses an unknown overlap-check template with QEMU's message", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.qcow2`;
  await makeImage(path);
  const ours = await open(fileSpec(path, { "overlap-check": "bogus" })).then(() => "", (e: Error) => e.message);
  assert.equal(
    ours,
    "Unsupported value 'bogus' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all",
  );
  if (hasTool("qemu-io")) {
    const r = await run("qemu-io", ["-c", "read 0 512", `json:${JSON.stringify(fileSpec(path, { "overlap-check": "bogus" }))}`]);
    assert.ok(r.stderr.includes(ours), r.stderr);
  }
});

Deno.test("parseOverlapOptions() knows QEMU's templates and names each option it refuses", () => {
  assert.equal(parseOverlapOptions({ "overlap-check": "none" }), 0);
  assert.equal(parseOverlapOptions({ "overlap-check": "constant" }), 0x12b);
  assert.equal(parseOverlapOptions({ "overlap-check": "cached" }), 0x17f);
  assert.equal(parseOverlapOptions({ "overlap-check": "all" }), 0x1ff);
  assert.throws(() => parseOverlapOptions({ "overlap-check": { "main-headr": true } }), /overlap-check\.main-headr/);
  assert.throws(() => parseOverlapOptions({ "overlap-check": { "active-l2": "maybe" } }), /'maybe'.*overlap-check\.active-l2/);
});

Deno.test("qcow2 writes of an image with an external data file are not checked against the image file's metadata", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.qcow2`;
  await createImage(path, "qcow2", 1 << 20, { options: { data_file: `${d.path}/x.data` } });
  // Guest offset 0 is data-file offset 0: no header there.
  assert.equal(await ourWrite(fileSpec(path), 0, 65536), undefined);
});

Deno.test("qcow2 neither frees nor discards a cluster a wrong L2 entry shared with the L1 table", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.qcow2`;
  await makeImage(path);
  const l1 = regionOf(layoutOf(await Deno.readFile(path)), "l1")!.offset;
  // Guest cluster 1 claims the L1 table's cluster (not COPIED, so it is freed, not written, on discard).
  const img = await Deno.readFile(path);
  const v = new DataView(img.buffer);
  const l2 = Number(v.getBigUint64(l1) & 0x00fffffffffffe00n);
  v.setBigUint64(l2 + 8, BigInt(l1));
  await Deno.writeFile(path, img);
  {
    await using node = await open(fileSpec(path));
    await node.pdiscard(65536, 65536);
  }
  const after = await Deno.readFile(path);
  assert.deepEqual(after.subarray(l1, l1 + 8), img.subarray(l1, l1 + 8), "the L1 table keeps its bytes");
  // The L1 table keeps its refcount: the image is consistent again (QEMU frees it, leaving refcount 0).
  await using node = await open(fileSpec(path), { readOnly: true, check: true });
  const r = await node.check();
  assert.equal(r.corruptions, 0, r.messages.join("\n"));
  assert.equal(r.leaks, 0, r.messages.join("\n"));
  if (hasTool("qemu-img")) assert.equal((await run("qemu-img", ["check", "-U", path])).code, 0);
});

// ---- structures only qemu-img makes here (snapshots, bitmaps) ------------

async function qemuImage(dir: string, ...steps: string[][]): Promise<string> {
  const path = `${dir}/q.qcow2`;
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
  await runOk("qemu-io", ["-c", "write -P 1 0 64k", path]);
  for (const s of steps) await runOk(s[0], [...s.slice(1), path]);
  return path;
}

Deno.test({
  name: "qcow2 refuses a write over the snapshot table and a snapshot's L1 table, as qemu-io does",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    for (const [kind, name] of [["snapshot-table", "snapshot table"], ["snapshot-l1", "inactive L1 table"]]) {
      await using d = await tempDir();
      const path = await qemuImage(d.path, ["qemu-img", "snapshot", "-c", "s1"], ["qemu-io", "-c", "write -P 2 0 64k"]);
      const target = regionOf(layoutOf(await Deno.readFile(path)), kind)!.offset;
      await pointEntryAt(path, target);
      await expectOverlap(path, `Preventing invalid write on metadata (overlaps with ${name})`);
    }
  },
});

Deno.test({
  name: "qcow2 checks a snapshot's L2 tables only with overlap-check=all, as QEMU does",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    // The second write copies the L2 table: the old one is the snapshot's only.
    const path = await qemuImage(d.path, ["qemu-img", "snapshot", "-c", "s1"], ["qemu-io", "-c", "write -P 2 0 64k"]);
    const l = layoutOf(await Deno.readFile(path));
    const target = l.regions.find((r) => r.kind === "snapshot-l2" && !l.regions.some((a) => a.kind === "l2" && a.offset === r.offset))!;
    await pointEntryAt(path, target.offset);
    const saved = await Deno.readFile(path);
    // Default (cached): the write goes through, for QEMU too.
    assert.equal(await ourWrite(fileSpec(path), 65536, 4096), undefined);
    await Deno.writeFile(`${path}.q`, saved);
    assert.equal(await qemuWrite(`${path}.q`, 65536, 4096), undefined);
    // all: refused with QEMU's line.
    await Deno.writeFile(path, saved);
    const err = await ourWrite(fileSpec(path, { "overlap-check": "all" }), 65536, 4096);
    await Deno.writeFile(`${path}.q`, saved);
    const line = await qemuWrite(`${path}.q`, 65536, 4096, fileSpec(`${path}.q`, { "overlap-check": "all" }));
    assert.equal(err?.message, line);
    assert.match(line ?? "", /overlaps with inactive L2 table/);
  },
});

Deno.test({
  name: "qcow2 refuses a write over the bitmap directory, as qemu-io does",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const path = await qemuImage(d.path);
    await runOk("qemu-img", ["bitmap", "--add", path, "b0"]);
    const dir = regionOf(layoutOf(await Deno.readFile(path)), "bitmap-directory")!;
    // The directory is not cluster aligned on its own; aim at its cluster.
    const cs = 65536;
    await pointEntryAt(path, Math.floor(dir.offset / cs) * cs);
    await expectOverlap(path, "Preventing invalid write on metadata (overlaps with bitmap directory)");
  },
});

Deno.test("qcow2 fails reads with ENOMEDIUM after an overlap marked the image corrupt (QEMU detaches the driver); read-only it reads", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.qcow2`;
  await createImage(path, "qcow2", 1 << 20);
  await zeroHeaderRefcount(path);
  {
    await using img = await open(fileSpec(path));
    await assert.rejects(img.pwrite(65536, new Uint8Array(65536).fill(0x11)), CorruptImageError);
    await assert.rejects(
      img.pread(65536, new Uint8Array(65536)),
      (e: BlockError) => e.code === "ENOMEDIUM" && /marked corrupt/.test(e.message),
    );
  }
  if (hasTool("qemu-io")) {
    const copy = `${d.path}/q.qcow2`;
    await createImage(copy, "qcow2", 1 << 20);
    await zeroHeaderRefcount(copy);
    const r = await run("qemu-io", ["-c", "write -P 0x11 64k 64k", "-c", "read -P 0x11 64k 64k", copy]);
    assert.match(r.stdout, /write failed: Input\/output error\nread failed: /);
  }
  await using ro = await open(path, { readOnly: true });
  await ro.pread(65536, new Uint8Array(65536));
});

Deno.test({
  name: "blkgraph io prints what qemu-io prints for the issue 9.16 reproducer, and both leave the same bytes",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const ours = `${d.path}/ours.qcow2`;
    const theirs = `${d.path}/theirs.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ours, "1M"]);
    await zeroHeaderRefcount(ours);
    await Deno.copyFile(ours, theirs);
    // After the refusal the node is unusable: ENOMEDIUM for every request, a flush that does nothing.
    const cmds = ["write -P 0x11 64k 64k", "read -P 0x11 64k 64k", "write -P 0x11 0 512", "flush", "discard 0 64k", "write -z 0 64k"];
    const args = cmds.flatMap((c) => ["-c", c]);
    const q = await run("qemu-io", [...args, theirs]);
    const b = await cli(["io", ...args, ours]);
    assert.match(q.stdout, /^write failed: Input\/output error\nread failed: No medium found\n/);
    assert.equal(b.stdout, q.stdout);
    assert.equal(b.stderr, q.stderr);
    assert.equal(b.code, q.code);
    assert.deepEqual(await Deno.readFile(ours), await Deno.readFile(theirs));
  },
});

Deno.test("qcow2 flush fails after an overlap when completed writes still waited for their metadata (they are lost), and succeeds when none did", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.qcow2`;
  await makeImage(path);
  await pointEntryAt(path, regionOf(layoutOf(await Deno.readFile(path)), "l1")!.offset);
  const saved = await Deno.readFile(path);
  {
    await using img = await open(fileSpec(path));
    await img.pwrite(131072, new Uint8Array(4096).fill(0x33)); // a new cluster: its L2 entry waits in the cache
    await assert.rejects(img.pwrite(65536, new Uint8Array(4096).fill(0x22)), CorruptImageError);
    await assert.rejects(img.flush(), (e: BlockError) => e.code === "EIO" && /those writes are lost/.test(e.message));
  }
  await Deno.writeFile(path, saved);
  {
    await using img = await open(fileSpec(path));
    await assert.rejects(img.pwrite(65536, new Uint8Array(4096).fill(0x22)), CorruptImageError);
    await img.flush();
  }
});
