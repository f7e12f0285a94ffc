/**
 * The checker's in-memory refcount array (a growable array as wide as the
 * image's refcounts).
 *
 * Private to `check.ts`.
 *
 * @module
 */

type Counts = Uint8Array | Uint16Array | Uint32Array | Float64Array;

/**
 * The refcounts check expects, one per host cluster; grows on demand. Each
 * entry is as wide as the image's refcounts (values never exceed them).
 */
export class RefArray {
  #data: Counts;
  #size: number;
  #make: (n: number) => Counts;

  /** Makes an array for `size` clusters, all zero, for refcounts of 2^`order` bits. */
  constructor(size: number, order = 6) {
    this.#make = order <= 3
      ? (n) => new Uint8Array(n)
      : order === 4
      ? (n) => new Uint16Array(n)
      : order === 5
      ? (n) => new Uint32Array(n)
      : (n) => new Float64Array(n);
    this.#size = size;
    this.#data = this.#make(Math.max(16, size));
  }

  /** Number of clusters covered (QEMU's nb_clusters). */
  get size(): number {
    return this.#size;
  }

  /** Refcount of cluster `i` (0 past the end). */
  get(i: number): number {
    return i < this.#size ? this.#data[i] : 0;
  }

  /** Sets cluster `i`, growing the array to cover it. */
  set(i: number, value: number): void {
    if (i >= this.#size) this.grow(i + 1);
    this.#data[i] = value;
  }

  /** Grows the array to cover `size` clusters. */
  grow(size: number): void {
    if (size <= this.#size) return;
    if (size > this.#data.length) {
      const next = this.#make(Math.max(size, this.#data.length * 2));
      next.set(this.#data.subarray(0, this.#size));
      this.#data = next;
    }
    this.#size = size;
  }

  /** Sets every refcount to zero, keeping the size. */
  clear(): void {
    this.#data.fill(0);
  }
}
