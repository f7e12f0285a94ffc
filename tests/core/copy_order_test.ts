/**
 * `copyImage()` with `parallel` and `inOrder` (qemu-img convert's default
 * `-m 8` without `-W`): chunks are read ahead, up to `parallel` at once, and
 * written in source order; the first failure stops every worker before the
 * copy returns. The source's reads are slowed down so that later chunks
 * finish reading first.
 */

import assert from "node:assert/strict";
import { BlockError, type BlockNode, copyImage, createImage, open } from "../../mod.ts";
import { tempDir } from "../_helpers/qemu.ts";

const CHUNK = 65536;
const CHUNKS = 16;

/** A memory source of CHUNKS chunks, chunk k filled with k + 1, and a memory target. */
async function pair(): Promise<{ src: BlockNode; dst: BlockNode }> {
  const src = await open({ driver: "memory", size: CHUNKS * CHUNK });
  for (let k = 0; k < CHUNKS; k++) await src.pwrite(k * CHUNK, new Uint8Array(CHUNK).fill(k + 1));
  return { src, dst: await open({ driver: "memory", size: CHUNKS * CHUNK }) };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Slows `node`'s reads (the later the chunk, the shorter the wait; `fail` throws EIO instead) and counts them in flight. */
function slowReads(node: BlockNode, fail?: number): { maxInFlight: () => number; inFlight: () => number } {
  const pread = node.pread.bind(node);
  let now = 0;
  let max = 0;
  node.pread = async (offset, data, opts) => {
    now++;
    max = Math.max(max, now);
    try {
      const k = Math.floor(offset / CHUNK);
      await sleep(CHUNKS - k);
      if (k === fail) throw new BlockError("EIO", `injected read error at chunk ${k}`);
      return await pread(offset, data, opts);
    } finally {
      now--;
    }
  };
  return { maxInFlight: () => max, inFlight: () => now };
}

/** Records where `node` is written (data and zeroes), in the order the writes start. */
function recordWrites(node: BlockNode): number[] {
  const at: number[] = [];
  const pwrite = node.pwrite.bind(node);
  const zeroes = node.pwriteZeroes.bind(node);
  node.pwrite = (offset, data, opts) => (at.push(offset), pwrite(offset, data, opts));
  node.pwriteZeroes = (offset, n, opts) => (at.push(offset), zeroes(offset, n, opts));
  return at;
}

Deno.test("copyImage() with inOrder reads `parallel` chunks ahead and writes them in source order", async () => {
  const { src, dst } = await pair();
  await using _s = src;
  await using _d = dst;
  const reads = slowReads(src);
  const writes = recordWrites(dst);
  await copyImage(src, dst, { parallel: 4, inOrder: true, chunkSize: CHUNK });
  assert.equal(reads.maxInFlight(), 4);
  assert.deepEqual(writes, Array.from({ length: CHUNKS }, (_, k) => k * CHUNK));
  const back = new Uint8Array(CHUNK);
  for (let k = 0; k < CHUNKS; k++) {
    await dst.pread(k * CHUNK, back);
    assert.ok(back.every((b) => b === k + 1), `chunk ${k}`);
  }
});

Deno.test("copyImage() without inOrder writes each chunk as soon as it is read (qemu-img's -W)", async () => {
  const { src, dst } = await pair();
  await using _s = src;
  await using _d = dst;
  slowReads(src);
  const writes = recordWrites(dst);
  await copyImage(src, dst, { parallel: 4, chunkSize: CHUNK });
  assert.deepEqual([...writes].sort((a, b) => a - b), Array.from({ length: CHUNKS }, (_, k) => k * CHUNK));
  // Later chunks read faster here: some were written before the ones before them.
  assert.notDeepEqual(writes, [...writes].sort((a, b) => a - b));
});

for (const [what, written] of [["holes (block status)", false], ["zero data", true]] as const) {
  Deno.test(`copyImage() with inOrder writes the zeros of ${what} in their turn too`, async () => {
    // Every third chunk reads as zeros, a hole of a qcow2 source or written zeros: a target that needs them (zeroTarget)
    // gets a write-zeroes there, in order.
    await using d = await tempDir();
    await createImage(`${d.path}/s.qcow2`, "qcow2", CHUNKS * CHUNK);
    await using src = await open(`${d.path}/s.qcow2`);
    for (let k = 0; k < CHUNKS; k++) {
      if (k % 3 !== 1) await src.pwrite(k * CHUNK, new Uint8Array(CHUNK).fill(k + 1));
      else if (written) await src.pwrite(k * CHUNK, new Uint8Array(CHUNK));
    }
    assert.equal((await src.blockStatus(CHUNK, CHUNK)).zero, !written);
    await using dst = await open({ driver: "memory", size: CHUNKS * CHUNK });
    await dst.pwrite(0, new Uint8Array(CHUNKS * CHUNK).fill(0xee));
    slowReads(src);
    const writes = recordWrites(dst);
    await copyImage(src, dst, { parallel: 4, inOrder: true, chunkSize: CHUNK, zeroTarget: true });
    assert.deepEqual(writes, Array.from({ length: CHUNKS }, (_, k) => k * CHUNK));
    const back = new Uint8Array(CHUNK);
    await dst.pread(4 * CHUNK, back);
    assert.ok(back.every((b) => b === 0));
  });
}

for (const inOrder of [true, false]) {
  Deno.test(`copyImage() with parallel workers${inOrder ? " in order" : ""} fails with the first error once no worker is still reading`, async () => {
    const { src, dst } = await pair();
    await using _s = src;
    await using _d = dst;
    const reads = slowReads(src, 5);
    const writes = recordWrites(dst);
    await assert.rejects(copyImage(src, dst, { parallel: 4, inOrder, chunkSize: CHUNK }), /injected read error at chunk 5/);
    // Nothing of the copy goes on behind the caller's back: no read in flight, and no write starts afterwards.
    assert.equal(reads.inFlight(), 0);
    const n = writes.length;
    await sleep(3 * CHUNKS);
    assert.equal(writes.length, n);
    assert.ok(!writes.includes(5 * CHUNK));
    // In order, nothing after the failed chunk was written either: what was written is a prefix of chunks 0-4.
    if (inOrder) assert.deepEqual(writes, Array.from({ length: writes.length }, (_, k) => k * CHUNK));
    if (inOrder) assert.ok(writes.length <= 5, writes.join(" "));
  });
}

Deno.test("copyImage() with inOrder and topOnly: a chunk left to the backing file waits for its turn before passing it on", async () => {
  // Chunk 0 is the overlay's own (read slowly), chunk 1 only in the backing file (nothing to write, done at once): it
  // must not pass the turn before chunk 0 has taken it.
  await using d = await tempDir();
  await createImage(`${d.path}/base.qcow2`, "qcow2", 4 * CHUNK);
  await createImage(`${d.path}/top.qcow2`, "qcow2", 4 * CHUNK, { options: { backing_file: `${d.path}/base.qcow2`, backing_fmt: "qcow2" } });
  {
    await using base = await open(`${d.path}/base.qcow2`);
    await base.pwrite(0, new Uint8Array(4 * CHUNK).fill(1));
  }
  await using src = await open(`${d.path}/top.qcow2`);
  await src.pwrite(0, new Uint8Array(CHUNK).fill(2));
  await src.pwrite(2 * CHUNK, new Uint8Array(CHUNK).fill(3));
  await using dst = await open({ driver: "memory", size: 4 * CHUNK });
  slowReads(src);
  const writes = recordWrites(dst);
  await copyImage(src, dst, { parallel: 4, inOrder: true, chunkSize: CHUNK, topOnly: true, zeroTarget: true });
  assert.deepEqual(writes, [0, 2 * CHUNK]);
});

Deno.test("copyImage() with parallel workers claims a long hole as one range, as qemu-img's convert_iteration_sectors", async () => {
  // 64 MiB, data in the first and the last chunk: the hole between is one write-zeroes on a target that needs zeros,
  // not one per chunk (1022 of them when every worker claimed a fixed chunk).
  const size = 64 << 20;
  await using d = await tempDir();
  await createImage(`${d.path}/s.qcow2`, "qcow2", size);
  await using src = await open(`${d.path}/s.qcow2`);
  await src.pwrite(0, new Uint8Array(CHUNK).fill(1));
  await src.pwrite(size - CHUNK, new Uint8Array(CHUNK).fill(2));
  for (const inOrder of [true, false]) {
    await using dst = await open({ driver: "memory", size });
    const writes = recordWrites(dst);
    await copyImage(src, dst, { parallel: 8, inOrder, chunkSize: CHUNK, zeroTarget: true });
    assert.deepEqual(writes.sort((a, b) => a - b), [0, CHUNK, size - CHUNK], `inOrder ${inOrder}`);
  }
});
