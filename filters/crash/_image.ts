/**
 * A working image for building crash states: a byte buffer with a length,
 * ops applied in place with an undo log, so many states are built from one
 * base without copying the whole image for each.
 *
 * @module
 */

import type { RecordedOp } from "../recorder.ts";

interface Undo {
  offset: number;
  old: Uint8Array;
  length: number;
}

/** Ops that change image content (flushes and marks do not). */
export function isItem(op: RecordedOp): boolean {
  return op.op === "write" || op.op === "write-zeroes" || op.op === "discard" || op.op === "truncate";
}

/** Whether two ops touch a common byte (a truncate touches everything). */
export function overlaps(a: RecordedOp, b: RecordedOp): boolean {
  if (a.op === "truncate" || b.op === "truncate") return true;
  return a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

/** An image buffer with apply / checkpoint / rollback. Bytes past `length` are always zero. */
export class WorkImage {
  #buf: Uint8Array;
  #length: number;
  #undo: Undo[] = [];
  #recording = false;

  /** Starts from a copy of `base`. */
  constructor(base: Uint8Array) {
    this.#buf = new Uint8Array(Math.max(base.length, 4096));
    this.#buf.set(base);
    this.#length = base.length;
  }

  /** Current length in bytes. */
  get length(): number {
    return this.#length;
  }

  /** The image content (a view: valid until the next change). */
  get bytes(): Uint8Array {
    return this.#buf.subarray(0, this.#length);
  }

  /** Starts recording undo information; returns the checkpoint to roll back to. */
  checkpoint(): number {
    this.#recording = true;
    return this.#undo.length;
  }

  /** Undoes every change made since `cp`. */
  rollback(cp: number): void {
    while (this.#undo.length > cp) {
      const u = this.#undo.pop()!;
      this.#buf.set(u.old, u.offset);
      this.#length = u.length;
    }
    if (cp === 0) this.#recording = false;
  }

  #ensure(end: number): void {
    if (end <= this.#buf.length) return;
    const next = new Uint8Array(Math.max(end, this.#buf.length * 2));
    next.set(this.#buf);
    this.#buf = next;
  }

  #save(start: number, end: number): void {
    if (this.#recording) this.#undo.push({ offset: start, old: this.#buf.slice(start, end), length: this.#length });
  }

  /** Applies `op`; with `limit`, only its first `limit` bytes (a torn write). */
  apply(op: RecordedOp, limit = Infinity): void {
    switch (op.op) {
      case "write":
      case "write-zeroes":
      case "discard": {
        const n = Math.min(op.length, limit);
        const end = op.offset + n;
        this.#ensure(end);
        this.#save(op.offset, end);
        if (op.op === "write") this.#buf.set(op.data!.subarray(0, n), op.offset);
        else this.#buf.fill(0, op.offset, Math.min(end, this.#length));
        if (op.op !== "discard" && end > this.#length) this.#length = end;
        break;
      }
      case "truncate": {
        const to = op.offset;
        const lo = Math.min(to, this.#length);
        const hi = Math.max(to, this.#length);
        this.#ensure(hi);
        this.#save(lo, hi);
        this.#buf.fill(0, lo, hi);
        this.#length = to;
        break;
      }
      default:
        break;
    }
  }

  /** A 64-bit-ish hash of the content and length, as a hex string. */
  hash(): string {
    const n = this.#length;
    const buf = this.#buf;
    let h1 = 0x811c9dc5 ^ n;
    let h2 = 0x01000193 ^ (n / 0x100000000);
    const words = n >>> 2;
    const u32 = new Uint32Array(buf.buffer, buf.byteOffset, words);
    for (let i = 0; i < words; i++) {
      const w = u32[i];
      h1 = Math.imul(h1 ^ w, 0x9e3779b1);
      h2 = Math.imul(h2 ^ w, 0x85ebca77) ^ (h1 >>> 15);
    }
    for (let i = words << 2; i < n; i++) {
      h1 = Math.imul(h1 ^ buf[i], 0x9e3779b1);
      h2 = Math.imul(h2 ^ buf[i], 0x85ebca77);
    }
    h1 ^= h1 >>> 16;
    h2 ^= h2 >>> 13;
    return (h1 >>> 0).toString(16).padStart(8, "0") + (h2 >>> 0).toString(16).padStart(8, "0");
  }
}

/** A small seeded PRNG (mulberry32); same seed, same sequence. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
