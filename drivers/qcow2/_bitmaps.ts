/**
 * Persistent dirty bitmaps of an open qcow2 image, as QEMU keeps them
 * (block/qcow2-bitmap.c): loaded at open, held in memory while the image
 * is open, recording every write, zero-write and discard of enabled
 * bitmaps, and stored back at close.
 *
 * - A read-write open marks every bitmap it loaded `in-use` in the
 *   directory before any guest write can happen (autoclear bit off, flush,
 *   directory rewritten in place, flush, autoclear bit on), so after a crash
 *   the bitmaps are reported inconsistent instead of silently missing
 *   writes. A bitmap found `in-use` at open is inconsistent: only removal is
 *   allowed.
 * - Closing stores every consistent bitmap anew (data clusters, table,
 *   directory), makes it all durable, switches the header to the new
 *   directory with the autoclear bit set, then frees the old structures.
 * - Removal rewrites the directory at once; additions live in memory until
 *   the close stores them (as in QEMU).
 * - With `bitmap-store=flush` (blkgraph's option; QEMU stores only at
 *   close) every flush stores the bitmaps too, so a crash loses only what
 *   came after the last flush: the stored bitmaps are consistent on disk,
 *   and the next write, zero-write, discard or resize first marks them in
 *   use again (a write waits for that, and for a store in progress).
 * - An extension left by a program without bitmap support (autoclear bit
 *   clear) is dropped at a read-write open; its clusters are leaks for
 *   `check -r`.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { DirtyBitmap } from "../../core/_dirty_bitmap.ts";
import type { BitmapAddOptions, BitmapInfo, DirtyExtent, RequestInfo } from "../../core/types.ts";
import type { DriverInstance } from "../../core/node.ts";
import {
  bitmapFlagNames,
  type BitmapsExt,
  type BitmapsState,
  bitmapsState,
  type BitmapTableEntry,
  bitmapTableSize,
  BME_FLAG_AUTO,
  BME_FLAG_IN_USE,
  BME_MAX_PHYS_SIZE,
  BME_MAX_TABLE_SIZE,
  BT_DIRTY_TRACKING,
  newBitmapGranularity,
  readBitmapTable,
} from "./_bitmap_format.ts";
import type { BitmapEntry } from "./_tables.ts";
import { AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, EXT_BITMAPS, INCOMPAT_DATA_FILE } from "./header.ts";
import { writeHeaderFields } from "./_header_write.ts";
import type { Qcow2State } from "./_state.ts";
import { clustersOf, markInUseInPlace, rewriteHeader, switchDirectory, writeBitmap } from "./_bitmap_store.ts";
import { type Bitmap, loadBitmaps } from "./_bitmap_load.ts";

/** QEMU's message for a bitmap whose content was lost. */
function inconsistent(name: string, node: string): BlockError {
  return new BlockError(
    "EINVAL",
    `Bitmap '${name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk`,
    { node },
  );
}

/**
 * The persistent dirty bitmaps of one open qcow2 image; the qcow2 driver
 * serves them through the node's `bitmap*` methods.
 *
 * @example
 * ```ts
 * import { createImage, open } from "../../mod.ts";
 * const path = await Deno.makeTempFile({ suffix: ".qcow2" });
 * await createImage(path, "qcow2", 1 << 20);
 * {
 *   await using img = await open(path);
 *   await img.bitmaps.add("b0", { granularity: 4096 });
 *   await img.pwrite(8192, new Uint8Array(100));
 * } // stored at close
 * await using again = await open(path, { readOnly: true });
 * for await (const e of again.bitmaps.dirtyRanges("b0")) console.log(e); // { offset: 8192, length: 4096, dirty: true }
 * await Deno.remove(path);
 * ```
 */
export class Qcow2Bitmaps {
  #st: Qcow2State;
  #writable: boolean;
  #list: Bitmap[] = [];
  #recording: DirtyBitmap[] = [];
  /** The directory on disk, in order. */
  #disk: BitmapEntry[] = [];
  #dirOffset = 0;
  #dirSize = 0;
  /** Store at every flush, not only at close. */
  #storeOnFlush: boolean;
  /** Some bitmap on disk is not marked in use: a change must mark it first. */
  #consistentOnDisk = false;
  /** A change the disk does not have yet besides writes (add, clear, enable, merge). */
  #changed = false;
  /** A store at flush in progress, or the in-use marking that must precede the next write. */
  #pending: Promise<void> | undefined;

  private constructor(st: Qcow2State, writable: boolean, storeOnFlush: boolean) {
    this.#st = st;
    this.#writable = writable;
    this.#storeOnFlush = storeOnFlush;
  }

  /**
   * Loads the bitmaps of the image (validated as QEMU loads them; an invalid
   * extension, directory or table fails the open with QEMU's message) and,
   * when `writable`, settles the autoclear bits and marks the loaded bitmaps
   * in use. A check-mode open loads nothing (the checker reads the bitmaps
   * itself and reports what is wrong with them); a writable one only drops a
   * stale extension, so a repair frees its clusters as QEMU's does.
   */
  static async open(st: Qcow2State, opts: { writable: boolean; check: boolean; storeOnFlush?: boolean }): Promise<Qcow2Bitmaps> {
    const b = new Qcow2Bitmaps(st, opts.writable && !opts.check, opts.storeOnFlush ?? false);
    const h = st.header;
    let state: BitmapsState;
    try {
      state = bitmapsState(h);
    } catch (e) {
      // The checker reports an invalid extension; a check-mode open leaves it alone.
      if (opts.check) return b;
      throw e;
    }
    if (state.kind === "valid" && !opts.check) await b.#load(state.ext);
    // A repair (check-mode writable open) drops a stale extension as QEMU's open does, but loads nothing.
    if (!opts.writable) return b;
    if (state.kind === "stale") {
      // QEMU drops the extension a program without bitmap support left behind.
      await rewriteHeader(st, { ...h, extensions: h.extensions.filter((e) => e.type !== EXT_BITMAPS) }, undefined);
    }
    // Autoclear bits blkgraph does not maintain go, so whoever does knows their data is stale
    // (a repair's read-write open too, as QEMU's open clears them).
    // A raw data file stays raw: writes go to guest offsets and zero writes are mirrored into it (`_write.ts`).
    const raw = h.incompatibleFeatures & INCOMPAT_DATA_FILE ? h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW : 0;
    const keep = (state.kind === "valid" ? AUTOCLEAR_BITMAPS : 0) | raw;
    if ((st.header.autoclearFeatures & ~keep) !== 0 || st.header.featureHigh?.autoclear) {
      st.header.autoclearFeatures &= keep;
      if (st.header.featureHigh) st.header.featureHigh.autoclear = 0;
      await writeHeaderFields(st.file, st.header, ["autoclearFeatures"]);
    }
    if (opts.check) return b;
    if (b.#list.some((x) => x.map)) await b.#markInUse();
    return b;
  }

  async #load(ext: BitmapsExt): Promise<void> {
    const { dir, list } = await loadBitmaps(this.#st, ext);
    this.#setDisk(dir);
    this.#dirOffset = ext.dirOffset;
    this.#dirSize = ext.dirSize;
    this.#list = list;
    this.#refreshRecording();
  }

  /** QEMU's update_ext_header_and_dir_in_place: the loaded bitmaps are marked in use before the image changes. */
  async #markInUse(): Promise<void> {
    if (!this.#consistentOnDisk) return; // everything on disk is in use already
    const entries = await markInUseInPlace(this.#st, this.#disk, this.#dirOffset, this.#dirSize);
    this.#setDisk(entries);
    for (const b of this.#list) b.disk = entries.find((e) => e.name === b.name);
  }

  #setDisk(entries: BitmapEntry[]): void {
    this.#disk = entries;
    this.#consistentOnDisk = entries.some((e) => !(e.flags & BME_FLAG_IN_USE));
  }

  #refreshRecording(): void {
    this.#recording = this.#list.filter((b) => b.recording && b.map).map((b) => b.map!);
  }

  /** The image can hold persistent bitmaps (version 3: version 2 has no autoclear bits). */
  get persistent(): boolean {
    return this.#st.header.version >= 3;
  }

  /** Records a write, zero-write or discard of `[offset, offset + length)` in every enabled bitmap. */
  mark(offset: number, length: number): void {
    const r = this.#recording;
    for (let i = 0; i < r.length; i++) r[i].set(offset, length);
  }

  /**
   * What a change of the image must wait for before it reaches the disk
   * (undefined: nothing): with `bitmap-store=flush`, a store in progress and
   * then the marking of the stored bitmaps in use.
   */
  beforeChange(): Promise<void> | undefined {
    if (this.#pending) return this.#pending.then(() => this.beforeChange());
    if (!this.#consistentOnDisk || !this.#writable) return undefined;
    const p = this.#pending = this.#st.lock.run(() => this.#markInUse()).finally(() => {
      if (this.#pending === p) this.#pending = undefined;
    });
    return p;
  }

  /** With `bitmap-store=flush`: stores the bitmaps if the disk lacks something (called by the flush, which holds the lock). */
  async storeAtFlush(req: RequestInfo | undefined): Promise<void> {
    if (!this.wantsStoreAtFlush) return;
    let done!: () => void;
    const p = this.#pending = new Promise<void>((r) => (done = r));
    try {
      await this.store(req);
    } finally {
      if (this.#pending === p) this.#pending = undefined;
      done();
    }
  }

  /** Whether the flush has bitmaps to store. */
  get wantsStoreAtFlush(): boolean {
    return this.#storeOnFlush && this.#writable && (!this.#consistentOnDisk || this.#changed) && this.#list.some((b) => b.map);
  }

  /** The bitmaps in directory order (those added since the open last). */
  list(): BitmapInfo[] {
    return this.#list.map((b) => ({
      name: b.name,
      granularity: b.granularity,
      count: b.map ? b.map.count() : 0,
      recording: b.recording,
      persistent: true,
      inconsistent: !b.map,
    }));
  }

  /** The directory as it is on disk, shaped as qemu-img info's `bitmaps`. */
  directoryInfo(): { flags: string[]; name: string; granularity: number }[] {
    return this.#disk.map((e) => ({ flags: bitmapFlagNames(e.flags), name: e.name, granularity: 2 ** e.granularityBits }));
  }

  #find(name: string): Bitmap {
    const b = this.#list.find((x) => x.name === name);
    if (!b) throw new BlockError("ENOENT", `Dirty bitmap '${name}' not found`, { node: this.#st.node.name });
    return b;
  }

  #usable(name: string): Bitmap & { map: DirtyBitmap } {
    const b = this.#find(name);
    if (!b.map) throw inconsistent(name, this.#st.node.name);
    return b as Bitmap & { map: DirtyBitmap };
  }

  /** qemu-img bitmap --add: a new bitmap in memory, stored when the image closes (QEMU's checks and messages). */
  add(name: string, opts: BitmapAddOptions): void {
    const st = this.#st;
    const g = newBitmapGranularity(name, opts, {
      node: st.node.name,
      clusterSize: st.cs,
      length: st.header.size,
      persistent: this.persistent,
      names: this.#list.map((b) => b.name),
    });
    this.#list.push({ name, granularity: g, recording: !opts.disabled, map: new DirtyBitmap(st.header.size, g, st.cs) });
    this.#refreshRecording();
    this.#changed = true;
  }

  /** qemu-img bitmap --remove: the directory on disk loses the entry at once, then its clusters are freed. */
  remove(name: string): Promise<void> {
    const b = this.#find(name);
    const st = this.#st;
    if (!b.disk) {
      this.#list = this.#list.filter((x) => x !== b);
      this.#refreshRecording();
      return Promise.resolve();
    }
    return st.change(async () => {
      const e = b.disk!;
      const frees: number[] = [];
      // QEMU's free_bitmap_clusters: a table that does not load frees nothing (its clusters leak).
      const table = await readBitmapTable(st.file, e, st.cs);
      if (typeof table !== "number") frees.push(...clustersOf(e, table, st.cs));
      await this.#writeDirectory(this.#disk.filter((x) => x !== e), frees, undefined);
      this.#list = this.#list.filter((x) => x !== b);
      this.#refreshRecording();
    });
  }

  /** qemu-img bitmap --clear. */
  clear(name: string): void {
    this.#usable(name).map.clear();
    this.#changed = true;
  }

  /** qemu-img bitmap --enable / --disable. */
  setEnabled(name: string, enabled: boolean): void {
    this.#usable(name).recording = enabled;
    this.#refreshRecording();
    this.#changed = true;
  }

  /** qemu-img bitmap --merge: marks dirty what `dirty` has dirty. */
  async merge(name: string, dirty: AsyncIterable<DirtyExtent>): Promise<void> {
    const map = this.#usable(name).map;
    this.#changed = true;
    for await (const e of dirty) map.set(e.offset, e.length);
  }

  /** The run of equal state in bitmap `name` from `offset`. */
  extent(name: string, offset: number, length: number): DirtyExtent {
    return this.#usable(name).map.extent(offset, length);
  }

  /** Refuses a resize while some bitmap is inconsistent (QEMU's qcow2_truncate_bitmaps_check). */
  checkResize(): void {
    const bad = this.#list.find((b) => !b.map);
    if (bad) throw inconsistent(bad.name, this.#st.node.name);
  }

  /** Follows a resize: grown parts start clean, shrunk parts are dropped. */
  resize(length: number): void {
    for (const b of this.#list) b.map?.resize(length);
  }

  /**
   * Stores every consistent bitmap (QEMU's qcow2_store_persistent_dirty_bitmaps
   * at close); the metadata lock is held. Inconsistent bitmaps keep their
   * entries as they are.
   */
  async store(req: RequestInfo | undefined): Promise<void> {
    if (!this.#writable || !this.#list.some((b) => b.map)) return;
    // Stored at the last flush and nothing changed since: the disk has it all.
    if (this.#consistentOnDisk && !this.#changed) return;
    const st = this.#st;
    const cs = st.cs;
    const entries: BitmapEntry[] = [];
    const frees: number[] = [];
    const tables = new Map<string, BitmapTableEntry[]>();
    for (const b of this.#list) {
      if (!b.map) {
        entries.push(b.disk!);
        continue;
      }
      const map = b.map;
      const size = map.pageCount;
      if (size !== bitmapTableSize(st.header.size, b.granularity, cs) || size > BME_MAX_TABLE_SIZE || size * cs > BME_MAX_PHYS_SIZE) {
        throw new BlockError("EFBIG", `Bitmap '${b.name}' is too big`, { node: st.node.name });
      }
      const { offsets, tableOffset } = await writeBitmap(st, map, req);
      entries.push({
        name: b.name,
        tableOffset,
        tableSize: size,
        flags: b.recording ? BME_FLAG_AUTO : 0,
        type: BT_DIRTY_TRACKING,
        granularityBits: Math.round(Math.log2(b.granularity)),
        extra: new Uint8Array(0),
      });
      if (b.disk && b.diskTable) frees.push(...clustersOf(b.disk, b.diskTable, cs));
      tables.set(b.name, offsets.map((offset) => ({ offset, ones: false })));
    }
    await this.#writeDirectory(entries, frees, req);
    for (const b of this.#list) {
      b.disk = entries.find((e) => e.name === b.name);
      b.diskTable = b.map ? tables.get(b.name) : undefined;
    }
    this.#changed = false;
  }

  /** A new directory replaces the one on disk (see `switchDirectory`); the old one and `frees` are freed after. */
  async #writeDirectory(entries: BitmapEntry[], frees: number[], req: RequestInfo | undefined): Promise<void> {
    const dir = await switchDirectory(this.#st, entries, { offset: this.#dirOffset, size: this.#dirSize }, frees, req);
    this.#setDisk(entries);
    this.#dirOffset = dir.offset;
    this.#dirSize = dir.size;
  }
}

/**
 * The bitmap callbacks of a qcow2 driver instance (`DriverInstance.bitmap*`), served by `bm`.
 *
 * @example
 * ```ts
 * import { createImage, open } from "../../mod.ts";
 * const path = await Deno.makeTempFile({ suffix: ".qcow2" });
 * await createImage(path, "qcow2", 1 << 20);
 * await using img = await open(path);
 * console.log(img.bitmaps.persistent, typeof img.instance.bitmapAdd); // true function
 * await Deno.remove(path);
 * ```
 */
export function bitmapCallbacks(bm: Qcow2Bitmaps): BitmapCallbacks {
  return {
    get persistentBitmaps() {
      return bm.persistent;
    },
    bitmapList: () => bm.list(),
    bitmapAdd: (name, opts) => bm.add(name, opts),
    bitmapRemove: (name) => bm.remove(name),
    bitmapClear: (name) => bm.clear(name),
    bitmapSetEnabled: (name, enabled) => bm.setEnabled(name, enabled),
    bitmapMerge: (name, dirty) => bm.merge(name, dirty),
    bitmapExtent: (name, offset, length) => bm.extent(name, offset, length),
  };
}

/** The bitmap members of a driver instance. */
export type BitmapCallbacks = Required<
  Pick<
    DriverInstance,
    "persistentBitmaps" | "bitmapList" | "bitmapAdd" | "bitmapRemove" | "bitmapClear" | "bitmapSetEnabled" | "bitmapMerge" | "bitmapExtent"
  >
>;
