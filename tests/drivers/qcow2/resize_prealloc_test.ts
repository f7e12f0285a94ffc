/**
 * Preallocating resizes (`falloc`, `full`) where QEMU's qcow2_co_truncate
 * has more to do than allocate: over a longer backing file (the grown
 * part must read zeros: the file grows with zeros, so the new clusters are
 * data, their subclusters allocated, and compat=0.10 images can grow too),
 * over a compressed last cluster (its bytes are copied into the new
 * cluster and stay readable), and where the new data would end before the
 * file does (the file node refuses preallocation for a shrink, as
 * file-posix). Compared with qemu-img resize cluster by cluster.
 */
import assert from "node:assert/strict";
import { type BlockError, open } from "../../../mod.ts";
import { qemuCheck, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { fileLayoutDiff } from "./_layout.ts";
import { openQcow2, qemuCreate, qemuIo } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");
const KiB = 1024;
const OUR_IO = new URL("../../../cli/qemu-io.ts", import.meta.url).pathname;

/** Where `[offset, offset + length)` of the image at `path`, read through our qcow2 node, first differs from `byte` (-1: nowhere). */
async function firstOtherThan(path: string, offset: number, length: number, byte: number): Promise<number> {
  await using n = await openQcow2(path, {}, true);
  const buf = new Uint8Array(length);
  await n.pread(offset, buf);
  const i = buf.findIndex((v) => v !== byte);
  return i < 0 ? -1 : offset + i;
}

for (const image of ["compat=0.10", "compat=1.1", "compat=1.1,extended_l2=on"]) {
  for (const mode of ["falloc", "full"] as const) {
    Deno.test({
      name:
        `a ${mode} resize of a ${image} overlay over a longer backing file succeeds, lays out as qemu-img and reads zeros past the old end`,
      ignore,
      async fn() {
        await using d = await tempDir();
        const base = `${d.path}/base.raw`;
        await runOk("qemu-img", ["create", "-q", "-f", "raw", base, "1M"]);
        await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x77 0 1M", base]);
        const a = `${d.path}/a.qcow2`;
        const b = `${d.path}/b.qcow2`;
        // An unaligned old end whose last cluster is compressed (its bytes move into the new cluster) and one that is not.
        await qemuCreate(a, 130560, `cluster_size=65536,${image}`, base, "raw");
        await qemuIo(a, "write -P 5 0 4k", ...(image === "compat=0.10" ? [] : ["write -c -P 6 65536 65024"]));
        await Deno.copyFile(a, b);
        const q = await run("qemu-img", ["resize", "-q", "-f", "qcow2", `--preallocation=${mode}`, a, "393216"]);
        assert.equal(q.code, 0, q.stderr);
        {
          await using n = await openQcow2(b);
          await n.truncate(393216, { prealloc: mode });
        }
        assert.deepEqual(await fileLayoutDiff(b, a), []);
        assert.equal((await qemuCheck(b)).code, 0);
        assert.equal((await run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", a, b])).code, 0);
        assert.equal(await firstOtherThan(b, 130560, 393216 - 130560, 0), -1);
        if (image !== "compat=0.10") assert.equal(await firstOtherThan(b, 65536, 65024, 6), -1);
      },
    });
  }
}

for (const mode of ["metadata", "falloc", "full"] as const) {
  Deno.test({
    name: `a ${mode} resize keeps a compressed last cluster's data in an extended-L2 image`,
    ignore,
    async fn() {
      // qemu-img 7.2 loses these bytes (the new cluster's subclusters stay unallocated): the reference here is the data itself.
      await using d = await tempDir();
      const p = `${d.path}/x.qcow2`;
      await qemuCreate(p, 130560, "cluster_size=65536,extended_l2=on");
      await qemuIo(p, "write -c -P 7 65536 65024");
      {
        await using n = await openQcow2(p);
        await n.truncate(196608, { prealloc: mode });
      }
      assert.equal(await firstOtherThan(p, 65536, 65024, 7), -1);
      assert.equal(await firstOtherThan(p, 130560, 196608 - 130560, 0), -1);
      assert.equal((await qemuCheck(p)).code, 0);
      assert.doesNotMatch(await qemuIo(p, "read -P 7 65536 65024", "read -P 0 130560 66048"), /verification failed/);
    },
  });
}

Deno.test({
  name: "a full resize whose new data would end before the file does fails as qemu-img: the file refuses preallocation for a shrink",
  ignore,
  async fn() {
    await using d = await tempDir();
    const a = `${d.path}/a.qcow2`;
    const b = `${d.path}/b.qcow2`;
    // The freed tail stays in the file; QEMU places the new data after the last cluster in use, inside it.
    await qemuCreate(a, "1M", "cluster_size=65536");
    await qemuIo(a, "write -P 5 0 1M", "discard 512k 512k");
    await Deno.copyFile(a, b);
    const q = await run("qemu-img", ["resize", "-f", "qcow2", "--preallocation=full", a, String(1088 * KiB)]);
    assert.equal(q.code, 1);
    assert.match(q.stderr, /Failed to resize underlying file: Cannot use preallocation for shrinking files/);
    {
      await using n = await openQcow2(b);
      await assert.rejects(
        n.truncate(1088 * KiB, { prealloc: "full" }),
        (e: BlockError) =>
          e.code === "ENOTSUP" && /Failed to resize underlying file: Cannot use preallocation for shrinking files/.test(e.message),
      );
      assert.equal(n.length, 1024 * KiB);
    }
    assert.equal((await qemuCheck(b)).code, 0);
    assert.equal((await run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", a, b])).code, 0);
    assert.deepEqual(await fileLayoutDiff(b, a), []);
  },
});

Deno.test({
  name: "a preallocating file resize refuses to shrink the file, naming QEMU's reason",
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/f.raw`;
    await Deno.writeFile(path, new Uint8Array(8192).fill(1));
    await using f = await open({ driver: "file", filename: path });
    for (const prealloc of ["falloc", "full"] as const) {
      await assert.rejects(
        f.truncate(4096, { prealloc }),
        (e: BlockError) => e.code === "ENOTSUP" && /Cannot use preallocation for shrinking files/.test(e.message),
      );
    }
    assert.equal(f.length, 8192);
    await f.truncate(4096);
    assert.equal(f.length, 4096);
  },
});

Deno.test({
  name: "a full resize reading a freed tail of the file for its new clusters zeroes the bytes left there, so the grown part reads zeros",
  ignore,
  async fn() {
    // qemu-img 7.2 shows the old bytes here (its file grows with zeros only past the old end); the reference is zeros.
    await using d = await tempDir();
    const p = `${d.path}/x.qcow2`;
    await qemuCreate(p, "1M", "cluster_size=65536");
    await qemuIo(p, "write -P 5 0 1M", "discard 768k 256k");
    const end = JSON.parse((await runOk("qemu-img", ["check", "--output=json", p])).stdout)["image-end-offset"];
    // Unreferenced bytes after the last cluster in use (a discard that did not punch a hole leaves such).
    await runOk("qemu-io", ["-f", "raw", "-c", `write -P 0xaa ${end} 256k`, p]);
    {
      await using n = await openQcow2(p);
      await n.truncate(2 * 1024 * KiB, { prealloc: "full" });
    }
    assert.equal(await firstOtherThan(p, 1024 * KiB, 1024 * KiB, 0), -1);
    assert.equal(await firstOtherThan(p, 0, 768 * KiB, 5), -1);
    assert.equal((await qemuCheck(p)).code, 0);
  },
});

Deno.test({
  name: "a metadata resize that reuses a cluster the shrink before freed reads zeros there, as qemu-img resize",
  ignore,
  async fn() {
    // The freed cluster still holds the old bytes (written in the same session, so not discarded); the new mapping must not show them.
    await using d = await tempDir();
    const base = `${d.path}/base.qcow2`;
    await qemuCreate(base, 96256);
    const a = `${d.path}/a.qcow2`;
    const b = `${d.path}/b.qcow2`;
    await qemuCreate(a, 192512, "cluster_size=4096,compat=0.10", base);
    await Deno.copyFile(a, b);
    for (const [p, io] of [[a, "qemu-io"], [b, OUR_IO]]) {
      const cmd = io === "qemu-io" ? ["qemu-io"] : [Deno.execPath(), "run", "-A", io];
      const r = await run(cmd[0], [
        ...cmd.slice(1),
        "-f",
        "qcow2",
        "-c",
        "write -P 11 184320 8192",
        "-c",
        "write -P 12 130290 512",
        "-c",
        "truncate 187904",
        p,
      ]);
      assert.equal(r.code, 0, r.stderr);
    }
    await runOk("qemu-img", ["resize", "-q", "-f", "qcow2", "--preallocation=metadata", a, "192000"]);
    {
      await using n = await openQcow2(b);
      await n.truncate(192000, { prealloc: "metadata" });
    }
    assert.equal(await firstOtherThan(b, 188416, 192000 - 188416, 0), -1);
    assert.equal((await run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", a, b])).code, 0);
    assert.equal((await qemuCheck(b)).code, 0);
  },
});
