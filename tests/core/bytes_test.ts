/**
 * Zero detection helpers: `isZero()` and `nonZeroRuns()` (qemu-img's `-S`
 * granules), on aligned and unaligned views.
 *
 * @module
 */

import assert from "node:assert/strict";
import { isZero, nonZeroRuns } from "../../core/_bytes.ts";

/** A buffer of `n` zero bytes with `ones` set to 1. */
function withBytes(n: number, ...ones: number[]): Uint8Array {
  const b = new Uint8Array(n);
  for (const i of ones) b[i] = 1;
  return b;
}

Deno.test("nonZeroRuns() of an all-zero buffer is empty", () => {
  assert.deepEqual(nonZeroRuns(new Uint8Array(65536), 4096), []);
});

Deno.test("nonZeroRuns() reports each granule holding a non-zero byte, adjacent ones merged", () => {
  const b = withBytes(8 * 4096, 0, 4095, 4096, 3 * 4096 + 100, 7 * 4096 + 4095);
  assert.deepEqual(nonZeroRuns(b, 4096), [[0, 8192], [12288, 16384], [28672, 32768]]);
});

Deno.test("nonZeroRuns() ends the last run at the buffer's end when the last granule is partial", () => {
  const b = withBytes(4096 + 1000, 4096 + 999);
  assert.deepEqual(nonZeroRuns(b, 4096), [[4096, 5096]]);
  assert.deepEqual(nonZeroRuns(withBytes(4096 + 1000), 4096), []);
});

Deno.test("nonZeroRuns() finds a non-zero byte in a granule's last bytes past the word boundary", () => {
  // 4 KiB + 3: the last granule is 3 bytes, shorter than a word.
  assert.deepEqual(nonZeroRuns(withBytes(4096 + 3, 4096 + 2), 4096), [[4096, 4099]]);
});

Deno.test("nonZeroRuns() reads an unaligned subarray byte by byte and gives the same runs", () => {
  const big = withBytes(1 + 4 * 512, 1 + 512 + 7, 1 + 3 * 512);
  const view = big.subarray(1);
  assert.deepEqual(nonZeroRuns(view, 512), [[512, 1024], [1536, 2048]]);
});

Deno.test("nonZeroRuns() works at a granularity that is not a multiple of 4", () => {
  assert.deepEqual(nonZeroRuns(withBytes(30, 7, 29), 6), [[6, 12], [24, 30]]);
});

Deno.test("nonZeroRuns() of a subarray at a word-aligned offset looks only inside it", () => {
  const big = withBytes(3 * 4096, 100, 2 * 4096 + 5);
  assert.deepEqual(nonZeroRuns(big.subarray(4096, 2 * 4096), 4096), []);
  assert.deepEqual(nonZeroRuns(big.subarray(4096), 4096), [[4096, 8192]]);
});

Deno.test("isZero() sees a non-zero byte at either end of an unaligned view", () => {
  const big = withBytes(10, 1, 9);
  assert.equal(isZero(big.subarray(1, 9)), false);
  assert.equal(isZero(big.subarray(2, 9)), true);
  assert.equal(isZero(big.subarray(2)), false);
});

Deno.test("nonZeroRuns() sees a non-zero byte in the words after the last group of eight", () => {
  // 36-byte granules: nine words, the ninth read on its own.
  assert.deepEqual(nonZeroRuns(withBytes(72, 36 + 33), 36), [[36, 72]]);
  assert.deepEqual(nonZeroRuns(withBytes(72, 31), 36), [[0, 36]]);
});

Deno.test("isZero() sees a non-zero byte in any word of a large aligned buffer", () => {
  for (const at of [0, 5, 31, 32, 4095, (2 << 20) - 1]) assert.equal(isZero(withBytes(2 << 20, at)), false, `byte ${at}`);
  assert.equal(isZero(new Uint8Array(2 << 20)), true);
  assert.equal(isZero(new Uint8Array(0)), true);
});
