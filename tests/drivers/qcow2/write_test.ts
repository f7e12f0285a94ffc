/**
 * qcow2 write path: random and sequential writes, write-zeroes and discards
 * on images of many shapes, in both metadata modes; the result must pass
 * `qemu-img check` (no corruption, no leaks) and `qemu-img compare` against a
 * raw file holding the expected content. Without QEMU installed, the images
 * are the fixtures tests/testdata/make.sh made with the same qemu-img
 * commands, and the results are checked with blkgraph's check and reads
 * (_util.ts prints a NOTE); the tests that need qemu-img on the result are
 * skipped.
 */

import assert from "node:assert/strict";
import { BlockError, type BlockNode, open } from "../../../mod.ts";
import { type Qcow2Instance } from "../../../drivers/qcow2/mod.ts";
import { checkExitCode, checkQcow2 } from "../../../drivers/qcow2/check.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { hasQemu, unpack } from "../../_helpers/fixtures.ts";
import { qemuImage } from "./_qemu_image.ts";
import {
  assertClean,
  assertSameAsRaw,
  firstDiff,
  lcg,
  Mirror,
  openQcow2,
  qemuCreate,
  qemuIo,
  qemuOverlay,
  readAll,
  toRaw,
} from "./_util.ts";

const MiB = 1024 * 1024;

interface Shape {
  o: string;
  backing?: boolean;
  mode: "ordered" | "metadata-sync";
  size?: number;
  ops?: number;
  dataFile?: boolean;
}

/** Random writes, write-zeroes, discards and flushes, mirrored in memory. */
async function randomOps(node: BlockNode, mirror: Mirror, backing: Uint8Array | undefined, v2: boolean, seed: number, ops: number) {
  const rnd = lcg(seed);
  const size = node.length;
  const cs = (await node.info())["cluster-size"] as number;
  for (let i = 0; i < ops; i++) {
    const len = 1 + Math.floor(rnd() * 150000);
    const off = Math.floor(rnd() * (size - len));
    const op = rnd();
    if (op < 0.6) {
      const d = new Uint8Array(len).fill(1 + (i % 250));
      await node.pwrite(off, d);
      mirror.write(off, d);
    } else if (op < 0.75) {
      await node.pwriteZeroes(off, len, { mayUnmap: rnd() < 0.5 });
      mirror.set(off, 0, len);
    } else if (op < 0.9) {
      await node.pdiscard(off, len);
      const s = Math.ceil(off / cs) * cs;
      const e = Math.floor((off + len) / cs) * cs;
      // A compat=0.10 image with a backing file keeps its data on discard (no zero flag), as qemu-io shows.
      if (e > s && !(v2 && backing)) mirror.set(s, 0, e - s);
    } else {
      await node.flush();
    }
  }
}

async function exercise(shape: Shape, seed: number): Promise<void> {
  await using dir = await tempDir();
  const size = shape.size ?? 8 * MiB;
  let path = `${dir.path}/a.qcow2`;
  let backing: Uint8Array | undefined;
  if (shape.backing && !hasQemu()) {
    // make.sh's overlay over a base of 0x77 (all but the last MiB), as below.
    path = unpack(dir.path, size === 8 * MiB ? `wb-${shape.o.replace(/[=_.,]/g, "-")}.qcow2` : "wb-64k-3M.qcow2");
    backing = new Uint8Array(size).fill(0x77, 0, size - MiB);
  } else if (shape.backing) {
    const base = `${dir.path}/base.qcow2`;
    await qemuCreate(base, size);
    await qemuIo(base, `write -P 0x77 0 ${size - MiB}`);
    await toRaw(base, `${dir.path}/base.raw`);
    backing = await Deno.readFile(`${dir.path}/base.raw`);
  }
  const o = shape.dataFile ? `${shape.o},data_file=${dir.path}/a.data` : shape.o;
  if (!shape.backing || hasQemu()) await qemuCreate(path, size, o, shape.backing ? `${dir.path}/base.qcow2` : undefined);
  const mirror = new Mirror(backing ?? new Uint8Array(size));
  {
    await using node = await openQcow2(path, { "metadata-mode": shape.mode });
    await randomOps(node, mirror, backing, shape.o.includes("compat=0.10"), seed, shape.ops ?? 150);
    assert.equal(firstDiff(await readAll(node), mirror.data), -1, "our own read-back differs from the expected content");
  }
  await Deno.writeFile(`${dir.path}/expect.raw`, mirror.data);
  await assertClean(path);
  await assertSameAsRaw(path, `${dir.path}/expect.raw`);
}

const SHAPES: Shape[] = [
  { o: "cluster_size=512", mode: "ordered", size: 4 * MiB },
  { o: "cluster_size=64k", mode: "ordered", backing: true, size: 3 * MiB + 4608 },
  { o: "cluster_size=4k", mode: "ordered", backing: true },
  { o: "cluster_size=64k", mode: "ordered", backing: true },
  { o: "cluster_size=2M", mode: "ordered", size: 16 * MiB, ops: 60 },
  { o: "compat=0.10,cluster_size=4k", mode: "ordered", backing: true },
  { o: "refcount_bits=1,cluster_size=4k", mode: "ordered" },
  { o: "refcount_bits=64,cluster_size=512", mode: "ordered", size: 4 * MiB, ops: 80 },
  { o: "extended_l2=on,cluster_size=64k", mode: "ordered", backing: true },
  { o: "lazy_refcounts=on,cluster_size=4k", mode: "ordered", backing: true },
  { o: "cluster_size=4k", mode: "ordered", dataFile: true },
  { o: "cluster_size=4k", mode: "metadata-sync", backing: true, ops: 80 },
  { o: "compat=0.10,cluster_size=64k", mode: "metadata-sync", backing: true, ops: 80 },
  { o: "extended_l2=on,cluster_size=16k", mode: "metadata-sync", ops: 80 },
  { o: "refcount_bits=2,cluster_size=512", mode: "metadata-sync", size: 2 * MiB, ops: 60 },
];

SHAPES.forEach((shape, i) => {
  const what = `${shape.o}${shape.backing ? " over a backing file" : ""}${shape.dataFile ? " with a data file" : ""}`;
  Deno.test({
    name: `qcow2 random writes, zeroes and discards (${what}, ${shape.mode}) leave a clean image with the expected content`,
    fn: () => exercise(shape, 1000 + i),
  });
});

Deno.test({
  name: "qcow2 sequential writes of a whole image leave it clean and identical",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/s.qcow2`;
    await qemuCreate(path, 8 * MiB, "cluster_size=64k");
    const mirror = new Mirror(new Uint8Array(8 * MiB));
    {
      await using node = await openQcow2(path);
      for (let off = 0; off < 8 * MiB; off += 192 * 1024) {
        const d = new Uint8Array(Math.min(192 * 1024, 8 * MiB - off)).fill((off >> 16) & 0xff);
        await node.pwrite(off, d);
        mirror.write(off, d);
      }
    }
    await Deno.writeFile(`${dir.path}/expect.raw`, mirror.data);
    await assertClean(path);
    await assertSameAsRaw(path, `${dir.path}/expect.raw`);
  },
});

Deno.test({
  name: "qcow2 truncate() grows an image past 4 GiB and writes there",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/g.qcow2`;
    await qemuCreate(path, "1G", "cluster_size=4k");
    {
      await using node = await openQcow2(path);
      await node.pwrite(MiB, new Uint8Array(70000).fill(5));
      await node.truncate(6 * 2 ** 30);
      assert.equal(node.length, 6 * 2 ** 30);
      await node.pwrite(5 * 2 ** 30 - 1000, new Uint8Array(70000).fill(6));
    }
    await assertClean(path);
    const out = await qemuIo(path, `read -P 5 ${MiB} 70000`, `read -P 6 ${5 * 2 ** 30 - 1000} 70000`, `read -P 0 ${4 * 2 ** 30} 4096`);
    assert.equal(out.includes("Pattern verification failed"), false, out);
  },
});

Deno.test({
  name: "qcow2 pwriteZeroes() with mayUnmap deallocates whole clusters",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/z.qcow2`;
    await qemuCreate(path, "1M");
    {
      await using node = await openQcow2(path);
      await node.pwrite(0, new Uint8Array(3 * 65536).fill(9));
      await node.pwriteZeroes(65536, 65536, { mayUnmap: true });
      const st = await node.blockStatus(65536, 65536);
      assert.deepEqual([st.zero, st.data, st.hostOffset], [true, false, undefined]);
    }
    await assertClean(path);
  },
});

Deno.test({
  name: "qcow2 lazy refcounts keep the dirty bit while open and clear it on close",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/l.qcow2`;
    await qemuCreate(path, "1M", "lazy_refcounts=on");
    const node = await openQcow2(path);
    await node.pwrite(0, new Uint8Array(4096).fill(3));
    assert.equal((await node.info())["dirty-flag"], true);
    await node.close();
    const head = await Deno.readFile(path);
    assert.equal(new DataView(head.buffer).getUint32(76) & 1, 0);
    await assertClean(path);
  },
});

Deno.test({
  name: "qcow2 open() read-write repairs a dirty image left by a crash",
  async fn() {
    await using dir = await tempDir();
    const { path } = await qemuImage(dir.path, "dirty-abort.qcow2", async (path) => {
      await qemuCreate(path, "2M", "lazy_refcounts=on,cluster_size=4k");
      // qemu-io's abort leaves the dirty bit set and the refcounts stale.
      await new Deno.Command("qemu-io", { args: ["-c", "write -P 0x41 0 512k", "-c", "abort", path], stdout: "null", stderr: "null" })
        .output();
    });
    {
      await using node = await openQcow2(path);
      await node.pwrite(MiB, new Uint8Array(10000).fill(9));
    }
    await assertClean(path);
    const out = await qemuIo(path, "read -P 0x41 0 512k", `read -P 9 ${MiB} 10000`);
    assert.equal(out.includes("Pattern verification failed"), false, out);
  },
});

Deno.test({
  name: "qcow2 open() read-write keeps the bitmaps autoclear bit of bitmaps it maintains",
  async fn() {
    await using dir = await tempDir();
    const { path } = await qemuImage(dir.path, "w-bitmap.qcow2", async (path) => {
      await qemuCreate(path, "1M");
      await new Deno.Command("qemu-img", { args: ["bitmap", "--add", path, "b0"] }).output();
    });
    let head = await Deno.readFile(path);
    assert.equal(new DataView(head.buffer).getUint32(92) & 1, 1);
    {
      await using node = await openQcow2(path);
      await node.pwrite(0, new Uint8Array(512).fill(1));
    }
    head = await Deno.readFile(path);
    assert.equal(new DataView(head.buffer).getUint32(92) & 1, 1);
  },
});

Deno.test({
  name: "qcow2 overwrites of allocated clusters do not write metadata or flush",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/f.qcow2`;
    await qemuCreate(path, "4M");
    await using node = await openQcow2(path);
    await node.pwrite(0, new Uint8Array(MiB).fill(1));
    await node.flush();
    const file = node.file!;
    const writes = file.stats.writes;
    const flushes = file.stats.flushes;
    for (let i = 0; i < 50; i++) await node.pwrite(i * 4096, new Uint8Array(4096).fill(i));
    assert.equal(file.stats.writes - writes, 50);
    assert.equal(file.stats.flushes, flushes);
  },
});

Deno.test({
  name: "qcow2 many allocating writes share the flushes of one guest flush (ordered mode)",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/o.qcow2`;
    await qemuCreate(path, "64M");
    await using node = await openQcow2(path);
    const before = node.flushCount;
    for (let i = 0; i < 100; i++) await node.pwrite(i * 65536 * 3, new Uint8Array(4096).fill(i));
    assert.equal(node.flushCount, before, "no flush before the guest flushes");
    await node.flush();
    assert.ok(node.flushCount - before <= 3, `flushes: ${node.flushCount - before}`);
  },
});

Deno.test({
  name: "qcow2 metadata-sync mode flushes each metadata update without a guest flush",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/m.qcow2`;
    await qemuCreate(path, "4M");
    await using node = await openQcow2(path, { "metadata-mode": "metadata-sync" });
    await node.pwrite(0, new Uint8Array(4096).fill(1));
    assert.ok(node.flushCount >= 2, `flushes: ${node.flushCount}`);
    // Consistent on disk while still open (-U: share the locked image).
    if (hasQemu()) {
      const r = await run("qemu-img", ["check", "-U", path]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
    } else {
      await using file = await open({ driver: "file", filename: path, locking: "off" }, { readOnly: true });
      assert.equal(checkExitCode(await checkQcow2(file, {})), 0);
    }
  },
});

Deno.test({
  name: "qcow2 refcount table grows when the image outgrows it",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/r.qcow2`;
    await qemuCreate(path, "4M", "cluster_size=512,refcount_bits=64");
    {
      await using node = await openQcow2(path);
      const before = (node.instance as Qcow2Instance).header.refcountTableClusters;
      await node.pwrite(0, new Uint8Array(3 * MiB).fill(0x3c));
      assert.ok((node.instance as Qcow2Instance).header.refcountTableClusters > before);
    }
    await assertClean(path);
    const out = await qemuIo(path, `read -P 0x3c 0 ${3 * MiB}`);
    assert.equal(out.includes("Pattern verification failed"), false, out);
  },
});

Deno.test({
  name: "qcow2 writes to clusters shared with a snapshot copy them and keep the snapshot intact",
  async fn() {
    await using dir = await tempDir();
    const { path } = await qemuImage(dir.path, "snap4k.qcow2", async (path) => {
      await qemuCreate(path, "4M", "cluster_size=4k");
      await qemuIo(path, "write -P 0x11 0 2M");
      await runOk("qemu-img", ["snapshot", "-c", "s1", path]);
    });
    {
      await using node = await openQcow2(path);
      await node.pwrite(1000, new Uint8Array(100000).fill(0x22));
      await node.pdiscard(MiB, 65536);
      await node.pwriteZeroes(1536 * 1024, 8192, { mayUnmap: true });
    }
    await assertClean(path);
    let out = await qemuIo(path, "read -P 0x22 1000 100000", `read -P 0 ${MiB} 64k`);
    assert.equal(out.includes("Pattern verification failed"), false, out);
    // Reverting to the snapshot is qemu-img's (skipped offline: the check above shows its clusters are still referenced).
    if (!hasQemu()) return;
    await runOk("qemu-img", ["snapshot", "-a", "s1", path]);
    out = await qemuIo(path, "read -P 0x11 0 2M");
    assert.equal(out.includes("Pattern verification failed"), false, out);
    await assertClean(path);
  },
});

Deno.test({
  name: "qcow2 partial writes with extended L2 allocate only the touched subclusters",
  async fn() {
    await using dir = await tempDir();
    const { path: top } = await qemuImage(
      dir.path,
      "ov42-extl2.qcow2",
      async (path) =>
        void await qemuOverlay(dir.path, "1M", ["write -P 0x42 0 1M"], "extended_l2=on,cluster_size=64k", path.slice(dir.path.length + 1)),
    );
    {
      await using node = await openQcow2(top);
      await node.pwrite(2048 + 100, new Uint8Array(1000).fill(7)); // inside subcluster 1 (2 KiB subclusters)
      const inside = await node.blockStatus(2048, 2048);
      const after = await node.blockStatus(4096, 4096);
      assert.deepEqual([inside.allocated, inside.length], [true, 2048]);
      assert.deepEqual([after.allocated, after.depth], [false, 1]);
    }
    await assertClean(top);
    const out = await qemuIo(top, "read -P 0x42 0 2148", "read -P 7 2148 1000", "read -P 0x42 3148 62388");
    assert.equal(out.includes("Pattern verification failed"), false, out);
  },
});

Deno.test({
  name: "growing an overlay over a longer backing file makes the new area read zeros, as qemu-img resize does",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using dir = await tempDir();
    for (const compat of ["1.1", "0.10"]) {
      // compat=0.10: qemu-img refuses ("Failed to zero out new clusters"), and so do we, leaving the size.
      const v2 = compat === "0.10";
      const base = `${dir.path}/base-${compat}.qcow2`;
      const top = `${dir.path}/top-${compat}.qcow2`;
      await qemuCreate(base, "2M", `compat=${compat}`);
      await qemuIo(base, "write -P 0x77 0 2M");
      await qemuCreate(top, "1M", `compat=${compat}`, base);
      const theirs = `${dir.path}/theirs-${compat}.qcow2`;
      await Deno.copyFile(top, theirs);
      const q = await run("qemu-img", ["resize", theirs, "2M"]);
      assert.equal(q.code, v2 ? 1 : 0, q.stderr);
      if (v2) {
        await using node = await openQcow2(top);
        await assert.rejects(node.truncate(2 << 20), (e: BlockError) => e.code === "ENOTSUP" && /zero out new clusters/.test(e.message));
        assert.equal(node.length, 1 << 20);
        continue;
      }
      {
        await using node = await openQcow2(top);
        await node.truncate(2 << 20);
        const buf = new Uint8Array(1 << 20);
        await node.pread(1 << 20, buf);
        assert.equal(buf.every((b) => b === 0), true, `compat=${compat}: the grown area shows the backing file`);
      }
      await assertClean(top);
      const r = await run("qemu-img", ["compare", top, theirs]);
      assert.equal(r.code, 0, `compat=${compat}: ${r.stdout}`);
    }
  },
});

Deno.test({
  name: "discard on a compat=0.10 overlay keeps the overlay's data where qemu-io does (the backing file never shows through)",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using dir = await tempDir();
    const base = `${dir.path}/base.qcow2`;
    await qemuCreate(base, "1M", "compat=0.10");
    await qemuIo(base, "write -P 0x11 0 1M");
    const cmds = ["write -P 0x22 0 128k", "discard 0 128k"];
    for (const who of ["qemu-io", "blkgraph"]) {
      const top = `${dir.path}/${who}.qcow2`;
      await qemuCreate(top, "1M", "compat=0.10", base);
      if (who === "qemu-io") await qemuIo(top, ...cmds);
      else {
        await using node = await openQcow2(top);
        await node.pwrite(0, new Uint8Array(128 << 10).fill(0x22));
        await node.pdiscard(0, 128 << 10);
      }
    }
    const r = await run("qemu-img", ["compare", `${dir.path}/qemu-io.qcow2`, `${dir.path}/blkgraph.qcow2`]);
    assert.equal(r.code, 0, r.stdout);
    await assertClean(`${dir.path}/blkgraph.qcow2`);
    const back = await run("qemu-io", ["-c", "read -P 0x22 0 128k", `${dir.path}/blkgraph.qcow2`]);
    assert.doesNotMatch(back.stdout, /verification failed/);
  },
});
