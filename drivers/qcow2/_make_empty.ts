/**
 * Emptying a whole qcow2 image at once (QEMU's make_completely_empty, which
 * qcow2_make_empty uses when it can; `commit` empties the top this way):
 * the L1 table is zeroed, then the first clusters after the header are
 * zeroed and become a new refcount table (cluster 1), its one refcount
 * block (cluster 2) and the L1 table (cluster 3 on), the header points at
 * them, and the file is cut after them. The dirty bit covers the steps in
 * between, when the refcounts are broken; a failure there leaves the node
 * unusable until the image is opened again (which repairs it), as QEMU
 * ejects the driver (`bs->drv = NULL`). Each step raises QEMU's event
 * (l1_update, empty_image_prepare, l1_update + reftable_update,
 * refblock_alloc), so a blkdebug rule fails the step QEMU's fails.
 *
 * @module
 */

import type { RequestInfo } from "../../core/types.ts";
import { bitmapsState } from "./_bitmap_format.ts";
import { CRYPT_LUKS } from "./_crypto.ts";
import { writeHeaderFields } from "./_header_write.ts";
import { INCOMPAT_DIRTY } from "./_header_layout.ts";
import { allocClusters } from "./_refcount.ts";
import type { Qcow2State } from "./_state.ts";
import { writeback } from "./_writeback.ts";

/**
 * Whether {@linkcode makeCompletelyEmpty} can empty the image (QEMU's test
 * in qcow2_make_empty): version 3 (it needs the dirty bit), nothing else that
 * holds clusters (snapshots, persistent bitmaps, a LUKS header), no external
 * data file, and the header, refcount table, one refcount block and the L1
 * table fit in what one refcount block counts.
 */
export function canEmptyCompletely(st: Qcow2State): boolean {
  const l1Clusters = Math.ceil(st.l1Size / (st.cs / 8));
  return st.header.version >= 3 && st.header.nbSnapshots === 0 && bitmapsState(st.header).kind !== "valid" &&
    3 + l1Clusters <= st.perBlock && st.header.cryptMethod !== CRYPT_LUKS && !st.externalData;
}

/** Empties the image as described in the module doc (lock held). */
export async function makeCompletelyEmpty(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  const cs = st.cs;
  // qcow2_cache_empty of both caches: everything cached reaches the disk first.
  await writeback(st, req);
  await st.flushFiles(req);
  // Refcounts will be broken utterly (qcow2_mark_dirty).
  if (!(st.header.incompatibleFeatures & INCOMPAT_DIRTY)) {
    st.header.incompatibleFeatures |= INCOMPAT_DIRTY;
    await writeHeaderFields(st.file, st.header, ["incompatibleFeatures"], req);
  }
  const l1Clusters = Math.ceil(st.l1Size / (cs / 8));
  try {
    let p = st.event("l1_update", req);
    if (p) await p;
    await st.file.pwriteZeroes(st.header.l1TableOffset, l1Clusters * cs, { req });
    p = st.event("empty_image_prepare", req);
    if (p) await p;
    // May overwrite parts of the old refcount structures and L1 table: the dirty bit is set.
    await st.file.pwriteZeroes(cs, (2 + l1Clusters) * cs, { req });
    p = st.event("l1_update", req);
    if (p) await p;
    p = st.event("reftable_update", req);
    if (p) await p;
    const header = { ...st.header, l1TableOffset: 3 * cs, refcountTableOffset: cs, refcountTableClusters: 1 };
    await writeHeaderFields(st.file, header, ["l1TableOffset", "refcountTableOffset", "refcountTableClusters"], req);
    const reftable = new Float64Array(cs / 8);
    st.reset(header, new Uint8Array(st.l1.length), reftable);
    p = st.event("refblock_alloc", req);
    if (p) await p;
    // The first refblock (cluster 2) into the reftable.
    const entry = new Uint8Array(8);
    new DataView(entry.buffer).setBigUint64(0, BigInt(2 * cs));
    await st.file.pwrite(cs, entry, { req });
    await st.file.flush({ req });
    reftable[0] = 2 * cs;
    const at = await allocClusters(st, 3 + l1Clusters, req);
    if (at !== 0) throw new Error(`First cluster in emptied image is in use (allocated at ${at})`);
  } catch (e) {
    st.broken = true;
    throw e;
  }
  // qcow2_mark_clean: the refcounts are right again.
  await writeback(st, req);
  await st.flushFiles(req);
  st.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
  await writeHeaderFields(st.file, st.header, ["incompatibleFeatures"], req);
  st.markedDirty = false;
  await st.file.truncate((3 + l1Clusters) * cs, { req });
}
