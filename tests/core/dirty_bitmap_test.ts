import assert from "node:assert/strict";
import { DirtyBitmap } from "../../core/_dirty_bitmap.ts";

const KiB = 1024;

function runs(bm: DirtyBitmap): string[] {
  return [...bm.dirtyRanges()].map((e) => `${e.offset}+${e.length}`);
}

Deno.test("DirtyBitmap.set() marks every chunk a range touches, and only those", () => {
  const bm = new DirtyBitmap(1 << 20, 4096);
  bm.set(4095, 2); // straddles chunks 0 and 1
  bm.set(20 * KiB, 1);
  assert.deepEqual(runs(bm), ["0+8192", "20480+4096"]);
  assert.equal(bm.count(), 3 * 4096);
  assert.equal(bm.isDirty(8192), false);
  assert.equal(bm.isDirty(8191), true);
});

Deno.test("DirtyBitmap.extent() gives the run of equal state from any offset, clamped to the length asked", () => {
  const bm = new DirtyBitmap(100 * KiB, 1024);
  bm.set(10 * KiB, 5 * KiB);
  assert.deepEqual(bm.extent(0, 100 * KiB), { offset: 0, length: 10 * KiB, dirty: false });
  assert.deepEqual(bm.extent(12 * KiB + 7, 100 * KiB), { offset: 12 * KiB + 7, length: 3 * KiB - 7, dirty: true });
  assert.deepEqual(bm.extent(11 * KiB, 100), { offset: 11 * KiB, length: 100, dirty: true });
  assert.deepEqual(bm.extent(15 * KiB, 1 << 30), { offset: 15 * KiB, length: 85 * KiB, dirty: false });
});

Deno.test("DirtyBitmap runs cross page boundaries and whole pages are shared until cut", () => {
  // 64-byte pages: 512 bits each, 512 KiB of disk per page at 1 KiB granularity.
  const bm = new DirtyBitmap(4 << 20, 1024, 64);
  bm.set(500 * KiB, 1100 * KiB); // bits 500..1599: the end of page 0, pages 1 and 2, the start of page 3
  assert.deepEqual(runs(bm), [`${500 * KiB}+${1100 * KiB}`]);
  assert.equal(bm.page(4), undefined);
  assert.ok(bm.page(1)!.every((b) => b === 0xff) && bm.page(2)!.every((b) => b === 0xff));
  bm.reset(600 * KiB, 1 * KiB); // cuts the full page
  assert.deepEqual(runs(bm), [`${500 * KiB}+${100 * KiB}`, `${601 * KiB}+${999 * KiB}`]);
  bm.reset(0, 4 << 20);
  assert.deepEqual(runs(bm), []);
  assert.equal(bm.page(0), undefined);
});

Deno.test("DirtyBitmap.reset() clears only whole chunks inside the range (the last chunk cut by the disk end counts)", () => {
  const bm = new DirtyBitmap(10 * KiB + 100, 1024);
  bm.set(0, 10 * KiB + 100);
  bm.reset(512, 2048); // only chunk 1 lies wholly inside
  assert.deepEqual(runs(bm), ["0+1024", `2048+${8 * KiB + 100}`]);
  bm.reset(10 * KiB, 100);
  assert.deepEqual(runs(bm), ["0+1024", `2048+${8 * KiB}`]);
});

Deno.test("DirtyBitmap ignores the part of a range past its end and never sets bits there", () => {
  const bm = new DirtyBitmap(3000, 512, 8);
  bm.set(2900, 10_000);
  assert.deepEqual(runs(bm), ["2560+440"]);
  const page = bm.page(0)!;
  assert.equal(page[0], 0b0010_0000); // bit 5 of 6 bits
  assert.equal(bm.bitCount, 6);
});

Deno.test("DirtyBitmap.loadPage() drops bits past the end, as QEMU's deserialisation does", () => {
  const bm = new DirtyBitmap(10 * 512, 512, 8);
  bm.loadPage(0, "ones");
  assert.deepEqual(runs(bm), ["0+5120"]);
  assert.deepEqual([...bm.page(0)!], [0xff, 0b11, 0, 0, 0, 0, 0, 0]);
  bm.loadPage(0, new Uint8Array(8).fill(0xff));
  assert.equal(bm.count(), 10 * 512);
  assert.throws(() => bm.loadPage(1, "ones"), /bitmap has 1 pages/);
  assert.throws(() => bm.loadPage(0, new Uint8Array(4)), /pages are 8 bytes/);
});

Deno.test("DirtyBitmap.resize() keeps the bits, starts a grown part clean and cuts a shrunk one", () => {
  const bm = new DirtyBitmap(64 * KiB, 1024, 8);
  bm.set(0, 64 * KiB);
  bm.resize(100 * KiB);
  assert.deepEqual(runs(bm), [`0+${64 * KiB}`]);
  bm.resize(10 * KiB + 1);
  assert.deepEqual(runs(bm), [`0+${10 * KiB + 1}`]);
  bm.resize(20 * KiB);
  assert.deepEqual(runs(bm), [`0+${11 * KiB}`]);
});

Deno.test("DirtyBitmap.merge() marks the chunks holding what another bitmap has dirty, at any granularity", () => {
  const fine = new DirtyBitmap(1 << 20, 512);
  fine.set(70_000, 1);
  const coarse = new DirtyBitmap(1 << 20, 65536);
  coarse.merge(fine);
  assert.deepEqual(runs(coarse), ["65536+65536"]);
  const back = new DirtyBitmap(1 << 20, 512);
  back.merge(coarse);
  assert.deepEqual(runs(back), ["65536+65536"]);
});

Deno.test("DirtyBitmap of a huge disk costs nothing until written", () => {
  const bm = new DirtyBitmap(2 ** 44, 512, 65536);
  assert.equal(bm.pageCount, 2 ** 44 / 512 / (65536 * 8));
  bm.set(2 ** 43, 1);
  assert.deepEqual(runs(bm), [`${2 ** 43}+512`]);
  assert.equal(bm.count(), 512);
});

Deno.test("DirtyBitmap refuses a granularity or page size that is not a power of two", () => {
  assert.throws(() => new DirtyBitmap(4096, 1000), /granularity 1000/);
  assert.throws(() => new DirtyBitmap(4096, 512, 4), /page size 4/);
  assert.throws(() => new DirtyBitmap(-1, 512), /length -1/);
});
