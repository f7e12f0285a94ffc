/** Unit tests of the qcow2 metadata cache and refcount entry codecs. */

import assert from "node:assert/strict";
import { MetaCache } from "../../../drivers/qcow2/_cache.ts";
import { maxRefcount, readEntry, writeEntry } from "../../../drivers/qcow2/_refcount.ts";

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
  const a = c.insert(0, new Uint8Array(8), true);
  const b = c.insert(8, new Uint8Array(8));
  b.pins++;
  c.insert(16, new Uint8Array(8), true);
  assert.equal(c.size, 3);
  assert.equal(c.overfull, true);
  assert.deepEqual(c.dirtyEntries().map((e) => e.offset), [0, 16]);
  c.markClean(a);
  b.pins--;
  c.trim();
  assert.equal(c.size, 2);
  assert.equal(c.get(16)?.dirty, true);
});

Deno.test("MetaCache.insert() keeps the cached table when a concurrent load inserts the same offset", () => {
  const c = new MetaCache(4);
  const first = c.insert(0, new Uint8Array(8).fill(1), true);
  const second = c.insert(0, new Uint8Array(8).fill(2));
  assert.equal(second, first);
  assert.equal(second.buf[0], 1);
});

for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
  Deno.test(`readEntry() and writeEntry() round-trip ${bits}-bit refcounts without touching neighbours`, () => {
    const buf = new Uint8Array(64);
    const view = new DataView(buf.buffer);
    const n = (64 * 8) / bits;
    const max = maxRefcount(bits);
    for (let i = 0; i < n; i++) writeEntry(view, bits, i, i % 3 === 0 ? max : i % (max + 1));
    for (let i = 0; i < n; i++) assert.equal(readEntry(view, bits, i), i % 3 === 0 ? max : i % (max + 1));
  });
}

Deno.test("readEntry() uses QEMU's bit order for sub-byte refcounts (lowest bits first)", () => {
  const view = new DataView(new Uint8Array([0b10_01_00_11]).buffer);
  assert.deepEqual([0, 1, 2, 3].map((i) => readEntry(view, 2, i)), [3, 0, 1, 2]);
});
