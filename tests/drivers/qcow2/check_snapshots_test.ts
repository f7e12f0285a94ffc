/**
 * The qcow2 check's handling of the snapshot table, against qemu-img check
 * 7.2 (iotest 261): incomplete v3 entries and too much extra data are
 * reported (and refused at open) as QEMU does, and `-r all` rewrites the
 * table as qemu-img does. Also: 64-bit refcounts are printed exactly.
 */
import assert from "node:assert/strict";
import { BlockError } from "../../../mod.ts";
import { qemuCheck, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { cli } from "../../cli/_run.ts";
import { fileLayoutDiff } from "./_layout.ts";
import { openQcow2, qemuCreate, qemuIo } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

function u64(b: Uint8Array, at: number): number {
  const v = new DataView(b.buffer, b.byteOffset);
  return v.getUint32(at) * 2 ** 32 + v.getUint32(at + 4);
}

/** Replaces the only snapshot's table entry by one with `extra` bytes of extra data (pattern 0x5a). */
async function craftEntry(path: string, extra: number): Promise<void> {
  const img = await Deno.readFile(path);
  const table = u64(img, 64);
  const old = new DataView(img.buffer, table);
  const id = new TextEncoder().encode("1");
  const name = new TextEncoder().encode("sn0");
  const entry = new Uint8Array(40 + extra + id.length + name.length);
  const v = new DataView(entry.buffer);
  for (let i = 0; i < 12; i++) entry[i] = old.getUint8(i); // L1 offset and size
  v.setUint16(12, id.length);
  v.setUint16(14, name.length);
  v.setUint32(36, extra);
  entry.fill(0x5a, 40, 40 + extra);
  entry.set(id, 40 + extra);
  entry.set(name, 40 + extra + id.length);
  const out = new Uint8Array(Math.max(img.length, table + entry.length));
  out.set(img);
  out.fill(0, table, table + 4096);
  out.set(entry, table);
  await Deno.writeFile(path, out);
}

async function snapshotImage(dir: string, name: string): Promise<string> {
  const path = `${dir}/${name}`;
  await qemuCreate(path, "64M");
  await qemuIo(path, "write -P 1 0 64k");
  await runOk("qemu-img", ["snapshot", "-c", "sn0", path]);
  return path;
}

Deno.test({
  name: "check reports an incomplete v3 snapshot table entry as qemu-img check, and -r all rewrites the table as qemu-img does",
  ignore,
  async fn() {
    await using d = await tempDir();
    const a = await snapshotImage(d.path, "a.qcow2");
    await craftEntry(a, 0);
    const b = `${d.path}/b.qcow2`;
    await Deno.copyFile(a, b);
    const q = await run("qemu-img", ["check", a]);
    const ours = await cli(["check", b]);
    assert.equal(ours.code, q.code);
    assert.match(ours.stderr, /^ERROR snapshot table entry 0 is incomplete$/m);
    assert.match(q.stdout + q.stderr, /ERROR snapshot table entry 0 is incomplete/);
    await runOk("qemu-img", ["check", "-r", "all", a]);
    const fixed = await cli(["check", "-r", "all", b]);
    assert.equal(fixed.code, 0, fixed.stderr);
    assert.match(fixed.stderr, /^Repairing snapshot table entry 0 is incomplete$/m);
    assert.deepEqual(await fileLayoutDiff(b, a), []);
    assert.equal((await qemuCheck(b)).code, 0);
  },
});

Deno.test({
  name: "a snapshot entry with more than 1 KiB of extra data is refused at open and cut by check -r all, as QEMU",
  ignore,
  async fn() {
    await using d = await tempDir();
    const a = await snapshotImage(d.path, "a.qcow2");
    await craftEntry(a, 2048);
    const b = `${d.path}/b.qcow2`;
    await Deno.copyFile(a, b);
    const q = await run("qemu-img", ["info", a]);
    assert.match(
      q.stderr,
      /Too much extra metadata in snapshot table entry 0\nYou can force-remove this extra metadata with qemu-img check -r all/,
    );
    await assert.rejects(
      () => openQcow2(b, {}, true),
      (e) => e instanceof BlockError && e.message.startsWith("Too much extra metadata in snapshot table entry 0\nYou can force-remove"),
    );
    await run("qemu-img", ["check", "-r", "all", a]);
    const fixed = await cli(["check", "-r", "all", b]);
    assert.match(fixed.stderr, /^Discarding too much extra metadata in snapshot table entry 0 \(2048 > 1024\)$/m);
    assert.deepEqual(await fileLayoutDiff(b, a), []);
    await using n = await openQcow2(b, {}, true);
    assert.deepEqual((await n.snapshots.list()).map((s) => s.name), ["sn0"]);
  },
});

Deno.test({
  name: "check prints 64-bit refcounts past 2^53 exactly, as qemu-img check",
  ignore,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/t.qcow2`;
    await qemuCreate(path, "64M", "refcount_bits=64");
    await qemuIo(path, "write 0 512");
    const img = await Deno.readFile(path);
    img.fill(0xff, 0x20028, 0x20030); // refcount of the data cluster: 2^64 - 1
    await Deno.writeFile(path, img);
    const q = await run("qemu-img", ["check", path]);
    const ours = await cli(["check", path]);
    assert.equal(ours.stderr, q.stderr.replaceAll("qemu-img: ", "blkgraph: "));
    assert.match(ours.stderr, /refcount=18446744073709551615/);
  },
});

Deno.test({
  name:
    "check of a snapshot table it cannot read fails as qemu-img check: the reason, then 'Check failed: File too large', exit 1, no summary",
  ignore,
  async fn() {
    await using d = await tempDir();
    const a = await snapshotImage(d.path, "a.qcow2");
    await craftEntry(a, 2048);
    for (const output of [[], ["--output=json"]]) {
      const q = await run("qemu-img", ["check", ...output, a]);
      const ours = await cli(["check", ...output, a]);
      assert.deepEqual([ours.code, ours.stdout, ours.stderr], [q.code, q.stdout, q.stderr.replaceAll("qemu-img: ", "blkgraph: ")]);
      assert.equal(q.code, 1);
      assert.match(q.stderr, /Check failed: File too large\n$/);
    }
  },
});
