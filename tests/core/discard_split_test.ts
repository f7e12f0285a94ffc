import assert from "node:assert/strict";
import { open } from "../../mod.ts";

/** The discards a memory node below a blkdebug node with the given limits receives. */
async function pieces(limits: Record<string, string>, offset: number, length: number): Promise<[number, number][]> {
  await using top = await open({ driver: "blkdebug", ...limits, image: { driver: "memory", size: 256 << 20 } });
  const seen: [number, number][] = [];
  const child = top.primaryChild!;
  const orig = child.pdiscard.bind(child);
  child.pdiscard = (o: number, n: number, opts) => {
    seen.push([o, n]);
    return orig(o, n, opts);
  };
  await top.pdiscard(offset, length);
  return seen;
}

Deno.test("a discard is cut at the discard alignment, as QEMU's bdrv_co_pdiscard cuts it (iotests 177, 204)", async () => {
  const M = 1 << 20;
  const got = await pieces({ align: "512", "opt-discard": "15M", "max-discard": "15M" }, 80000001, 30 * M);
  const start = 80000001;
  const end = start + 30 * M;
  // The unaligned head first: up to a 512-byte boundary, then up to the 15 MiB one.
  assert.deepEqual(got[0], [start, 511]);
  assert.deepEqual(got[1], [start + 511, 90 * M - (start + 511)]);
  // Then whole 15 MiB pieces on the boundary, and the tail up to a 512-byte boundary, then its last byte.
  assert.deepEqual(got[2], [90 * M, 15 * M]);
  assert.deepEqual(got[3], [105 * M, end - 1 - 105 * M]);
  assert.deepEqual(got[4], [end - 1, 1]);
  assert.equal(got.length, 5);
});

Deno.test("without a discard alignment a discard is only cut at max-discard", async () => {
  const got = await pieces({ "max-discard": "1M" }, 1000, 3 << 20);
  assert.deepEqual(got.map(([, n]) => n), [1 << 20, 1 << 20, 1 << 20]);
  assert.equal(got[0][0], 1000);
});
