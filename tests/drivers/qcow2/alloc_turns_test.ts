/**
 * Allocating writes count their clusters' refcounts in the cached refcount
 * block directly: a whole 2 MiB chunk (32 clusters of 64 KiB) takes a few
 * microtask turns, not a few per cluster. Turns are counts, not timings: they
 * do not move with the machine's load.
 *
 * @module
 */

import assert from "node:assert/strict";
import { createImage, open } from "../../../mod.ts";
import { tempDir } from "../../_helpers/qemu.ts";
import { assertClean } from "./_util.ts";

/** Microtask turns from the call until its promise settles, counted by a self-requeueing microtask. */
async function turnsOf(start: () => Promise<unknown>): Promise<number> {
  let done = false;
  let turns = 0;
  const tick = () => {
    if (done || turns >= 100_000) return;
    turns++;
    queueMicrotask(tick);
  };
  queueMicrotask(tick);
  await start().finally(() => done = true);
  return turns;
}

Deno.test("qcow2 allocating 2 MiB write takes fewer microtask turns than it allocates clusters", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.qcow2`;
  await createImage(path, "qcow2", 64 << 20);
  await using node = await open({ driver: "qcow2", file: { driver: "file", filename: path } }, { cache: "unsafe" });
  const data = new Uint8Array(2 << 20).fill(7);
  // The first write loads the L2 table and the refcount block; the next ones find both cached.
  await node.pwrite(0, data);
  for (const off of [4 << 20, 8 << 20]) {
    const turns = await turnsOf(() => node.pwrite(off, data));
    assert.ok(turns < 32, `${turns} microtask turns for 32 new clusters`);
  }
  const back = new Uint8Array(2 << 20);
  await node.pread(8 << 20, back);
  assert.deepEqual(back, data);
});

Deno.test("qcow2 clusters allocated through the cached refcount path leave a clean image", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/c.qcow2`;
  await createImage(path, "qcow2", 64 << 20, { options: { cluster_size: 4096 } });
  {
    await using node = await open(path);
    // 4 KiB clusters: 2048 refcounts per block, so 24 MiB of writes cross into new refcount blocks.
    for (let off = 0; off < 24 << 20; off += 3 << 20) await node.pwrite(off, new Uint8Array(2 << 20).fill(off >> 20));
  }
  await assertClean(path);
});
