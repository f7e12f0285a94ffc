/**
 * Persistent dirty bitmaps in qcow2, with QEMU as the reference both ways:
 * bitmaps blkgraph stores are what qemu-img lists and qemu-nbd exports,
 * bitmaps QEMU stored are what blkgraph reads, and images pass qemu-img
 * check either way.
 */
import assert from "node:assert/strict";
import { open } from "../../../mod.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { assertClean, openQcow2, qemuCreate, qemuIo } from "./_util.ts";
import { crashCopy, ourDirty, qemuBitmaps, qemuDirty } from "./_bitmap_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");
const ignoreNbd = skipUnless("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo");
const MiB = 1 << 20;

Deno.test({
  name: "qcow2 bitmapAdd(): bitmaps stored at close are what qemu-img bitmap --add makes (info lists them, check is clean)",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const ours = `${dir.path}/ours.qcow2`;
    const theirs = `${dir.path}/theirs.qcow2`;
    await qemuCreate(ours, "10M");
    await qemuCreate(theirs, "10M");
    {
      await using n = await openQcow2(ours);
      await n.bitmaps.add("b0");
      await n.bitmaps.add("b1", { granularity: 512 * 1024, disabled: true });
      await n.bitmaps.add("small", { granularity: 512 });
    }
    await runOk("qemu-img", ["bitmap", "--add", theirs, "b0"]);
    await runOk("qemu-img", ["bitmap", "--add", "-g", "512k", "--disable", theirs, "b1"]);
    await runOk("qemu-img", ["bitmap", "--add", "-g", "512", theirs, "small"]);
    assert.deepEqual(await qemuBitmaps(ours), await qemuBitmaps(theirs));
    await assertClean(ours);
  },
});

Deno.test({
  name: "qcow2 bitmaps record writes, zero-writes and discards at their granularity as QEMU's do (qemu-nbd -B shows the same bits)",
  ignore: ignoreNbd,
  async fn() {
    await using dir = await tempDir();
    const ours = `${dir.path}/ours.qcow2`;
    const theirs = `${dir.path}/theirs.qcow2`;
    for (const p of [ours, theirs]) {
      await qemuCreate(p, "10M");
      await runOk("qemu-img", ["bitmap", "--add", p, "b0"]);
      await runOk("qemu-img", ["bitmap", "--add", "-g", "4k", p, "fine"]);
    }
    {
      await using n = await openQcow2(ours);
      await n.pwrite(65535, new Uint8Array(2)); // straddles two 64 KiB chunks
      await n.pwrite(3 * MiB, new Uint8Array(1000).fill(7));
      await n.pwriteZeroes(5 * MiB + 4096, 8192);
      await n.pdiscard(8 * MiB, 3 * 65536);
    }
    await qemuIo(theirs, "write 65535 2", "write -P 7 3M 1000", "write -z 5246976 8192", "discard 8M 192k");
    for (const name of ["b0", "fine"]) {
      const want = await qemuDirty(theirs, name);
      assert.ok(want.length > 0);
      assert.deepEqual(await qemuDirty(ours, name), want, name);
    }
    await assertClean(ours);
  },
});

Deno.test({
  name: "qcow2 reads the bits of bitmaps QEMU stored, and QEMU reads them back after blkgraph stored them again",
  ignore: ignoreNbd,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/q.qcow2`;
    await qemuCreate(path, "16M");
    await runOk("qemu-img", ["bitmap", "--add", "-g", "128k", path, "b0"]);
    await qemuIo(path, "write 0 4k", "write 2M 300k", "write -z 15M 1M");
    {
      await using n = await openQcow2(path, {}, true);
      assert.deepEqual(await ourDirty(n, "b0"), await qemuDirty(path, "b0"));
    }
    {
      await using n = await openQcow2(path);
      await n.pwrite(10 * MiB, new Uint8Array(512));
    }
    const after = await qemuDirty(path, "b0");
    assert.deepEqual(after, ["0+131072", "2097152+393216", "10485760+131072", "15728640+1048576"]);
    await assertClean(path);
  },
});

Deno.test({
  name: "qcow2 read-write open marks bitmaps in use before any write; after a crash qemu-img reports them in use and refuses them",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    const crashed = `${dir.path}/crashed.qcow2`;
    await qemuCreate(path, "4M");
    await runOk("qemu-img", ["bitmap", "--add", path, "b0"]);
    {
      await using n = await openQcow2(path);
      await n.pwrite(0, new Uint8Array(4096).fill(1));
      await n.flush();
      await crashCopy(path, crashed);
    }
    assert.deepEqual(await qemuBitmaps(crashed), [{ flags: ["in-use", "auto"], name: "b0", granularity: 65536 }]);
    assert.deepEqual(await qemuBitmaps(path), [{ flags: ["auto"], name: "b0", granularity: 65536 }]);
    await assertClean(crashed);
    const theirs = (await run("qemu-img", ["bitmap", "--clear", crashed, "b0"])).stderr;
    {
      await using n = await openQcow2(crashed);
      assert.deepEqual((await n.bitmaps.list()).map((b) => [b.name, b.inconsistent]), [["b0", true]]);
      const ours = await n.bitmaps.clear("b0").then(() => "", (e) => (e as Error).message);
      assert.ok(ours && theirs.includes(`qemu-img: Operation clear on bitmap b0 failed: ${ours}`), `${theirs} vs ${ours}`);
      // Only removal is allowed, as in QEMU.
      await n.bitmaps.remove("b0");
    }
    assert.deepEqual(await qemuBitmaps(crashed), []);
    await assertClean(crashed);
  },
});

Deno.test({
  name: "qcow2 bitmapRemove() rewrites the directory at once and frees the bitmap's clusters",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    await qemuCreate(path, "4M");
    await runOk("qemu-img", ["bitmap", "--add", path, "keep"]);
    await runOk("qemu-img", ["bitmap", "--add", path, "gone"]);
    await qemuIo(path, "write 0 1M");
    {
      await using n = await openQcow2(path);
      await n.bitmaps.remove("gone");
      await n.flush();
      // Before the close, the directory on disk already lacks it.
      assert.deepEqual(await qemuBitmaps(path), [{ flags: ["in-use", "auto"], name: "keep", granularity: 65536 }]);
      await assert.rejects(n.bitmaps.remove("gone"), /Dirty bitmap 'gone' not found/);
    }
    assert.deepEqual(await qemuBitmaps(path), [{ flags: ["auto"], name: "keep", granularity: 65536 }]);
    await assertClean(path);
    {
      await using n = await openQcow2(path);
      await n.bitmaps.remove("keep");
    }
    assert.deepEqual(await qemuBitmaps(path), []);
    const head = await Deno.readFile(path);
    assert.equal(new DataView(head.buffer).getUint32(92) & 1, 0, "autoclear bit 0 cleared with the last bitmap");
    await assertClean(path);
  },
});

Deno.test({
  name: "qcow2 read-write open drops a bitmaps extension left by a program without bitmap support, as QEMU does",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const ours = `${dir.path}/ours.qcow2`;
    const theirs = `${dir.path}/theirs.qcow2`;
    await qemuCreate(ours, "4M");
    await runOk("qemu-img", ["bitmap", "--add", ours, "b0"]);
    await qemuIo(ours, "write 0 64k");
    // Autoclear bit 0 off: what any program that does not know bitmaps leaves.
    const f = await Deno.open(ours, { read: true, write: true });
    await f.seek(95, Deno.SeekMode.Start);
    await f.write(new Uint8Array([0]));
    f.close();
    await Deno.copyFile(ours, theirs);
    {
      await using n = await openQcow2(ours);
      assert.deepEqual(await n.bitmaps.list(), []);
    }
    await qemuIo(theirs, "read 0 512");
    assert.deepEqual(
      await Deno.readFile(ours).then((b) => b.subarray(0, 4096)),
      await Deno.readFile(theirs).then((b) => b.subarray(0, 4096)),
    );
    // The bitmap's clusters are leaks for both.
    const a = await run("qemu-img", ["check", ours]);
    const b = await run("qemu-img", ["check", theirs]);
    assert.equal(a.code, 3);
    assert.equal(a.stdout, b.stdout);
  },
});

Deno.test({
  name: "qcow2 truncate() resizes the bitmaps (grown part clean) and QEMU reads the stored result",
  ignore: ignoreNbd,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    await qemuCreate(path, "1M", "cluster_size=512");
    await runOk("qemu-img", ["bitmap", "--add", "-g", "512", path, "b0"]);
    {
      await using n = await openQcow2(path);
      await n.pwrite(0, new Uint8Array(512));
      await n.truncate(64 * MiB);
      await n.pwrite(40 * MiB, new Uint8Array(1024));
    }
    assert.deepEqual(await qemuDirty(path, "b0"), ["0+512", `${40 * MiB}+1024`]);
    await assertClean(path);
  },
});

Deno.test({
  name: "qcow2 bitmapDisable() stops recording, bitmapEnable() resumes it, bitmapClear() empties; qemu-img sees the flags",
  ignore: ignoreNbd,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    await qemuCreate(path, "4M");
    {
      await using n = await openQcow2(path);
      await n.bitmaps.add("b0");
      await n.pwrite(0, new Uint8Array(1));
      await n.bitmaps.disable("b0");
      await n.pwrite(MiB, new Uint8Array(1));
      await n.bitmaps.enable("b0");
      await n.pwrite(2 * MiB, new Uint8Array(1));
      assert.deepEqual(await ourDirty(n, "b0"), ["0+65536", `${2 * MiB}+65536`]);
      assert.deepEqual((await n.bitmaps.list())[0], {
        name: "b0",
        granularity: 65536,
        count: 131072,
        recording: true,
        persistent: true,
        inconsistent: false,
      });
      await n.bitmaps.clear("b0");
      await n.pwrite(3 * MiB, new Uint8Array(1));
      await n.bitmaps.disable("b0");
    }
    assert.deepEqual(await qemuDirty(path, "b0"), [`${3 * MiB}+65536`]);
    assert.deepEqual(await qemuBitmaps(path), [{ flags: [], name: "b0", granularity: 65536 }]);
  },
});

Deno.test({
  name: "qcow2 bitmapMerge() from another image adds its dirty ranges, as qemu-img bitmap --merge -b does",
  ignore: ignoreNbd,
  async fn() {
    await using dir = await tempDir();
    const src = `${dir.path}/src.qcow2`;
    const ours = `${dir.path}/ours.qcow2`;
    const theirs = `${dir.path}/theirs.qcow2`;
    await qemuCreate(src, "8M");
    await runOk("qemu-img", ["bitmap", "--add", "-g", "4k", src, "s"]);
    await qemuIo(src, "write 100k 10k", "write 7M 1");
    for (const p of [ours, theirs]) {
      await qemuCreate(p, "8M");
      await runOk("qemu-img", ["bitmap", "--add", p, "t"]);
      await qemuIo(p, "write 3M 1");
    }
    {
      await using s = await openQcow2(src, {}, true);
      await using n = await openQcow2(ours);
      await n.bitmaps.merge("t", { name: "s", node: s });
    }
    await runOk("qemu-img", ["bitmap", "--merge", "s", "-b", src, "-F", "qcow2", theirs, "t"]);
    assert.deepEqual(await qemuDirty(ours, "t"), await qemuDirty(theirs, "t"));
    assert.deepEqual(await qemuDirty(ours, "t"), ["65536+65536", "3145728+65536", "7340032+65536"]);
  },
});

Deno.test({
  name: "qcow2 default bitmap granularity is the cluster size within 4 KiB..64 KiB, as qemu-img picks it",
  ignore,
  async fn() {
    await using dir = await tempDir();
    for (const cs of ["512", "16k", "64k", "2M"]) {
      const ours = `${dir.path}/ours-${cs}.qcow2`;
      const theirs = `${dir.path}/theirs-${cs}.qcow2`;
      await qemuCreate(ours, "8M", `cluster_size=${cs}`);
      await qemuCreate(theirs, "8M", `cluster_size=${cs}`);
      {
        await using n = await openQcow2(ours);
        await n.bitmaps.add("b");
      }
      await runOk("qemu-img", ["bitmap", "--add", theirs, "b"]);
      assert.deepEqual(await qemuBitmaps(ours), await qemuBitmaps(theirs), cs);
    }
  },
});

Deno.test({
  name: "qcow2 bitmaps keep the backing file name through the header rewrite, and amend keeps the bitmaps",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const base = `${dir.path}/base.qcow2`;
    const top = `${dir.path}/top.qcow2`;
    await qemuCreate(base, "4M");
    await qemuCreate(top, "4M", "", base);
    {
      await using n = await openQcow2(top);
      await n.bitmaps.add("b0");
      await n.pwrite(0, new Uint8Array(512));
    }
    {
      await using n = await openQcow2(top);
      await n.amend({ lazy_refcounts: "on" });
    }
    const info = JSON.parse((await runOk("qemu-img", ["info", "--output=json", top])).stdout);
    assert.equal(info["backing-filename"], base);
    assert.equal(info["format-specific"].data["lazy-refcounts"], true);
    assert.deepEqual(info["format-specific"].data.bitmaps, [{ flags: ["auto"], name: "b0", granularity: 65536 }]);
    await assertClean(top);
  },
});

Deno.test({
  name: "qcow2 many bitmaps with 512-byte clusters: directory and tables spanning clusters pass qemu-img check",
  ignore: ignoreNbd,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    await qemuCreate(path, "1G", "cluster_size=512");
    {
      await using n = await openQcow2(path);
      for (let i = 0; i < 40; i++) await n.bitmaps.add(`bitmap-with-a-longer-name-${i}`, { granularity: 512 });
      for (let i = 0; i < 16; i++) await n.pwrite(i * 64 * MiB + i * 512, new Uint8Array(512));
    }
    await assertClean(path);
    const list = await qemuBitmaps(path);
    assert.equal(list.length, 40);
    const want = Array.from({ length: 16 }, (_, i) => `${i * 64 * MiB + i * 512}+512`);
    assert.deepEqual(await qemuDirty(path, "bitmap-with-a-longer-name-39"), want);
    {
      // Reopened read-write and closed: every bitmap stored anew, the old structures freed.
      await using n = await open(path);
      assert.equal((await n.bitmaps.list()).length, 40);
    }
    await assertClean(path);
  },
});

Deno.test({
  name: "qcow2 bitmap-store=flush: a flush stores consistent bitmaps QEMU reads, the next write marks them in use first",
  ignore: ignoreNbd,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    const afterFlush = `${dir.path}/after-flush.qcow2`;
    const afterWrite = `${dir.path}/after-write.qcow2`;
    await qemuCreate(path, "4M");
    await runOk("qemu-img", ["bitmap", "--add", path, "b0"]);
    {
      await using n = await openQcow2(path, { "bitmap-store": "flush" });
      await n.pwrite(MiB, new Uint8Array(512).fill(1));
      await n.flush();
      await crashCopy(path, afterFlush);
      await n.pwrite(2 * MiB, new Uint8Array(512).fill(2));
      await crashCopy(path, afterWrite);
    }
    await assert.rejects(openQcow2(path, { "bitmap-store": "sometimes" }, true), /Invalid value 'sometimes' for option 'bitmap-store'/);
    // A crash after the flush: the bitmap is consistent and has the write before it.
    assert.deepEqual(await qemuBitmaps(afterFlush), [{ flags: ["auto"], name: "b0", granularity: 65536 }]);
    assert.deepEqual(await qemuDirty(afterFlush, "b0"), [`${MiB}+65536`]);
    await assertClean(afterFlush);
    // A crash after the next write: in use again (inconsistent), never consistent without that write.
    assert.deepEqual(await qemuBitmaps(afterWrite), [{ flags: ["in-use", "auto"], name: "b0", granularity: 65536 }]);
    assert.deepEqual(await qemuDirty(path, "b0"), [`${MiB}+65536`, `${2 * MiB}+65536`]);
    await assertClean(path);
  },
});
