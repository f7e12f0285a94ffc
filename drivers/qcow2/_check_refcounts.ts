/**
 * The on-disk refcounts as check reads and repairs them: the refcount table
 * and a bounded cache of refcount blocks (a few MiB, like QEMU's refcount
 * block cache, whatever the image's size), with dirty tracking for repairs:
 * a changed block leaving the cache is written back.
 *
 * Private to `check.ts`.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import { entryOffset, readRefcount, writeRefcount } from "./_entries.ts";
import { readPadded } from "./_check_types.ts";

/** One cached refcount block. */
export interface RefBlock {
  /** The block's bytes. */
  bytes: Uint8Array;
  /** A view on `bytes`. */
  view: DataView;
  /** Changed since read. */
  dirty: boolean;
}

/** Reads (and on repair writes) the refcounts stored in the image. */
export class DiskRefcounts {
  #file: BlockNode;
  #cs: number;
  #order: number;
  #table: Uint8Array = new Uint8Array(0);
  #view: DataView = new DataView(this.#table.buffer);
  /** Cached blocks in least-recently-used order (oldest first). */
  #blocks = new Map<number, RefBlock>();
  readonly #capacity: number;
  #written = false;
  /** Refcounts per refcount block. */
  readonly perBlock: number;
  /** Called when a refcount block offset is unusable (QEMU's qcow2_signal_corruption). */
  onCorrupt?: (what: string) => void;

  /** Prepares to read refcounts of 2^`order` bits in clusters of `cs` bytes. */
  constructor(file: BlockNode, cs: number, order: number) {
    this.#file = file;
    this.#cs = cs;
    this.#order = order;
    this.perBlock = (cs * 8) / 2 ** order;
    this.#capacity = Math.max(8, Math.floor((4 << 20) / cs));
  }

  /** (Re)reads the refcount table and forgets cached blocks. */
  async load(offset: number, clusters: number): Promise<void> {
    this.#table = new Uint8Array(clusters * this.#cs);
    await this.#file.pread(offset, this.#table);
    this.#view = new DataView(this.#table.buffer);
    this.#blocks.clear();
  }

  /** Number of refcount blocks held in memory now. */
  get cached(): number {
    return this.#blocks.size;
  }

  /** Number of refcount table entries. */
  get entries(): number {
    return this.#table.length / 8;
  }

  /** The high and low 32 bits of refcount table entry `i`. */
  entry(i: number): [number, number] {
    return [this.#view.getUint32(i * 8), this.#view.getUint32(i * 8 + 4)];
  }

  #blockOffset(index: number): number {
    return entryOffset(this.#view, index * 8);
  }

  /** Refcount block `index`, or null when there is none; throws when its offset is unusable. */
  async block(index: number): Promise<RefBlock | null> {
    const cached = this.#blocks.get(index);
    if (cached) {
      this.#blocks.delete(index);
      this.#blocks.set(index, cached);
      return cached;
    }
    if (index >= this.entries) return null;
    const offset = this.#blockOffset(index);
    if (offset === 0) return null;
    if (offset % this.#cs !== 0) {
      this.onCorrupt?.(`Refblock offset 0x${offset.toString(16)} unaligned (reftable index: ${index ? `0x${index.toString(16)}` : "0"})`);
      throw new Error("Input/output error");
    }
    const bytes = new Uint8Array(this.#cs);
    await readPadded(this.#file, offset, bytes);
    const b: RefBlock = { bytes, view: new DataView(bytes.buffer), dirty: false };
    this.#blocks.set(index, b);
    // Evict the least recently used blocks beyond the capacity, writing back changed ones.
    for (const [old, ob] of this.#blocks) {
      if (this.#blocks.size <= this.#capacity || ob === b) break;
      this.#blocks.delete(old);
      if (ob.dirty) await this.#writeBack(old, ob);
    }
    return b;
  }

  async #writeBack(index: number, b: RefBlock): Promise<void> {
    await this.#file.pwrite(this.#blockOffset(index), b.bytes);
    b.dirty = false;
    this.#written = true;
  }

  /** Refcount `k` of a block. */
  read(b: RefBlock, k: number): number {
    return readRefcount(b.view, 2 ** this.#order, k);
  }

  /** Refcount `k` of a block as QEMU prints it (exact for 64-bit refcounts past 2^53). */
  text(b: RefBlock, k: number): string {
    return this.#order === 6 ? b.view.getBigUint64(k * 8).toString() : String(this.read(b, k));
  }

  /** The refcount of `cluster` as QEMU prints it (see {@linkcode DiskRefcounts.text}). */
  async textOf(cluster: number): Promise<string> {
    const b = await this.block(Math.floor(cluster / this.perBlock));
    return b ? this.text(b, cluster % this.perBlock) : "0";
  }

  /** Changes refcount `k` of a block (written by {@linkcode DiskRefcounts.writeDirty}). */
  write(b: RefBlock, k: number, value: number): void {
    writeRefcount(b.view, 2 ** this.#order, k, value);
    b.dirty = true;
  }

  /**
   * The on-disk refcount of `cluster` without I/O: undefined when its block
   * still has to be read (then use {@linkcode DiskRefcounts.get}).
   */
  peek(cluster: number): number | undefined {
    const index = Math.floor(cluster / this.perBlock);
    const b = this.#blocks.get(index);
    if (b) return this.read(b, cluster % this.perBlock);
    if (index >= this.entries || this.#blockOffset(index) === 0) return 0;
    return undefined;
  }

  /** The on-disk refcount of `cluster` (0 without a refcount block). */
  async get(cluster: number): Promise<number> {
    const b = await this.block(Math.floor(cluster / this.perBlock));
    return b ? this.read(b, cluster % this.perBlock) : 0;
  }

  /** Writes the changed blocks back and flushes. */
  async writeDirty(): Promise<void> {
    for (const [index, b] of this.#blocks) if (b.dirty) await this.#writeBack(index, b);
    if (this.#written) await this.#file.flush();
    this.#written = false;
  }
}
