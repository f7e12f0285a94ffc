/**
 * Byte helpers shared by the core and the CLI: zero detection and runs of
 * non-zero data.
 *
 * @module
 */

/** Tells whether a buffer holds only zero bytes. */
export function isZero(buf: Uint8Array): boolean {
  const words = buf.byteOffset % 4 === 0 ? new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2) : undefined;
  let i = 0;
  if (words) {
    for (let w = 0; w < words.length; w++) if (words[w] !== 0) return false;
    i = words.length * 4;
  }
  for (; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Ranges `[start, end)` of `data` holding non-zero bytes, at `gran` granularity, adjacent ones merged. */
export function nonZeroRuns(data: Uint8Array, gran: number): [number, number][] {
  const runs: [number, number][] = [];
  for (let s = 0; s < data.length; s += gran) {
    const e = Math.min(data.length, s + gran);
    if (isZero(data.subarray(s, e))) continue;
    const last = runs[runs.length - 1];
    if (last && last[1] === s) last[1] = e;
    else runs.push([s, e]);
  }
  return runs;
}
