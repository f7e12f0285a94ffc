/**
 * qcow2 under concurrent requests: writes allocating in the same cluster or
 * the same L2 table must neither double-allocate nor lose data.
 */

import assert from "node:assert/strict";
import { skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { assertClean, assertSameAsRaw, firstDiff, lcg, Mirror, openQcow2, qemuCreate, qemuOverlay, readAll, toRaw } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

Deno.test({
  name: "qcow2 concurrent writes into one unallocated cluster keep every write",
  ignore,
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
  ignore,
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
  ignore,
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
