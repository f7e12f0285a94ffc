/**
 * Low-level readers for qcow2 check: big-endian 64-bit table entries split
 * into two 32-bit halves (no BigInt on the hot path), refcount entries of
 * every width, a growable in-memory refcount array, and the snapshot table
 * and bitmap directory walkers.
 *
 * Private to `check.ts`.
 *
 * @module
 */

/** 2^32, to join two 32-bit halves. */
export const HI = 2 ** 32;

/** Offset part of an L1 or standard L2 entry (bits 9..55). */
export function entryOffset(view: DataView, at: number): number {
  return (view.getUint32(at) & 0x00ffffff) * HI + ((view.getUint32(at + 4) & 0xfffffe00) >>> 0);
}

/** An entry as hexadecimal without prefix, like C's `%" PRIx64 "`. */
export function entryHex(view: DataView, at: number): string {
  const hi = view.getUint32(at);
  const lo = view.getUint32(at + 4);
  return hi ? hi.toString(16) + lo.toString(16).padStart(8, "0") : lo.toString(16);
}

/** Hexadecimal of a 64-bit value given as two 32-bit halves (exact past 2^53). */
export function joinHex(hi: number, lo: number): string {
  return hi ? hi.toString(16) + lo.toString(16).padStart(8, "0") : lo.toString(16);
}

/** A number as hexadecimal without prefix. */
export function hex(n: number): string {
  return n.toString(16);
}

/** Reads refcount `i` of a refcount block with entries of 2^`order` bits. */
export function getRefcount(block: Uint8Array, view: DataView, i: number, order: number): number {
  switch (order) {
    case 0:
      return (block[i >> 3] >> (i & 7)) & 1;
    case 1:
      return (block[i >> 2] >> (2 * (i & 3))) & 3;
    case 2:
      return (block[i >> 1] >> (4 * (i & 1))) & 15;
    case 3:
      return block[i];
    case 4:
      return view.getUint16(2 * i);
    case 5:
      return view.getUint32(4 * i);
    default:
      return view.getUint32(8 * i) * HI + view.getUint32(8 * i + 4);
  }
}

/** Writes refcount `i` of a refcount block with entries of 2^`order` bits. */
export function setRefcount(block: Uint8Array, view: DataView, i: number, order: number, value: number): void {
  switch (order) {
    case 0:
      block[i >> 3] = (block[i >> 3] & ~(1 << (i & 7))) | ((value & 1) << (i & 7));
      return;
    case 1:
      block[i >> 2] = (block[i >> 2] & ~(3 << (2 * (i & 3)))) | ((value & 3) << (2 * (i & 3)));
      return;
    case 2:
      block[i >> 1] = (block[i >> 1] & ~(15 << (4 * (i & 1)))) | ((value & 15) << (4 * (i & 1)));
      return;
    case 3:
      block[i] = value;
      return;
    case 4:
      view.setUint16(2 * i, value);
      return;
    case 5:
      view.setUint32(4 * i, value);
      return;
    default:
      view.setUint32(8 * i, Math.floor(value / HI));
      view.setUint32(8 * i + 4, value % HI);
  }
}

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

/** One entry of the snapshot table, as far as check needs it. */
export interface SnapshotEntry {
  /** Snapshot ID string. */
  id: string;
  /** Snapshot name. */
  name: string;
  /** Offset of the snapshot's L1 table. */
  l1Offset: number;
  /** Entries in the snapshot's L1 table. */
  l1Size: number;
}

const decoder = new TextDecoder();

/**
 * Parses `count` snapshot table entries from `buf` (the table read from the
 * file). Returns the entries and the table's byte size, or a string saying
 * what is wrong.
 */
export function parseSnapshotTable(buf: Uint8Array, count: number): { entries: SnapshotEntry[]; size: number } | string {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const entries: SnapshotEntry[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + 40 > buf.length) return `snapshot table entry ${i} at byte ${at} lies past the end of the table`;
    const l1Offset = view.getUint32(at) * HI + view.getUint32(at + 4);
    const l1Size = view.getUint32(at + 8);
    const idLen = view.getUint16(at + 12);
    const nameLen = view.getUint16(at + 14);
    const extra = view.getUint32(at + 36);
    const end = at + 40 + extra + idLen + nameLen;
    if (end > buf.length) return `snapshot table entry ${i} (${end - at} bytes) lies past the end of the table`;
    const idAt = at + 40 + extra;
    entries.push({
      id: decoder.decode(buf.subarray(idAt, idAt + idLen)),
      name: decoder.decode(buf.subarray(idAt + idLen, end)),
      l1Offset,
      l1Size,
    });
    at = Math.ceil(end / 8) * 8;
  }
  return { entries, size: at };
}

/** One bitmap directory entry: where its bitmap table is. */
export interface BitmapEntry {
  /** Bitmap name. */
  name: string;
  /** Offset of the bitmap table. */
  tableOffset: number;
  /** Entries in the bitmap table. */
  tableSize: number;
}

/** Parses the bitmap directory; returns entries or what is wrong. */
export function parseBitmapDirectory(buf: Uint8Array, count: number): BitmapEntry[] | string {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: BitmapEntry[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + 24 > buf.length) return `bitmap directory entry ${i} lies past the end of the directory`;
    const tableOffset = view.getUint32(at) * HI + view.getUint32(at + 4);
    const tableSize = view.getUint32(at + 8);
    const nameLen = view.getUint16(at + 18);
    const extra = view.getUint32(at + 20);
    const end = at + 24 + extra + nameLen;
    if (end > buf.length) return `bitmap directory entry ${i} lies past the end of the directory`;
    out.push({ name: decoder.decode(buf.subarray(at + 24 + extra, end)), tableOffset, tableSize });
    at = Math.ceil(end / 8) * 8;
  }
  return out;
}
