/**
 * qcow2 resizing against qemu-img resize: shrinking (the clusters past the
 * end freed, the L1 table's tail zeroed, empty refcount blocks dropped, the
 * file cut), preallocation of the grown area (metadata, falloc, full), a
 * grown overlay reading zeros over a larger backing file, and QEMU's
 * refusals. Layouts are compared cluster by cluster with qemu-img's.
 */
import assert from "node:assert/strict";
import { BlockError } from "../../../mod.ts";
import { qemuCheck, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { fileLayoutDiff } from "./_layout.ts";
import { openQcow2, qemuCreate, qemuIo } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");
const MiB = 1 << 20;

async function pair(dir: string, opts: string, size: string | number, writes: string[]): Promise<{ a: string; b: string }> {
  const a = `${dir}/a.qcow2`;
  const b = `${dir}/b.qcow2`;
  await qemuCreate(a, size, opts);
  if (writes.length) await qemuIo(a, ...writes);
  await Deno.copyFile(a, b);
  return { a, b };
}

/** qemu-img resize on `a`, our truncate on `b`, then the layouts must agree and b must check clean. */
async function resizeBoth(a: string, b: string, size: number, prealloc?: "metadata" | "falloc" | "full"): Promise<void> {
  const args = ["resize", "-q", ...(prealloc ? [`--preallocation=${prealloc}`] : [])];
  const cur = JSON.parse((await runOk("qemu-img", ["info", "--output=json", a])).stdout)["virtual-size"];
  if (size < cur) args.push("--shrink");
  await runOk("qemu-img", [...args, a, String(size)]);
  {
    await using n = await openQcow2(b);
    await n.truncate(size, { prealloc });
  }
  assert.deepEqual(await fileLayoutDiff(b, a), [], `resize to ${size}${prealloc ? ` (${prealloc})` : ""}`);
  const c = await qemuCheck(b);
  assert.equal(c.code, 0, JSON.stringify(c.json));
  assert.equal((await run("qemu-img", ["compare", a, b])).code, 0);
}

for (const opts of ["", "cluster_size=512", "cluster_size=4k,refcount_bits=4", "extended_l2=on", "compat=0.10"]) {
  Deno.test({
    name: `truncate() shrinks a qcow2 image as qemu-img resize --shrink does (${opts || "defaults"})`,
    ignore,
    async fn() {
      await using d = await tempDir();
      const { a, b } = await pair(d.path, opts, "64M", [
        "write -P 1 0 300k",
        "write -P 2 20M 64k",
        "write -c -P 3 30M 64k",
        "write -P 4 60M 64k",
      ]);
      await resizeBoth(a, b, 32 * MiB);
      await resizeBoth(a, b, 20 * MiB + 4096); // inside a cluster and an L2 table
      await resizeBoth(a, b, MiB);
      await resizeBoth(a, b, 16 * MiB);
      {
        await using n = await openQcow2(b, {}, true);
        const buf = new Uint8Array(MiB);
        await n.pread(MiB, buf); // grown back: zeros, not the old data
        assert.ok(buf.every((x) => x === 0));
      }
    },
  });
}

Deno.test({
  name: "truncate() shrinks past an unallocated L2 table as QEMU does (an empty table for the new end)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "", "2G", []);
    await resizeBoth(a, b, 1024 * MiB + 65536);
  },
});

Deno.test({
  name: "truncate() shrinks an image with snapshots, keeping their data (qemu-img's layout)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "cluster_size=4k", "8M", ["write -P 1 0 3M", "write -P 2 6M 1M"]);
    await runOk("qemu-img", ["snapshot", "-c", "s", a]);
    await runOk("qemu-img", ["snapshot", "-c", "s", b]);
    await resizeBoth(a, b, 2 * MiB);
    await runOk("qemu-img", ["snapshot", "-a", "s", b]);
    const out = await qemuIo(b, "read -P 1 0 3M", "read -P 2 6M 1M");
    assert.doesNotMatch(out, /failed/);
  },
});

Deno.test({
  name: "truncate() refuses to resize a compat=0.10 image with snapshots, as QEMU",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { b } = await pair(d.path, "compat=0.10", "4M", []);
    await runOk("qemu-img", ["snapshot", "-c", "s", b]);
    const q = await run("qemu-img", ["resize", b, "8M"]);
    assert.match(q.stderr, /Can't resize a v2 image which has snapshots/);
    await using n = await openQcow2(b);
    for (const size of [8 * MiB, 2 * MiB]) {
      await assert.rejects(() => n.truncate(size), (e) => e instanceof BlockError && e.code === "ENOTSUP" && /v2 image/.test(e.message));
    }
  },
});

Deno.test({
  name: "truncate() refuses preallocation when shrinking and sizes that are not multiples of 512",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { b } = await pair(d.path, "", "4M", []);
    await using n = await openQcow2(b);
    await assert.rejects(() => n.truncate(MiB, { prealloc: "falloc" }), (e) => e instanceof BlockError && e.code === "EINVAL");
    await assert.rejects(
      () => n.truncate(5 * MiB + 1),
      (e) => e instanceof BlockError && e.code === "EINVAL" && /multiple of 512/.test(e.message),
    );
  },
});

for (const prealloc of ["metadata", "falloc", "full"] as const) {
  for (const opts of ["", "cluster_size=4k", "cluster_size=512,refcount_bits=64", "extended_l2=on", "compat=0.10"]) {
    Deno.test({
      name: `truncate() with prealloc=${prealloc} places clusters where qemu-img resize --preallocation=${prealloc} does (${
        opts || "defaults"
      })`,
      ignore,
      async fn() {
        await using d = await tempDir();
        const { a, b } = await pair(d.path, opts, "1M", ["write -P 1 0 100k"]);
        await resizeBoth(a, b, 3 * MiB + 512, prealloc); // from an unaligned end, too
        await resizeBoth(a, b, (opts.includes("512") ? 16 : 64) * MiB, prealloc);
      },
    });
  }
}

Deno.test({
  name: "truncate() over a larger backing file makes the new area read zeros, as qemu-img resize (iotest 271)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const base = `${d.path}/base.raw`;
    await Deno.writeFile(base, new Uint8Array(MiB).fill(0xff));
    const a = `${d.path}/a.qcow2`;
    const b = `${d.path}/b.qcow2`;
    for (const p of [a, b]) await qemuCreate(p, "512k", "", base, "raw");
    await runOk("qemu-img", ["resize", "-q", a, "1M"]);
    {
      await using n = await openQcow2(b);
      await n.truncate(MiB);
    }
    assert.doesNotMatch(await qemuIo(b, "read -P 0xff 0 512k", "read -P 0 512k 512k"), /failed/);
    assert.deepEqual(await fileLayoutDiff(b, a), []);
    assert.equal(
      (await runOk("qemu-img", ["map", b])).stdout,
      (await runOk("qemu-img", ["map", a])).stdout.replaceAll("a.qcow2", "b.qcow2"),
    );
  },
});

Deno.test({
  name:
    "shrinking then growing an overlay inside one cluster over a longer backing file reads zeros there, as qemu-img resize (iotest 292)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const base = `${d.path}/base.raw`;
    await Deno.writeFile(base, new Uint8Array(MiB).fill(0x11));
    const a = `${d.path}/a.qcow2`;
    const b = `${d.path}/b.qcow2`;
    for (const p of [a, b]) {
      await qemuCreate(p, "1M", "", base, "raw");
      await qemuIo(p, "write -P 0x22 0 1M");
    }
    await runOk("qemu-img", ["resize", "-q", "--shrink", a, "520k"]);
    await runOk("qemu-img", ["resize", "-q", a, "567k"]);
    {
      await using n = await openQcow2(b);
      await n.truncate(520 * 1024);
      await n.truncate(567 * 1024); // the old end is not cluster-aligned: its head is written as zeros
    }
    assert.doesNotMatch(await qemuIo(b, "read -P 0x22 0 520k", "read -P 0 520k 47k"), /failed/);
    assert.deepEqual(await fileLayoutDiff(b, a), []);
    assert.equal((await qemuCheck(b)).code, 0);
  },
});

Deno.test({
  name: "truncate() grows the L1 table to the exact size a resize needs, as QEMU (not by half again)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "cluster_size=512", "128k", []);
    for (const size of [160 * 1024, 512 * 1024, 600 * 1024]) await resizeBoth(a, b, size);
  },
});

Deno.test({
  name:
    "growing a compat=0.10 overlay over a longer backing file inside its last cluster zeroes the grown bytes, and past it fails as qemu-img resize",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using dir = await tempDir();
    const base = `${dir.path}/base.qcow2`;
    await qemuCreate(base, "256k", "compat=0.10");
    await qemuIo(base, "write -P 0x77 0 256k");
    // [old size, new size, qemu-img's exit code]: v2 has no zero clusters, so only the head up to the cluster end can be zeroed.
    for (const [from, to, code] of [[63488, 64000, 0], [63488, 65536, 0], [63488, 66048, 1], [65536, 131072, 1]]) {
      const ours = `${dir.path}/ours-${from}-${to}.qcow2`;
      const theirs = `${dir.path}/theirs-${from}-${to}.qcow2`;
      await qemuCreate(ours, from, "compat=0.10", base);
      await Deno.copyFile(ours, theirs);
      const q = await run("qemu-img", ["resize", "-f", "qcow2", theirs, String(to)]);
      assert.equal(q.code, code, `${from}->${to}: ${q.stderr}`);
      {
        await using node = await openQcow2(ours);
        if (code) {
          await assert.rejects(node.truncate(to), (e: BlockError) => e.code === "ENOTSUP" && /zero out new clusters/.test(e.message));
        } else await node.truncate(to);
        assert.equal(node.length, code ? from : to);
      }
      await qemuCheck(ours);
      const r = await run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", ours, theirs]);
      assert.equal(r.code, 0, `${from}->${to}: ${r.stdout}`);
    }
  },
});
