/**
 * Reading the persistent bitmaps of a qcow2 image at open (block/qcow2-bitmap.c
 * `qcow2_load_dirty_bitmaps`): the directory, and each consistent bitmap's
 * table and data clusters into memory. `_bitmaps.ts` holds them while the
 * image is open; `_bitmap_store.ts` writes them back.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { DirtyBitmap } from "../../core/_dirty_bitmap.ts";
import {
  type BitmapsExt,
  type BitmapTableEntry,
  BME_FLAG_AUTO,
  BME_FLAG_IN_USE,
  loadBitmapDirectory,
  readBitmapTable,
} from "./_bitmap_format.ts";
import type { BitmapEntry } from "./_tables.ts";
import type { Qcow2State } from "./_state.ts";

/** One bitmap of the open image. */
export interface Bitmap {
  name: string;
  granularity: number;
  recording: boolean;
  /** The bits; undefined when the bitmap is inconsistent (in use at open). */
  map: DirtyBitmap | undefined;
  /** Its entry in the directory on disk (undefined: added since the open, not stored yet). */
  disk?: BitmapEntry;
  /** The table on disk when it was loaded (what to free once the bitmap is stored anew). */
  diskTable?: BitmapTableEntry[];
}

/**
 * Loads the bitmaps listed in the directory of `ext` (QEMU's
 * qcow2_load_dirty_bitmaps): every entry, and the bits of those not marked
 * in use, validated as QEMU loads them (a duplicate name, an unreadable
 * table or a table of the wrong size fails the open with QEMU's message).
 */
export async function loadBitmaps(st: Qcow2State, ext: BitmapsExt): Promise<{ dir: BitmapEntry[]; list: Bitmap[] }> {
  const cs = st.cs;
  const length = st.header.size;
  const dir = await loadBitmapDirectory(st.file, ext, cs, length);
  const list: Bitmap[] = [];
  for (const e of dir) {
    // QEMU creates each bitmap before loading its table: a second one of the same name fails there.
    if (list.some((x) => x.name === e.name)) {
      throw new BlockError("EINVAL", `Bitmap already exists: ${e.name}`, { node: st.node.name });
    }
    const g = 2 ** e.granularityBits;
    const bm: Bitmap = { name: e.name, granularity: g, recording: (e.flags & BME_FLAG_AUTO) !== 0, map: undefined, disk: e };
    list.push(bm);
    if (e.flags & BME_FLAG_IN_USE) continue; // content unusable: not loaded
    const table = await readBitmapTable(st.file, e, cs);
    if (typeof table === "number") {
      throw new BlockError("EINVAL", `Could not read bitmap_table table from image for bitmap '${e.name}': Invalid argument`, {
        node: st.node.name,
      });
    }
    const map = new DirtyBitmap(length, g, cs);
    if (map.pageCount !== e.tableSize) {
      throw new BlockError("EINVAL", `Could not read bitmap '${e.name}' from image: Invalid argument`, { node: st.node.name });
    }
    for (let i = 0; i < table.length; i++) {
      const t = table[i];
      if (t.offset) {
        const buf = new Uint8Array(cs);
        const avail = Math.max(0, Math.min(cs, st.file.length - t.offset));
        if (avail) await st.file.pread(t.offset, buf.subarray(0, avail));
        map.loadPage(i, buf);
      } else if (t.ones) map.loadPage(i, "ones");
    }
    bm.map = map;
    bm.diskTable = table;
  }
  return { dir, list };
}
