/**
 * Internal snapshots of the qcow2 driver, against qemu-img: the same
 * operations on two copies of one image (qemu-img on one, our node on the
 * other) must leave the same clusters in use with the same bytes (snapshot
 * dates masked), qemu-img check must find them clean, and the data must be
 * what qemu-img reads.
 */
import assert from "node:assert/strict";
import { BlockError, type BlockNode, open, type SnapshotInfo } from "../../../mod.ts";
import { qemuCheck, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { fileLayoutDiff } from "./_layout.ts";
import { openQcow2, qemuCreate, qemuIo } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

function info(name: string, extra: Partial<SnapshotInfo> = {}): SnapshotInfo {
  return { id: "", name, vmStateSize: 0, dateSec: 1_700_000_000, dateNsec: 0, vmClockNsec: 0, icount: 0, ...extra };
}

/** Runs one step on both copies: `qemu` with qemu-img/qemu-io on `a`, `ours` through our node on `b`. */
async function both(a: string, b: string, qemu: string[], ours: (node: BlockNode) => Promise<void>): Promise<void> {
  await runOk(qemu[0], [...qemu.slice(1), a]);
  const node = await openQcow2(b);
  try {
    await ours(node);
  } finally {
    await node.close();
  }
}

async function assertSameLayout(ours: string, theirs: string, step: string): Promise<void> {
  assert.deepEqual(await fileLayoutDiff(ours, theirs), [], `after ${step}`);
  const c = await qemuCheck(ours);
  assert.equal(c.code, 0, `qemu-img check after ${step}: ${JSON.stringify(c.json)}`);
}

/** Two identical images with data written by qemu-io. */
async function pair(dir: string, opts: string, size: string, writes: string[]): Promise<{ a: string; b: string }> {
  const a = `${dir}/a.qcow2`;
  const b = `${dir}/b.qcow2`;
  await qemuCreate(a, size, opts);
  if (writes.length) await qemuIo(a, ...writes);
  await Deno.copyFile(a, b);
  return { a, b };
}

for (
  const opts of [
    "",
    "cluster_size=512",
    "cluster_size=4k,refcount_bits=8",
    "compat=0.10,cluster_size=4k",
    "extended_l2=on",
    "refcount_bits=64,cluster_size=1k",
  ]
) {
  Deno.test({
    name: `snapshotCreate/Goto/Delete() leave qemu-img's layout (${opts || "defaults"})`,
    ignore,
    async fn() {
      await using d = await tempDir();
      const { a, b } = await pair(d.path, opts, "4M", ["write -P 1 0 1M", "write -z 1M 64k", "write -c -P 5 2M 64k"]);
      await both(a, b, ["qemu-img", "snapshot", "-c", "s1"], (n) => n.snapshots.create(info("s1")));
      await assertSameLayout(b, a, "snapshot -c s1");
      // Copy-on-write of shared tables and clusters, then a second snapshot.
      await both(a, b, ["qemu-io", "-c", "write -P 2 64k 64k"], (n) => n.pwrite(65536, new Uint8Array(65536).fill(2)));
      await both(a, b, ["qemu-img", "snapshot", "-c", "s2"], (n) => n.snapshots.create(info("s2")));
      await both(a, b, ["qemu-io", "-c", "write -P 3 100k 8k"], (n) => n.pwrite(102400, new Uint8Array(8192).fill(3)));
      await assertSameLayout(b, a, "snapshot -c s2 and writes");
      await both(a, b, ["qemu-img", "snapshot", "-a", "s1"], (n) => n.snapshots.goto("s1"));
      await assertSameLayout(b, a, "snapshot -a s1");
      await both(a, b, ["qemu-img", "snapshot", "-d", "s2"], (n) => n.snapshots.delete("2"));
      await assertSameLayout(b, a, "snapshot -d s2");
      await both(a, b, ["qemu-img", "snapshot", "-a", "1"], (n) => n.snapshots.goto("1"));
      await both(a, b, ["qemu-img", "snapshot", "-d", "s1"], (n) => n.snapshots.delete("s1"));
      await assertSameLayout(b, a, "snapshot -d s1");
      assert.equal((await run("qemu-img", ["compare", a, b])).code, 0);
    },
  });
}

Deno.test({
  name: "snapshotGoto() brings back the data of the snapshot as qemu-io reads it",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { b } = await pair(d.path, "cluster_size=4k", "2M", ["write -P 0x11 0 1M"]);
    {
      await using n = await openQcow2(b);
      await n.snapshots.create(info("before"));
      await n.pwrite(4096, new Uint8Array(8192).fill(0x22));
      await n.pwriteZeroes(512 * 1024, 64 * 1024);
    }
    assert.match(await qemuIo(b, "read -P 0x22 4k 8k"), /read 8192\/8192/);
    {
      await using n = await openQcow2(b);
      await n.snapshots.goto("before");
    }
    const out = await qemuIo(b, "read -P 0x11 0 1M");
    assert.doesNotMatch(out, /verification failed/);
    assert.equal((await qemuCheck(b)).code, 0);
  },
});

Deno.test({
  name: "snapshotGoto() to a snapshot of another size resizes the image as qemu-img does",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "cluster_size=512", "64M", ["write -P 1 0 300k", "write -P 1 60M 64k"]);
    await both(a, b, ["qemu-img", "snapshot", "-c", "small"], (n) => n.snapshots.create(info("small")));
    await runOk("qemu-img", ["resize", "-q", a, "128M"]);
    {
      await using n = await openQcow2(b);
      await n.truncate(128 << 20);
    }
    await both(a, b, ["qemu-io", "-c", "write -P 2 100M 64k"], (n) => n.pwrite(100 << 20, new Uint8Array(65536).fill(2)));
    await both(a, b, ["qemu-img", "snapshot", "-c", "big"], (n) => n.snapshots.create(info("big")));
    await both(a, b, ["qemu-img", "snapshot", "-a", "small"], (n) => n.snapshots.goto("small"));
    await assertSameLayout(b, a, "snapshot -a small (shrinks)");
    await both(a, b, ["qemu-img", "snapshot", "-a", "big"], (n) => n.snapshots.goto("big"));
    await assertSameLayout(b, a, "snapshot -a big (grows)");
    {
      await using n = await openQcow2(b, {}, true);
      assert.equal(n.length, 128 << 20);
    }
  },
});

Deno.test({
  name: "snapshotCreate() numbers snapshots one past the largest numeric ID, as QEMU's find_new_snapshot_id",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { b } = await pair(d.path, "", "1M", []);
    await using n = await openQcow2(b);
    await n.snapshots.create(info("a"));
    await n.snapshots.create(info("b"));
    await n.snapshots.create(info("c"));
    await n.snapshots.delete("2");
    await n.snapshots.create(info("d"));
    await n.snapshots.delete("1");
    await n.snapshots.create(info("e"));
    assert.deepEqual((await n.snapshots.list()).map((s) => `${s.id}:${s.name}`), ["3:c", "4:d", "5:e"]);
  },
});

Deno.test({
  name: "snapshotDelete() and snapshotGoto() find a snapshot by ID first, then by name",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { b } = await pair(d.path, "", "1M", []);
    await using n = await openQcow2(b);
    await n.snapshots.create(info("2")); // ID 1, named "2"
    await n.snapshots.create(info("x")); // ID 2
    await n.snapshots.delete("2"); // the one with ID 2
    assert.deepEqual((await n.snapshots.list()).map((s) => `${s.id}:${s.name}`), ["1:2"]);
    await assert.rejects(() => n.snapshots.goto("nope"), (e) => e instanceof BlockError && e.code === "ENOENT");
    await assert.rejects(() => n.snapshots.delete("nope"), (e) => e instanceof BlockError && e.code === "ENOENT");
  },
});

Deno.test({
  name: "snapshotCreate() that would overflow a refcount fails with EINVAL and leaks the L1 copy as qemu-img does (iotest 112)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "refcount_bits=1", "1M", ["write 0 64k"]);
    const q = await run("qemu-img", ["snapshot", "-c", "s", a]);
    assert.match(q.stderr, /-22 \(Invalid argument\)/);
    {
      await using n = await openQcow2(b);
      await assert.rejects(() => n.snapshots.create(info("s")), (e) => e instanceof BlockError && e.code === "EINVAL");
      assert.deepEqual(await n.snapshots.list(), []);
    }
    // QEMU allocates and writes the copy before it raises the refcounts: the copy leaks (no corruption), in both.
    assert.equal((await qemuCheck(a)).code, 3, "qemu-img leaves a leaked cluster behind");
    const same = async (p: string) => ({ ...(await qemuCheck(p)).json, filename: undefined });
    assert.deepEqual(await same(b), await same(a));
  },
});

Deno.test({
  name: "snapshot operations refuse an image with an external data file (ENOTSUP), as QEMU",
  ignore,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/t.qcow2`;
    await qemuCreate(path, "1M", `data_file=${d.path}/t.data`);
    const q = await run("qemu-img", ["snapshot", "-c", "s", path]);
    assert.notEqual(q.code, 0);
    await using n = await openQcow2(path);
    await assert.rejects(() => n.snapshots.create(info("s")), (e) => e instanceof BlockError && e.code === "ENOTSUP");
  },
});

Deno.test({
  name: "the snapshot.id / snapshot.name options open a read-only view of the snapshot",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { b } = await pair(d.path, "", "1M", ["write -P 1 0 64k"]);
    await runOk("qemu-img", ["snapshot", "-c", "one", b]);
    await qemuIo(b, "write -P 2 0 64k");
    const buf = new Uint8Array(65536);
    for (const opts of [{ snapshot: { id: "1" } }, { "snapshot.name": "one" }, { snapshot: { id: "1", name: "one" } }]) {
      await using n = await openQcow2(b, opts, true);
      await n.pread(0, buf);
      assert.ok(buf.every((x) => x === 1), JSON.stringify(opts));
    }
    await assert.rejects(() => openQcow2(b, { snapshot: { id: "1" } }), (e) => e instanceof BlockError && e.code === "EINVAL");
    await assert.rejects(
      () => openQcow2(b, { snapshot: { id: "1", name: "two" } }, true),
      (e) => e instanceof BlockError && e.code === "ENOENT",
    );
    await using cur = await openQcow2(b, {}, true);
    await cur.pread(0, buf);
    assert.ok(buf.every((x) => x === 2));
  },
});

Deno.test({
  name: "saveVmstate() writes after the guest data, where qemu-io read -b finds it, with qemu-img's layout",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "", "1M", []);
    await qemuIo(a, "write -b -P 7 0 64k", "write -b -P 8 1M 4k");
    {
      await using n = await openQcow2(b);
      await n.saveVmstate(0, new Uint8Array(65536).fill(7));
      await n.saveVmstate(1 << 20, new Uint8Array(4096).fill(8));
      const back = new Uint8Array(4096);
      await n.loadVmstate(1 << 20, back);
      assert.ok(back.every((x) => x === 8));
      // The guest disk is untouched.
      const guest = new Uint8Array(n.length);
      await n.pread(0, guest);
      assert.ok(guest.every((x) => x === 0));
    }
    assert.deepEqual(await fileLayoutDiff(b, a), []);
    const out = await qemuIo(b, "read -b -P 7 0 64k", "read -b -P 8 1M 4k");
    assert.doesNotMatch(out, /failed/);
  },
});

Deno.test({
  name: "a snapshot keeps its VM state: snapshotCreate() moves it out of the active layer, snapshotGoto() brings it back",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { b } = await pair(d.path, "", "1M", []);
    await using n = await openQcow2(b);
    await n.saveVmstate(0, new Uint8Array(4096).fill(9));
    await n.snapshots.create(info("vm", { vmStateSize: 4096 }));
    const buf = new Uint8Array(4096);
    await n.loadVmstate(0, buf);
    assert.ok(buf.every((x) => x === 0), "the active layer's VM state is dropped");
    await n.snapshots.goto("vm");
    await n.loadVmstate(0, buf);
    assert.ok(buf.every((x) => x === 9));
    assert.equal((await n.snapshots.list())[0].vmStateSize, 4096);
  },
});

Deno.test({
  name: "check counts clusters shared between snapshots without leaks or COPIED errors, as qemu-img check",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { b } = await pair(d.path, "cluster_size=4k", "4M", ["write -P 1 0 2M"]);
    {
      await using n = await openQcow2(b);
      await n.snapshots.create(info("s1"));
      await n.pwrite(0, new Uint8Array(4096).fill(2));
      await n.snapshots.create(info("s2"));
      await n.pwrite(8192, new Uint8Array(4096).fill(3));
    }
    const q = await qemuCheck(b);
    await using n = await openQcow2(b, {}, true);
    const ours = await n.check();
    assert.equal(q.code, 0);
    assert.deepEqual(
      [ours.corruptions, ours.leaks, ours.allocatedClusters, ours.fragmentedClusters, ours.imageEndOffset],
      [0, 0, q.json["allocated-clusters"], q.json["fragmented-clusters"], q.json["image-end-offset"]],
    );
  },
});

Deno.test({
  name: "snapshotDelete() failing while freeing leaves only leaks and reports the stage as QEMU (iotest 217)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { b } = await pair(d.path, "", "64M", ["write 0 64k"]);
    await runOk("qemu-img", ["snapshot", "-c", "foo", b]);
    {
      await using n = await open({
        driver: "qcow2",
        file: { driver: "blkdebug", "inject-error": [{ event: "cluster_free", errno: 5 }], image: { driver: "file", filename: b } },
      });
      await assert.rejects(
        () => n.snapshots.delete("foo"),
        (e) => e instanceof BlockError && e.code === "EIO" && e.message === "Failed to free the cluster and L1 table: Input/output error",
      );
    }
    assert.equal((await runOk("qemu-img", ["snapshot", "-l", b])).stdout, "");
    const c = await qemuCheck(b);
    assert.equal(c.code, 3, JSON.stringify(c.json)); // leaks only
  },
});
