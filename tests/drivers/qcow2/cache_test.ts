/** Unit tests of the qcow2 metadata cache and refcount entry codecs. */

import assert from "node:assert/strict";
import { MetaCache } from "../../../drivers/qcow2/_cache.ts";
import { maxRefcount, readRefcount, writeRefcount } from "../../../drivers/qcow2/_entries.ts";

Deno.test("MetaCache.insert() evicts the least recently used clean table", () => {
  const c = new MetaCache(2);
  c.insert(0, new Uint8Array(8));
  c.insert(8, new Uint8Array(8));
  c.get(0);
  c.insert(16, new Uint8Array(8));
  assert.equal(c.get(8), undefined);
  assert.ok(c.get(0));
  assert.ok(c.get(16));
});

Deno.test("MetaCache keeps dirty and pinned tables past its capacity and reports overfull", () => {
  const c = new MetaCache(2);
  const a = c.insert(0, new Uint8Array(8), { dirty: true });
  const b = c.insert(8, new Uint8Array(8), { pin: true });
  c.insert(16, new Uint8Array(8), { dirty: true });
  assert.equal(c.size, 3);
  assert.equal(c.overfull, true);
  assert.deepEqual(c.dirtyEntries().map((e) => e.offset), [0, 16]);
  c.markClean(a);
  c.release(b);
  c.trim();
  assert.equal(c.size, 2);
  assert.equal(c.get(16)?.dirty, true);
});

Deno.test("MetaCache.insert() keeps the cached table when a concurrent load inserts the same offset", () => {
  const c = new MetaCache(4);
  const first = c.insert(0, new Uint8Array(8).fill(1), { dirty: true });
  const second = c.insert(0, new Uint8Array(8).fill(2));
  assert.equal(second, first);
  assert.equal(second.buf[0], 1);
});

Deno.test("MetaCache.acquire() pins a hit in the same step, so an insert cannot evict it", () => {
  const c = new MetaCache(2);
  c.insert(0, new Uint8Array(8));
  c.insert(8, new Uint8Array(8), { dirty: true });
  const a = c.acquire(0)!;
  c.insert(16, new Uint8Array(8));
  assert.equal(c.get(0), a, "the pinned table stayed cached");
  c.release(a);
  c.insert(24, new Uint8Array(8));
  assert.equal(c.get(0), undefined, "released, it is evictable again");
});

Deno.test("MetaCache.load() returns a pinned entry on a hit and on a miss", async () => {
  const c = new MetaCache(2);
  const miss = await c.load(0, () => Promise.resolve(new Uint8Array(8).fill(7)));
  assert.equal(miss.pins, 1);
  const hit = await c.load(0, () => Promise.reject(new Error("must not read")));
  assert.equal(hit, miss);
  assert.equal(hit.pins, 2);
});

Deno.test("MetaCache.markDirty() on an evicted table is a loud internal error", () => {
  const c = new MetaCache(2);
  const a = c.insert(0, new Uint8Array(8));
  c.insert(8, new Uint8Array(8));
  c.insert(16, new Uint8Array(8));
  assert.equal(c.get(0), undefined);
  assert.throws(() => c.markDirty(a), /Internal error: metadata table at offset 0x0 was changed after it left the cache/);
});

Deno.test("MetaCache.release() of an unpinned table is an internal error", () => {
  const c = new MetaCache(2);
  const a = c.insert(0, new Uint8Array(8));
  assert.throws(() => c.release(a), /released more often than pinned/);
});

for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
  Deno.test(`readRefcount() and writeRefcount() round-trip ${bits}-bit refcounts without touching neighbours`, () => {
    const buf = new Uint8Array(64);
    const view = new DataView(buf.buffer);
    const n = (64 * 8) / bits;
    const max = maxRefcount(bits);
    for (let i = 0; i < n; i++) writeRefcount(view, bits, i, i % 3 === 0 ? max : i % (max + 1));
    for (let i = 0; i < n; i++) assert.equal(readRefcount(view, bits, i), i % 3 === 0 ? max : i % (max + 1));
  });
}

Deno.test("readRefcount() uses QEMU's bit order for sub-byte refcounts (lowest bits first)", () => {
  const view = new DataView(new Uint8Array([0b10_01_00_11]).buffer);
  assert.deepEqual([0, 1, 2, 3].map((i) => readRefcount(view, 2, i)), [3, 0, 1, 2]);
});
