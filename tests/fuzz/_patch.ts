/**
 * The fuzzer's deterministic randomness and its byte patches: a seeded PRNG,
 * mutations as lists of (offset, bytes) patches, and applying them to an
 * image (`_mutate.ts` makes them).
 *
 * @module
 */

/** A deterministic PRNG (mulberry32). */
export class Rng {
  #s: number;
  /** Seeds the generator. */
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** One element of `a`. */
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)];
  }
  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.next() < p;
  }
}

/** One mutation: byte patches (or a new file length) and what it did. */
export interface Mutation {
  /** Human-readable description. */
  label: string;
  /** Bytes written at offsets (applied in order). */
  patches: { at: number; hex: string }[];
  /** New file length (truncation or extension), applied after the patches. */
  length?: number;
}

/** 2^32. */
export const HI = 2 ** 32;

/** Hex of bytes. */
export function hexOf(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Bytes of a hex string. */
export function bytesOf(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** `value` as `size` big-endian bytes (truncated to them). */
export function be(value: bigint, size: number): Uint8Array {
  const out = new Uint8Array(size);
  let v = value & ((1n << BigInt(size * 8)) - 1n);
  for (let i = size - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

/** A patch writing `bytes` at `at`. */
export function patch(at: number, bytes: Uint8Array): { at: number; hex: string } {
  return { at, hex: hexOf(bytes) };
}

/** Applies mutations to an image, returning the new bytes. */
export function applyMutations(img: Uint8Array, muts: readonly Mutation[]): Uint8Array {
  return applyInPlace(img.slice(), muts);
}

/** Applies mutations to `out` itself (a new buffer only when the file grows or shrinks). */
export function applyInPlace(out: Uint8Array, muts: readonly Mutation[]): Uint8Array {
  for (const m of muts) {
    for (const p of m.patches) {
      const b = bytesOf(p.hex);
      if (p.at + b.length > out.length) {
        const grown = new Uint8Array(p.at + b.length);
        grown.set(out);
        out = grown;
      }
      out.set(b, p.at);
    }
    if (m.length !== undefined) {
      const n = new Uint8Array(m.length);
      n.set(out.subarray(0, Math.min(out.length, m.length)));
      out = n;
    }
  }
  return out;
}
