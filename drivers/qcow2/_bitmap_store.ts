/**
 * Writing persistent bitmaps into a qcow2 image, in QEMU's crash-safe
 * order (block/qcow2-bitmap.c): a bitmap's data clusters and table go to
 * newly allocated clusters; a new directory follows; once all of it and its
 * refcounts are durable the header switches to it in one write, and only
 * then are the old structures freed. Marking bitmaps in use rewrites the
 * directory in place with the autoclear bit off meanwhile, so a torn write
 * leaves stale bitmaps, never wrong ones.
 *
 * @module
 */

import { setBitmapDirectory } from "./_overlap.ts";
import { BlockError } from "../../core/errors.ts";
import type { DirtyBitmap } from "../../core/_dirty_bitmap.ts";
import type { RequestInfo } from "../../core/types.ts";
import {
  type BitmapsExt,
  type BitmapTableEntry,
  BME_FLAG_IN_USE,
  encodeBitmapsExt,
  encodeBitmapTable,
  QCOW2_MAX_BITMAP_DIRECTORY_SIZE,
  QCOW2_MAX_BITMAPS,
} from "./_bitmap_format.ts";
import { type BitmapEntry, encodeBitmapDirectory } from "./_tables.ts";
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS, type Qcow2Header } from "./header.ts";
import { serialiseHeader, writeHeaderFields } from "./_header_write.ts";
import { allocClusters } from "./_refcount.ts";
import type { Qcow2State } from "./_state.ts";
import { writeback } from "./_writeback.ts";

/**
 * QEMU's update_ext_header_and_dir_in_place: the directory at
 * `dirOffset` rewritten with every entry marked in use (autoclear bit off
 * meanwhile, each step flushed). Returns the new entries.
 */
export async function markInUseInPlace(
  st: Qcow2State,
  disk: readonly BitmapEntry[],
  dirOffset: number,
  dirSize: number,
): Promise<BitmapEntry[]> {
  const h = st.header;
  const entries = disk.map((e) => ({ ...e, flags: e.flags | BME_FLAG_IN_USE }));
  const dir = encodeBitmapDirectory(entries);
  if (dir.length !== dirSize) throw new BlockError("EINVAL", "Can't update bitmap directory: Invalid argument", { node: st.node.name });
  h.autoclearFeatures &= ~AUTOCLEAR_BITMAPS;
  await writeHeaderFields(st.file, h, ["autoclearFeatures"]);
  await st.file.pwrite(dirOffset, dir);
  await st.file.flush();
  h.autoclearFeatures |= AUTOCLEAR_BITMAPS;
  await writeHeaderFields(st.file, h, ["autoclearFeatures"]);
  return entries;
}

/** Writes a bitmap's non-clean pages to new data clusters and its table to new clusters (QEMU's store_bitmap). */
export async function writeBitmap(
  st: Qcow2State,
  map: DirtyBitmap,
  req: RequestInfo | undefined,
): Promise<{ offsets: number[]; tableOffset: number }> {
  const cs = st.cs;
  const offsets = new Array<number>(map.pageCount).fill(0);
  for (let i = 0; i < offsets.length; i++) {
    const page = map.page(i);
    if (!page) continue;
    offsets[i] = await allocClusters(st, 1, req);
    await st.file.pwrite(offsets[i], page, { req });
  }
  const table = encodeBitmapTable(offsets, cs);
  const tableOffset = await allocClusters(st, table.length / cs, req);
  await st.file.pwrite(tableOffset, table, { req });
  return { offsets, tableOffset };
}

/**
 * QEMU's update_ext_header_and_dir: a new directory of `entries` (none when
 * empty) in new clusters, everything durable, the header switched to it,
 * then the old directory and `frees` queued to be freed after the next
 * flush. Returns where the new directory is (offset and size 0: none).
 */
export async function switchDirectory(
  st: Qcow2State,
  entries: readonly BitmapEntry[],
  old: { offset: number; size: number },
  frees: number[],
  req: RequestInfo | undefined,
): Promise<{ offset: number; size: number }> {
  const cs = st.cs;
  let ext: BitmapsExt | undefined;
  if (entries.length) {
    const dir = encodeBitmapDirectory(entries);
    if (dir.length > QCOW2_MAX_BITMAP_DIRECTORY_SIZE || entries.length > QCOW2_MAX_BITMAPS) {
      throw new BlockError("EFBIG", `Bitmap directory is too large (${entries.length} bitmaps, ${dir.length} bytes)`, {
        node: st.node.name,
      });
    }
    const dirOffset = await allocClusters(st, Math.ceil(dir.length / cs), req);
    await st.file.pwrite(dirOffset, dir, { req });
    ext = { count: entries.length, dirSize: dir.length, dirOffset };
  }
  // The new structures and their refcounts are durable before the header points at them.
  await writeback(st, req);
  await st.flushFiles(req);
  const h = st.header;
  const extensions = h.extensions.filter((e) => e.type !== EXT_BITMAPS);
  if (ext) extensions.push({ type: EXT_BITMAPS, data: encodeBitmapsExt(ext) });
  const autoclear = ext ? h.autoclearFeatures | AUTOCLEAR_BITMAPS : h.autoclearFeatures & ~AUTOCLEAR_BITMAPS;
  await rewriteHeader(st, { ...h, extensions, autoclearFeatures: autoclear }, req);
  // The overlap checks protect the new directory; the old one's clusters may be reused.
  setBitmapDirectory(st, ext ? { offset: ext.dirOffset, size: ext.dirSize } : undefined);
  for (let c = 0; c < Math.ceil(old.size / cs); c++) frees.push(old.offset + c * cs);
  // Freed after the next flush, as every cluster whose last reference went.
  st.pendingFree.push(...frees);
  return { offset: ext?.dirOffset ?? 0, size: ext?.dirSize ?? 0 };
}

/** The clusters a bitmap's table and data occupy. */
export function clustersOf(e: BitmapEntry, table: readonly BitmapTableEntry[], cs: number): number[] {
  const out: number[] = [];
  for (const t of table) if (t.offset) out.push(t.offset);
  for (let c = 0; c < Math.ceil((e.tableSize * 8) / cs); c++) out.push(e.tableOffset + c * cs);
  return out;
}

/** Writes header `h` as the whole first cluster and flushes (QEMU's qcow2_update_header + flush). */
export async function rewriteHeader(st: Qcow2State, h: Qcow2Header, req: RequestInfo | undefined): Promise<void> {
  const bytes = serialiseHeader(h, st.cs); // validates before anything is written
  await st.file.pwrite(0, bytes, { req });
  await st.file.flush({ req });
  st.header = h;
}
