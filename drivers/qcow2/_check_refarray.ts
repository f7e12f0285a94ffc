/**
 * The checker's in-memory refcount array (QEMU's refcount table of
 * qcow2_check_refcounts): one entry per host cluster, exactly as wide as the
 * image's refcounts — 1, 2 or 4 bits packed into bytes, or 8 to 64 bits —
 * grown the way QEMU's realloc_refcount_array grows it (to the cluster that
 * is needed, rounded up to a whole cluster's worth of array bytes), so its
 * memory is what QEMU's is.
 *
 * Private to `check.ts`.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";

type Wide = Uint8Array | Uint16Array | Uint32Array | Float64Array;

/** QEMU's check refuses images of more clusters than this (nb_clusters > INT_MAX: EFBIG). */
export const MAX_CHECK_CLUSTERS = 0x7fffffff;

/**
 * The refcounts check expects, one per host cluster; grows on demand. Each
 * entry is as wide as the image's refcounts (values never exceed them).
 */
export class RefArray {
  #size: number;
  readonly #order: number;
  readonly #bits: number;
  /** Entries per "cluster" of array bytes (QEMU grows in those). */
  readonly #step: number;
  #packed?: Uint8Array;
  #wide?: Wide;

  /** Makes an array for `size` clusters, all zero, for refcounts of 2^`order` bits in clusters of `clusterSize` bytes. */
  constructor(size: number, order = 6, clusterSize = 65536) {
    this.#order = order;
    this.#bits = 2 ** order;
    this.#step = (clusterSize * 8) / this.#bits;
    this.#size = 0;
    this.#alloc(size);
    this.#size = size;
  }

  /** Number of clusters covered (QEMU's nb_clusters). */
  get size(): number {
    return this.#size;
  }

  /** Bytes the array takes. */
  get byteLength(): number {
    return (this.#packed ?? this.#wide!).byteLength;
  }

  #capacity(): number {
    if (this.#packed) return (this.#packed.length * 8) / this.#bits;
    return this.#wide?.length ?? 0;
  }

  #alloc(entries: number): void {
    if (entries > MAX_CHECK_CLUSTERS) {
      throw new BlockError("EFBIG", `Check failed: File too large (${entries} clusters to count; at most ${MAX_CHECK_CLUSTERS})`);
    }
    const n = Math.max(this.#step, Math.ceil(entries / this.#step) * this.#step);
    if (this.#order < 3) {
      const next = new Uint8Array((n * this.#bits) / 8);
      if (this.#packed) next.set(this.#packed);
      this.#packed = next;
      return;
    }
    const next = this.#order === 3
      ? new Uint8Array(n)
      : this.#order === 4
      ? new Uint16Array(n)
      : this.#order === 5
      ? new Uint32Array(n)
      : new Float64Array(n);
    if (this.#wide) next.set(this.#wide as never);
    this.#wide = next;
  }

  /** Refcount of cluster `i` (0 past the end). */
  get(i: number): number {
    if (i >= this.#size) return 0;
    const p = this.#packed;
    if (!p) return this.#wide![i];
    const bits = this.#bits;
    const perByte = 8 / bits;
    return (p[Math.floor(i / perByte)] >> (bits * (i % perByte))) & ((1 << bits) - 1);
  }

  /** Sets cluster `i`, growing the array to cover it. */
  set(i: number, value: number): void {
    if (i >= this.#size) this.grow(i + 1);
    const p = this.#packed;
    if (!p) {
      this.#wide![i] = value;
      return;
    }
    const bits = this.#bits;
    const perByte = 8 / bits;
    const at = Math.floor(i / perByte);
    const shift = bits * (i % perByte);
    const mask = ((1 << bits) - 1) << shift;
    p[at] = (p[at] & ~mask) | ((value << shift) & mask);
  }

  /** Grows the array to cover `size` clusters. */
  grow(size: number): void {
    if (size <= this.#size) return;
    if (size > this.#capacity()) this.#alloc(size);
    this.#size = size;
  }

  /** Sets every refcount to zero, keeping the size. */
  clear(): void {
    (this.#packed ?? this.#wide!).fill(0);
  }
}
