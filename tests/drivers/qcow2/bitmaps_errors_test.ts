/**
 * Malformed bitmap structures and refused bitmap operations, each compared
 * with what QEMU says about the same image: an open fails with QEMU's
 * message, `check` reports a corruption (QEMU cannot even open the image
 * to check it), and an operation QEMU refuses is refused with its words.
 */
import assert from "node:assert/strict";
import { checkQcow2 } from "../../../drivers/qcow2/check.ts";
import { parseHeader } from "../../../drivers/qcow2/header.ts";
import { bitmapsState } from "../../../drivers/qcow2/_bitmap_format.ts";
import { open } from "../../../mod.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { openQcow2, qemuCreate, qemuIo } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

/** An image with bitmap b0 (data in its first chunk), and where its structures are. */
async function imageWithBitmap(path: string): Promise<{ extAt: number; dir: number; table: number }> {
  await qemuCreate(path, "4M");
  await runOk("qemu-img", ["bitmap", "--add", path, "b0"]);
  await qemuIo(path, "write 0 4k");
  const bytes = await Deno.readFile(path);
  const h = parseHeader(bytes.subarray(0, 65536), bytes.length);
  const st = bitmapsState(h);
  assert.equal(st.kind, "valid");
  const dir = st.kind === "valid" ? st.ext.dirOffset : 0;
  const v = new DataView(bytes.buffer);
  // The extension's data: after its 8-byte type and length, found by its magic.
  let extAt = 0;
  for (let at = 112; at < 4096; at += 8) if (v.getUint32(at) === 0x23852875) extAt = at + 8;
  return { extAt, dir, table: v.getUint32(dir) * 2 ** 32 + v.getUint32(dir + 4) };
}

async function poke(path: string, offset: number, bytes: number[]): Promise<void> {
  const f = await Deno.open(path, { read: true, write: true });
  await f.seek(offset, Deno.SeekMode.Start);
  await f.write(new Uint8Array(bytes));
  f.close();
}

const CASES: { what: string; edit: (p: string, at: { extAt: number; dir: number; table: number }) => Promise<void> }[] = [
  { what: "granularity below 512 bytes", edit: (p, at) => poke(p, at.dir + 17, [8]) },
  { what: "a reserved flag", edit: (p, at) => poke(p, at.dir + 12, [0, 0, 0, 6]) },
  { what: "a bitmap type other than dirty tracking", edit: (p, at) => poke(p, at.dir + 16, [2]) },
  { what: "a reserved bit in a table entry", edit: (p, at) => poke(p, at.table + 7, [0x02]) },
  { what: "a table one entry too long", edit: (p, at) => poke(p, at.dir + 8, [0, 0, 0, 2]) },
  { what: "extra data in the directory entry", edit: (p, at) => poke(p, at.dir + 20, [0, 0, 0, 8]) },
  { what: "a non-zero reserved field in the extension", edit: (p, at) => poke(p, at.extAt + 4, [0, 0, 0, 1]) },
  { what: "more bitmaps announced than the directory holds", edit: (p, at) => poke(p, at.extAt, [0, 0, 0, 2]) },
  { what: "zero bitmaps announced", edit: (p, at) => poke(p, at.extAt, [0, 0, 0, 0]) },
  { what: "an unaligned directory offset", edit: (p, at) => poke(p, at.extAt + 23, [0x08]) },
  {
    what: "the name of another bitmap",
    async edit(p) {
      await runOk("qemu-img", ["bitmap", "--add", p, "b1"]);
      // The directory moved; its second entry (after b0's 32 bytes) gets b0's name.
      const bytes = await Deno.readFile(p);
      const st = bitmapsState(parseHeader(bytes.subarray(0, 65536), bytes.length));
      assert.equal(st.kind, "valid");
      await poke(p, (st.kind === "valid" ? st.ext.dirOffset : 0) + 32 + 25, [0x30]);
    },
  },
];

for (const c of CASES) {
  Deno.test({
    name: `qcow2 open() fails with QEMU's message on a bitmap with ${c.what}, and check reports it as a corruption`,
    ignore,
    async fn() {
      await using dir = await tempDir();
      const path = `${dir.path}/bad.qcow2`;
      const at = await imageWithBitmap(path);
      await c.edit(path, at);
      const theirs = await run("qemu-img", ["info", path]);
      assert.notEqual(theirs.code, 0, "qemu-img opened it");
      for (const readOnly of [true, false]) {
        const e = await openQcow2(path, {}, readOnly).then(async (n) => {
          await n.close();
          return undefined;
        }, (e) => e as Error);
        assert.ok(e, `opened read${readOnly ? "-only" : "-write"}`);
        assert.equal(theirs.stderr.trim(), `qemu-img: Could not open '${path}': ${e.message}`);
      }
      await using file = await open({ driver: "file", filename: path }, { readOnly: true });
      const r = await checkQcow2(file);
      assert.ok(r.corruptions > 0, JSON.stringify(r.messages));
      assert.ok(r.messages.some((m) => m.includes("bitmap")), JSON.stringify(r.messages));
    },
  });
}

Deno.test({
  name: "checkQcow2() reports a bad table entry of an in-use bitmap as a corruption (qemu-img check stops: 'Check failed')",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/bad.qcow2`;
    const at = await imageWithBitmap(path);
    await poke(path, at.dir + 15, [3]); // in use: QEMU opens it without loading the table
    await poke(path, at.table + 7, [0x02]);
    const theirs = await run("qemu-img", ["check", path]);
    assert.equal(theirs.code, 1);
    assert.match(theirs.stderr, /Check failed: Invalid argument/);
    await using file = await open({ driver: "file", filename: path }, { readOnly: true });
    const r = await checkQcow2(file);
    assert.equal(r.corruptions, 1);
    assert.deepEqual(r.messages, ["ERROR bitmap 'b0' table entry 0 is invalid: 0x80002"]);
    // The cluster the entry names stays referenced: a repair does not free it.
    assert.equal(r.leaks, 0);
  },
});

Deno.test({
  name: "bitmapAdd() refuses what qemu-img bitmap --add refuses, with its messages",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const v3 = `${dir.path}/v3.qcow2`;
    const v2 = `${dir.path}/v2.qcow2`;
    await qemuCreate(v3, "4M");
    await qemuCreate(v2, "4M", "compat=0.10");
    await runOk("qemu-img", ["bitmap", "--add", v3, "b0"]);
    const cases: [string, string, string, number | undefined][] = [
      [v3, "b0", "--add", undefined],
      [v3, "", "--add", undefined],
      [v3, "x", "-g 1000", 1000],
      [v3, "x", "-g 256", 256],
      [v3, "x", "-g 4G", 2 ** 32],
      [v2, "x", "--add", undefined],
      [v3, "n".repeat(1024), "--add", undefined],
    ];
    for (const [path, name, flag, g] of cases) {
      const args = ["bitmap", "--add", ...(flag.startsWith("-g") ? flag.split(" ") : []), path, name];
      const theirs = (await run("qemu-img", args)).stderr.trim();
      const ours = await (async () => {
        await using n = await openQcow2(path);
        return await n.bitmaps.add(name, { granularity: g }).then(() => "", (e) => (e as Error).message);
      })();
      assert.ok(ours, `${flag} ${name}: accepted`);
      // QEMU names the node '#blockNNN'; the rest is the same.
      const norm = (s: string) => s.replace(/persistent in '[^']*'/, "persistent in NODE");
      assert.equal(norm(theirs), norm(`qemu-img: Operation add on bitmap ${name} failed: ${ours}`));
    }
  },
});

Deno.test({
  name: "bitmapMerge() refuses a source of another size and a missing one, with qemu-img's messages",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const a = `${dir.path}/a.qcow2`;
    const b = `${dir.path}/b.qcow2`;
    await qemuCreate(a, "4M");
    await qemuCreate(b, "8M");
    await runOk("qemu-img", ["bitmap", "--add", a, "t"]);
    await runOk("qemu-img", ["bitmap", "--add", b, "s"]);
    for (const src of ["s", "missing"]) {
      const theirs = (await run("qemu-img", ["bitmap", "--merge", src, "-b", b, a, "t"])).stderr.trim();
      await using s = await openQcow2(b, {}, true);
      await using n = await openQcow2(a);
      const ours = await n.bitmaps.merge("t", { name: src, node: s }).then(() => "", (e) => (e as Error).message);
      assert.equal(theirs, `qemu-img: Operation merge on bitmap t failed: ${ours}`);
    }
  },
});

Deno.test({
  name: "truncate() is refused while a bitmap is inconsistent, with qemu-img resize's message",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    const at = await imageWithBitmap(path);
    await poke(path, at.dir + 15, [3]); // in use: inconsistent
    const theirs = (await run("qemu-img", ["resize", path, "8M"])).stderr.trim();
    await using n = await openQcow2(path);
    const ours = await n.truncate(8 << 20).then(() => "", (e) => (e as Error).message);
    assert.equal(theirs, `qemu-img: ${ours}`);
    assert.equal(n.length, 4 << 20);
  },
});
