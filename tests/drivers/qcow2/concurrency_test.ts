/**
 * qcow2 under concurrent requests: writes allocating in the same cluster or
 * the same L2 table must neither double-allocate nor lose data.
 */

import assert from "node:assert/strict";
import { tempDir } from "../../_helpers/qemu.ts";
import { createImage, open } from "../../../mod.ts";
import { checkQcow2 } from "../../../drivers/qcow2/check.ts";
import { gates } from "../../_helpers/test_drivers.ts";
import { assertClean, assertSameAsRaw, firstDiff, lcg, Mirror, openQcow2, qemuCreate, qemuOverlay, readAll, toRaw } from "./_util.ts";

Deno.test({
  name: "qcow2 concurrent writes into one unallocated cluster keep every write",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/c.qcow2`;
    await qemuCreate(path, "1M");
    const mirror = new Mirror(new Uint8Array(1 << 20));
    {
      await using node = await openQcow2(path);
      const writes = [];
      for (let i = 0; i < 16; i++) {
        const d = new Uint8Array(4096).fill(i + 1);
        mirror.write(i * 4096, d);
        writes.push(node.pwrite(i * 4096, d));
      }
      await Promise.all(writes);
      assert.equal(firstDiff(await readAll(node), mirror.data), -1);
    }
    await Deno.writeFile(`${dir.path}/expect.raw`, mirror.data);
    await assertClean(path);
    await assertSameAsRaw(path, `${dir.path}/expect.raw`);
  },
});

Deno.test({
  name: "qcow2 concurrent partial writes over a backing file copy the backing data once",
  async fn() {
    await using dir = await tempDir();
    const { top: path } = await qemuOverlay(dir.path, "1M", ["write -P 0x5a 0 1M"], "cluster_size=64k");
    await toRaw(path, `${dir.path}/start.raw`);
    const mirror = new Mirror(await Deno.readFile(`${dir.path}/start.raw`));
    {
      await using node = await openQcow2(path);
      const writes = [];
      for (let i = 0; i < 32; i++) {
        const off = i * 3000 + 17;
        const d = new Uint8Array(1000).fill(i + 1);
        mirror.write(off, d);
        writes.push(node.pwrite(off, d));
      }
      await Promise.all(writes);
    }
    await Deno.writeFile(`${dir.path}/expect.raw`, mirror.data);
    await assertClean(path);
    await assertSameAsRaw(path, `${dir.path}/expect.raw`);
  },
});

Deno.test({
  name: "qcow2 concurrent writes, zeroes and reads with tiny caches stay consistent",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/m.qcow2`;
    const size = 8 << 20;
    await qemuCreate(path, size, "cluster_size=4k");
    const mirror = new Mirror(new Uint8Array(size));
    const rnd = lcg(42);
    {
      await using node = await openQcow2(path, { "l2-cache-size": "8k", "refcount-cache-size": "16k" });
      for (let round = 0; round < 10; round++) {
        // Requests in one round touch disjoint 64 KiB slots, so the result is deterministic.
        const slots = new Set<number>();
        const ops: Promise<void>[] = [];
        for (let i = 0; i < 24; i++) {
          const slot = Math.floor(rnd() * (size / 65536));
          if (slots.has(slot)) continue;
          slots.add(slot);
          const off = slot * 65536 + Math.floor(rnd() * 30000);
          const len = 1 + Math.floor(rnd() * 30000);
          const kind = rnd();
          if (kind < 0.6) {
            const d = new Uint8Array(len).fill(1 + ((round * 24 + i) % 250));
            mirror.write(off, d);
            ops.push(node.pwrite(off, d));
          } else if (kind < 0.8) {
            mirror.set(off, 0, len);
            ops.push(node.pwriteZeroes(off, len));
          } else {
            const buf = new Uint8Array(len);
            const expect = mirror.data.slice(off, off + len);
            ops.push(node.pread(off, buf).then(() => assert.equal(firstDiff(buf, expect), -1)));
          }
        }
        await Promise.all(ops);
      }
      assert.equal(firstDiff(await readAll(node), mirror.data), -1);
    }
    await Deno.writeFile(`${dir.path}/expect.raw`, mirror.data);
    await assertClean(path);
    await assertSameAsRaw(path, `${dir.path}/expect.raw`);
  },
});

/**
 * The pin race of the L2 cache, made deterministic: a reader's load of L2
 * table C is held at a gate while table A (clean) and B (dirty) fill a
 * two-table cache; a writer then allocates in A's range, and the reader is
 * released every possible number of microtask turns before or after the
 * writer starts. Whatever the interleaving, the writer's L2 update must survive the reader's insert of C
 * (which evicts the only clean, unpinned table) and reach the disk.
 */
Deno.test("qcow2 keeps a writer's L2 update when a concurrent read's table load evicts its table, in every interleaving", async () => {
  await using dir = await tempDir();
  const base = `${dir.path}/base.qcow2`;
  const cs = 4096;
  const span = (cs / 8) * cs; // guest bytes per L2 table: 2 MiB
  await createImage(base, "qcow2", 8 << 20, { options: { cluster_size: cs } });
  {
    await using node = await open({ driver: "qcow2", file: { driver: "file", filename: base } });
    for (const t of [0, 1, 2]) await node.pwrite(t * span, new Uint8Array(cs).fill(0x10 + t));
  }
  const head = await Deno.readFile(base);
  const hv = new DataView(head.buffer);
  const l1 = Number(hv.getBigUint64(40));
  const l2C = Number(hv.getBigUint64(l1 + 16) & 0x00fffffffffffe00n);

  let turnsTried = 0;
  for (let shift = -40; shift <= 40; shift++) {
    const turns = shift;
    const path = `${dir.path}/t${shift + 40}.qcow2`;
    await Deno.copyFile(base, path);
    const tag = `pin-${shift + 40}`;
    {
      await using node = await open({
        driver: "qcow2",
        "l2-cache-size": 2 * cs,
        file: { driver: "test-gate", tag, file: { driver: "file", filename: path } },
      });
      const gate = gates.get(tag)!;
      await node.pread(0, new Uint8Array(cs)); // A cached, clean
      await node.pwrite(span + cs, new Uint8Array(cs).fill(0xbb)); // B cached, dirty
      gate.arm(l2C, cs);
      const reader = node.pread(2 * span, new Uint8Array(cs)); // loads C: held at the gate
      await gate.reached;
      // shift < 0: release the reader -shift turns before the writer starts; else after.
      if (shift < 0) gate.release();
      for (let i = 0; i < -shift; i++) await Promise.resolve();
      const writer = node.pwrite(cs, new Uint8Array(cs).fill(0xaa)); // allocates in A's range
      for (let i = 0; i < shift; i++) await Promise.resolve();
      if (shift >= 0) gate.release();
      await Promise.all([reader, writer]);
      turnsTried++;
    }
    await using again = await open({ driver: "qcow2", file: { driver: "file", filename: path } }, { readOnly: true });
    const back = new Uint8Array(cs);
    await again.pread(cs, back);
    assert.equal(back.every((b) => b === 0xaa), true, `after ${turns} microtask turns the write at ${cs} reads back ${back[0]}`);
    await again.pread(span + cs, back);
    assert.equal(back.every((b) => b === 0xbb), true, `after ${turns} turns the write into table B was lost`);
    const report = await checkQcow2(again.file!);
    assert.equal(report.corruptions + report.leaks, 0, `after ${turns} turns: ${JSON.stringify(report)}`);
  }
  assert.equal(turnsTried, 81);
});
