/**
 * An in-memory dirty bitmap (what QEMU's BdrvDirtyBitmap keeps in an
 * HBitmap): one bit per `granularity` bytes of a disk, set when a write,
 * zero-write or discard touches any byte of that chunk.
 *
 * Bits live in pages of `pageBytes` bytes that exist only where some bit is
 * set; a page whose bits are all set is one shared object. Memory therefore
 * follows what is dirty, not the disk size, and loading a bitmap never
 * allocates more than the pages it reads. Bit `i` is bit `i % 8` (least
 * significant first) of byte `i / 8` — the serialisation of the qcow2
 * bitmaps extension — so a page is exactly one bitmap data cluster when
 * `pageBytes` is the cluster size.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { DirtyExtent } from "./types.ts";

/** The shared page whose bits are all set. */
const FULL = new Uint8Array(0);

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

/**
 * A dirty bitmap over `length` bytes.
 *
 * @example
 * ```ts
 * import { DirtyBitmap } from "./_dirty_bitmap.ts";
 * const bm = new DirtyBitmap(1 << 20, 65536);
 * bm.set(70000, 10);
 * console.log(bm.extent(0, 1 << 20)); // { offset: 0, length: 65536, dirty: false }
 * console.log(bm.extent(65536, 1 << 20)); // { offset: 65536, length: 65536, dirty: true }
 * ```
 */
export class DirtyBitmap {
  /** Bytes per bit (a power of two). */
  readonly granularity: number;
  /** Bytes per page (a power of two, at least 8). */
  readonly pageBytes: number;
  #pageBits: number;
  #length: number;
  #bits: number;
  #pageCount = 0;
  #pages: (Uint8Array | undefined)[] = [];

  /** An empty (clean) bitmap over `length` bytes. */
  constructor(length: number, granularity: number, pageBytes = 65536) {
    if (!isPowerOfTwo(granularity)) {
      throw new BlockError("EINVAL", `Invalid bitmap granularity ${granularity}: it must be a power of two`);
    }
    if (!isPowerOfTwo(pageBytes) || pageBytes < 8) {
      throw new BlockError("EINVAL", `Invalid bitmap page size ${pageBytes}: it must be a power of two of at least 8`);
    }
    this.granularity = granularity;
    this.pageBytes = pageBytes;
    this.#pageBits = pageBytes * 8;
    this.#length = 0;
    this.#bits = 0;
    this.resize(length);
  }

  /** Bytes the bitmap covers. */
  get length(): number {
    return this.#length;
  }

  /** Number of bits (chunks of `granularity` bytes). */
  get bitCount(): number {
    return this.#bits;
  }

  /** Number of pages the bitmap serialises to (qcow2: its bitmap table size). */
  get pageCount(): number {
    return this.#pageCount;
  }

  /** Changes the length: bits for a grown part start clean, bits past a shrunk end are dropped. */
  resize(length: number): void {
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new BlockError("EINVAL", `Invalid bitmap length ${length}: it must be a non-negative integer`);
    }
    const bits = Math.ceil(length / this.granularity);
    const oldPages = this.#pageCount;
    this.#length = length;
    this.#bits = bits;
    this.#pageCount = Math.ceil(bits / this.#pageBits);
    const pages = this.#pageCount;
    if (this.#pages.length > pages) this.#pages.length = pages;
    // The last page keeps no bits past the end (a shrunk or formerly full page is cut).
    if (pages > 0 && pages <= oldPages) this.#maskLast();
  }

  #maskLast(): void {
    const last = this.pageCount - 1;
    const p = this.#pages[last];
    if (!p) return;
    const used = this.#bits - last * this.#pageBits;
    if (used >= this.#pageBits) return;
    const page = p === FULL ? new Uint8Array(this.pageBytes).fill(0xff) : p;
    const fullBytes = Math.floor(used / 8);
    if (used % 8) page[fullBytes] &= (1 << (used % 8)) - 1;
    page.fill(0, Math.ceil(used / 8));
    this.#pages[last] = page.some((b) => b !== 0) ? page : undefined;
  }

  /** Marks every chunk that `[offset, offset + length)` touches dirty (the part inside the bitmap). */
  set(offset: number, length: number): void {
    const end = Math.min(offset + length, this.#length);
    if (length <= 0 || offset >= end) return;
    const g = this.granularity;
    const first = Math.floor(offset / g);
    const last = Math.floor((end - 1) / g);
    const pb = this.#pageBits;
    const pi = Math.floor(first / pb);
    if (last < (pi + 1) * pb) {
      // Inside one page: the common case of a small write.
      const p = this.#pages[pi];
      if (p === FULL) return;
      const page = p ?? (this.#pages[pi] = new Uint8Array(this.pageBytes));
      const a = first - pi * pb;
      if (first === last) page[a >>> 3] |= 1 << (a & 7);
      else this.#fillBits(page, a, last - pi * pb + 1, true);
      return;
    }
    this.#setBits(first, last + 1, true);
  }

  /** Marks the chunks lying wholly inside `[offset, offset + length)` clean (a chunk cut by the disk end counts as whole). */
  reset(offset: number, length: number): void {
    const g = this.granularity;
    const end = Math.min(offset + length, this.#length);
    if (length <= 0 || offset >= end) return;
    const first = Math.ceil(offset / g);
    const stop = end === this.#length ? this.#bits : Math.floor(end / g);
    if (stop > first) this.#setBits(first, stop, false);
  }

  /** Marks everything clean. */
  clear(): void {
    this.#pages = [];
  }

  #setBits(from: number, to: number, value: boolean): void {
    const pb = this.#pageBits;
    for (let b = from; b < to;) {
      const pi = Math.floor(b / pb);
      const a = b - pi * pb;
      const z = Math.min(to - pi * pb, pb);
      b = pi * pb + z;
      const p = this.#pages[pi];
      if (value ? p === FULL : p === undefined) continue;
      const lastPage = pi === this.#pageCount - 1;
      if (a === 0 && z === pb) {
        // A whole page: a full page is shared unless it is the (maybe cut) last one.
        if (!value) this.#pages[pi] = undefined;
        else if (!lastPage || this.#bits % pb === 0) this.#pages[pi] = FULL;
        else this.#fillBits(this.#ownPage(pi), 0, this.#bits - pi * pb, true);
        continue;
      }
      const page = this.#ownPage(pi);
      this.#fillBits(page, a, z, value);
      if (!value && !page.some((x) => x !== 0)) this.#pages[pi] = undefined;
    }
  }

  /** The page `pi` as a private array (a full page is copied out). */
  #ownPage(pi: number): Uint8Array {
    const p = this.#pages[pi];
    if (p && p !== FULL) return p;
    const page = new Uint8Array(this.pageBytes);
    if (p === FULL) page.fill(0xff);
    this.#pages[pi] = page;
    return page;
  }

  /** Sets (or clears) bits `[a, z)` of a page: masks for the partial bytes, whole bytes in between. */
  #fillBits(page: Uint8Array, a: number, z: number, value: boolean): void {
    const first = a >>> 3;
    const last = (z - 1) >>> 3;
    const head = (0xff << (a & 7)) & 0xff;
    const tail = 0xff >>> (7 - ((z - 1) & 7));
    if (first === last) {
      const m = head & tail;
      page[first] = value ? page[first] | m : page[first] & ~m;
      return;
    }
    page[first] = value ? page[first] | head : page[first] & ~head;
    page[last] = value ? page[last] | tail : page[last] & ~tail;
    const v = value ? 0xff : 0;
    if (last - first > 32) page.fill(v, first + 1, last);
    else for (let i = first + 1; i < last; i++) page[i] = v;
  }

  #bit(b: number): boolean {
    const pi = Math.floor(b / this.#pageBits);
    const p = this.#pages[pi];
    if (!p) return false;
    if (p === FULL) return true;
    const i = b - pi * this.#pageBits;
    return (p[i >>> 3] & (1 << (i & 7))) !== 0;
  }

  /** Whether the chunk holding byte `offset` is dirty. */
  isDirty(offset: number): boolean {
    if (offset < 0 || offset >= this.#length) return false;
    return this.#bit(Math.floor(offset / this.granularity));
  }

  /** The run of equal state starting at `offset`, at most `maxLength` bytes and never past the end. */
  extent(offset: number, maxLength: number): DirtyExtent {
    const end = Math.min(this.#length, offset + maxLength);
    if (offset >= end) return { offset, length: 0, dirty: false };
    const g = this.granularity;
    const stopBit = Math.ceil(end / g);
    const start = Math.floor(offset / g);
    const dirty = this.#bit(start);
    const next = this.#findBit(start + 1, stopBit, !dirty);
    return { offset, length: Math.min(end, next * g) - offset, dirty };
  }

  /** The first bit in `[from, to)` whose value is `value`, or `to`. */
  #findBit(from: number, to: number, value: boolean): number {
    const pb = this.#pageBits;
    let b = from;
    while (b < to) {
      const pi = Math.floor(b / pb);
      const p = this.#pages[pi];
      const pageEnd = Math.min(to, (pi + 1) * pb);
      if (p === undefined ? !value : p === FULL ? value : false) return b;
      if (p === undefined || p === FULL) {
        b = pageEnd;
        continue;
      }
      const skip = value ? 0 : 0xff;
      let i = b - pi * pb;
      const z = pageEnd - pi * pb;
      while (i < z) {
        if ((i & 7) === 0 && i + 8 <= z && p[i >>> 3] === skip) {
          i += 8;
          continue;
        }
        if (((p[i >>> 3] >>> (i & 7)) & 1) === (value ? 1 : 0)) return pi * pb + i;
        i++;
      }
      b = pageEnd;
    }
    return to;
  }

  /** The dirty runs in `[offset, offset + length)`, in order. */
  *dirtyRanges(offset = 0, length = Infinity): Generator<DirtyExtent> {
    const end = Math.min(this.#length, offset + length);
    for (let at = Math.max(0, offset); at < end;) {
      const e = this.extent(at, end - at);
      if (e.dirty) yield e;
      at += e.length;
    }
  }

  /** Number of dirty bytes, counted in whole chunks (QEMU's `count`). */
  count(): number {
    let bits = 0;
    for (let pi = 0; pi < this.#pages.length; pi++) {
      const p = this.#pages[pi];
      if (!p) continue;
      if (p === FULL) {
        bits += Math.min(this.#pageBits, this.#bits - pi * this.#pageBits);
        continue;
      }
      for (const byte of p) {
        let v = byte;
        while (v) {
          v &= v - 1;
          bits++;
        }
      }
    }
    return bits * this.granularity;
  }

  /** Page `i` serialised (`pageBytes` bytes), or undefined when it is all clean. */
  page(i: number): Uint8Array | undefined {
    const p = this.#pages[i];
    if (!p) return undefined;
    if (p === FULL) return new Uint8Array(this.pageBytes).fill(0xff);
    return p;
  }

  /**
   * Sets page `i` from serialised bytes (`"ones"`: every bit set). Bits past
   * the end of the bitmap are ignored, as QEMU's deserialisation does.
   */
  loadPage(i: number, data: Uint8Array | "ones"): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.pageCount) {
      throw new BlockError("EINVAL", `Invalid bitmap page ${i}: the bitmap has ${this.pageCount} pages`);
    }
    if (data === "ones") {
      this.#pages[i] = FULL;
    } else {
      if (data.length !== this.pageBytes) {
        throw new BlockError("EINVAL", `Invalid bitmap page of ${data.length} bytes: pages are ${this.pageBytes} bytes`);
      }
      this.#pages[i] = data.some((b) => b !== 0) ? data.slice() : undefined;
    }
    if (i === this.pageCount - 1) this.#maskLast();
  }

  /** Marks dirty every chunk holding a byte that `src` has dirty (any granularity). */
  merge(src: DirtyBitmap): void {
    for (const e of src.dirtyRanges()) this.set(e.offset, e.length);
  }
}
