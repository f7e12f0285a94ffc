/**
 * Holes in qcow2 block status: runs of all-zero L2 entries are skipped in
 * one scan (`nextNonZeroEntry`), and the extents reported are the same as
 * an entry-by-entry walk and as `qemu-img map`.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type BlockNode, createImage, open } from "../../../mod.ts";
import { nextNonZeroEntry } from "../../../drivers/qcow2/_l2.ts";
import { runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

/** 4 KiB clusters: one L2 table maps 2 MiB, so an 8 MiB image has four. */
const CS = 4096;

/** An 8 MiB qcow2 (4 KiB clusters) with data at clusters 100 and 700, zero-flag clusters 300-301 and data in the last cluster. */
async function holeyImage(dir: string): Promise<string> {
  const path = `${dir}/holes.qcow2`;
  await createImage(path, "qcow2", 8 << 20, { options: { cluster_size: CS } });
  await using node = await open(path);
  await node.pwrite(100 * CS, new Uint8Array(CS).fill(1));
  await node.pwrite(700 * CS, new Uint8Array(2 * CS).fill(2));
  await node.pwriteZeroes(300 * CS, 2 * CS);
  await node.pwrite((8 << 20) - CS, new Uint8Array(CS).fill(3));
  return path;
}

/** [offset, length, data, zero] of each extent from `from`, asking for at most `step` bytes at a time. */
async function extents(node: BlockNode, from: number, step: number): Promise<[number, number, boolean, boolean][]> {
  const out: [number, number, boolean, boolean][] = [];
  for (let off = from; off < node.length;) {
    const st = await node.blockStatus(off, Math.min(step, node.length - off));
    out.push([off, st.length, st.data, st.zero]);
    off += st.length;
  }
  return out;
}

/** Adjacent extents of the same kind joined. */
function merged(list: [number, number, boolean, boolean][]): [number, number, boolean, boolean][] {
  const out: [number, number, boolean, boolean][] = [];
  for (const e of list) {
    const last = out.at(-1);
    if (last && last[2] === e[2] && last[3] === e[3] && last[0] + last[1] === e[0]) last[1] += e[1];
    else out.push([...e]);
  }
  return out;
}

Deno.test("nextNonZeroEntry() stops at the first entry with any bit set", () => {
  const buf = new Uint8Array(64 * 8);
  buf[20 * 8 + 7] = 0x01; // low word only (the zero flag)
  buf[40 * 8] = 0x80; // high word only (the copied flag)
  const view = new DataView(buf.buffer);
  assert.equal(nextNonZeroEntry(view, 0, 64), 20);
  assert.equal(nextNonZeroEntry(view, 21, 64), 40);
  assert.equal(nextNonZeroEntry(view, 41, 64), 64);
});

Deno.test("nextNonZeroEntry() never passes `end`, and returns `from` for an empty range", () => {
  const view = new DataView(new Uint8Array(64 * 8).buffer);
  assert.equal(nextNonZeroEntry(view, 3, 10), 10);
  assert.equal(nextNonZeroEntry(view, 10, 10), 10);
  assert.equal(nextNonZeroEntry(view, 12, 10), 12);
});

Deno.test("nextNonZeroEntry() reads a table at an unaligned offset (DataView path)", () => {
  const buf = new Uint8Array(1 + 16 * 8);
  buf[1 + 9 * 8 + 3] = 0x10;
  const view = new DataView(buf.buffer, 1, 16 * 8);
  assert.equal(nextNonZeroEntry(view, 0, 16), 9);
  assert.equal(nextNonZeroEntry(view, 10, 16), 16);
});

Deno.test("qcow2 blockStatus() reports a hole up to the next allocated cluster in one extent", async () => {
  await using dir = await tempDir();
  await using node = await open(await holeyImage(dir.path), { readOnly: true });
  const st = await node.blockStatus(0, node.length);
  assert.deepEqual([st.length, st.allocated, st.zero], [100 * CS, false, true]);
  const mid = await node.blockStatus(101 * CS + 100, node.length - 101 * CS - 100);
  assert.deepEqual([mid.length, mid.allocated], [(300 - 101) * CS - 100, false]);
});

Deno.test("qcow2 blockStatus() of a hole stops at the byte limit asked for, mid-cluster too", async () => {
  await using dir = await tempDir();
  await using node = await open(await holeyImage(dir.path), { readOnly: true });
  assert.equal((await node.blockStatus(0, 5 * CS + 17)).length, 5 * CS + 17);
  assert.equal((await node.blockStatus(CS + 5, CS)).length, CS);
  assert.equal((await node.blockStatus(CS + 5, 10)).length, 10);
});

Deno.test("qcow2 blockStatus() of a hole stops at the end of its L2 table", async () => {
  await using dir = await tempDir();
  await using node = await open(await holeyImage(dir.path), { readOnly: true });
  const st = await node.blockStatus(702 * CS, node.length - 702 * CS);
  assert.deepEqual([st.length, st.allocated], [(1024 - 702) * CS, false]);
});

Deno.test("qcow2 blockStatus() walks holes the same whatever the request size", async () => {
  await using dir = await tempDir();
  await using node = await open(await holeyImage(dir.path), { readOnly: true });
  const whole = merged(await extents(node, 0, node.length));
  assert.deepEqual(merged(await extents(node, 0, CS)), whole);
  assert.deepEqual(merged(await extents(node, 0, 3 * CS + 512)), whole);
  assert.deepEqual(whole.map((e) => e[0] / CS), [0, 100, 101, 700, 702, 2047]);
});

Deno.test({
  name: "qcow2 blockStatus() extents of a sparse image are qemu-img map's",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using dir = await tempDir();
    const path = await holeyImage(dir.path);
    const map = JSON.parse((await runOk("qemu-img", ["map", "-f", "qcow2", "--output=json", path])).stdout) as {
      start: number;
      length: number;
      data: boolean;
      zero: boolean;
    }[];
    await using node = await open(path, { readOnly: true });
    const ours = merged(await extents(node, 0, node.length));
    const theirs = merged(map.map((m) => [m.start, m.length, m.data, m.zero]));
    assert.deepEqual(ours, theirs);
  },
});
