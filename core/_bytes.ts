/**
 * Byte helpers shared by the core and the CLI: zero detection and runs of
 * non-zero data.
 *
 * @module
 */

/** Tells whether a buffer holds only zero bytes. */
export function isZero(buf: Uint8Array): boolean {
  const words = buf.byteOffset % 4 === 0 ? new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2) : undefined;
  return zeroBetween(buf, words, 0, buf.length);
}

/**
 * Ranges `[start, end)` of `data` holding non-zero bytes, at `gran` granularity, adjacent ones merged. One word view
 * serves the whole buffer: no subarray or view is made per granule (a 2 MiB chunk at 4 KiB is 512 granules).
 */
export function nonZeroRuns(data: Uint8Array, gran: number): [number, number][] {
  const runs: [number, number][] = [];
  const words = data.byteOffset % 4 === 0 && gran % 4 === 0 ? new Uint32Array(data.buffer, data.byteOffset, data.length >>> 2) : undefined;
  let last: [number, number] | undefined;
  for (let s = 0; s < data.length; s += gran) {
    const e = Math.min(data.length, s + gran);
    if (zeroBetween(data, words, s, e)) continue;
    if (last && last[1] === s) last[1] = e;
    else runs.push(last = [s, e]);
  }
  return runs;
}

/** `data[s, e)` is all zeros; `words` (when given) views `data` as 32-bit words and `s` is a multiple of 4. */
function zeroBetween(data: Uint8Array, words: Uint32Array | undefined, s: number, e: number): boolean {
  let i = s;
  if (words) {
    const we = e >>> 2;
    let w = s >>> 2;
    // Eight words OR-ed per step: a zero granule is read at several bytes per cycle.
    for (const w8 = we - 7; w < w8; w += 8) {
      if ((words[w] | words[w + 1] | words[w + 2] | words[w + 3] | words[w + 4] | words[w + 5] | words[w + 6] | words[w + 7]) !== 0) {
        return false;
      }
    }
    for (; w < we; w++) if (words[w] !== 0) return false;
    i = we * 4;
  }
  for (; i < e; i++) if (data[i] !== 0) return false;
  return true;
}
