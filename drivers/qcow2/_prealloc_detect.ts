/**
 * Detecting an image made with `preallocation=metadata` (QEMU's
 * qcow2_detect_metadata_preallocation): its clusters are counted in the
 * refcounts although the file holds no blocks for most of them. Block status
 * then asks the file about such data clusters (QEMU's BDRV_BLOCK_RECURSE),
 * so those that are still holes read as zeros, as `map` shows them.
 *
 * @module
 */

import type { RequestInfo } from "../../core/types.ts";
import { getRefcount, peekRefcount } from "./_refcount.ts";
import type { Qcow2State } from "./_state.ts";

/**
 * Whether the image file has clearly more clusters with a refcount than it
 * holds blocks for: at least 10/9 of its allocated clusters (and 2 more).
 * False when the file cannot say how much it holds. Metadata lock held.
 */
export async function detectMetadataPreallocation(st: Qcow2State, req: RequestInfo | undefined): Promise<boolean> {
  const real = await st.file.allocatedSize();
  if (real === undefined) return false;
  const realClusters = Math.floor(real / st.cs);
  const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
  const end = Math.ceil(st.file.length / st.cs);
  let counted = 0;
  for (let c = 0; c < end && counted < threshold; c++) {
    const cached = peekRefcount(st, c);
    if ((cached >= 0 ? cached : await getRefcount(st, c, req)) !== 0) counted++;
  }
  return counted >= threshold;
}

/** The answer for this open, found on the first block status that needs it (as QEMU's metadata_preallocation_checked). */
export async function metadataPreallocated(st: Qcow2State, req: RequestInfo | undefined): Promise<boolean> {
  st.metadataPreallocation ??= await st.lock.run(() => detectMetadataPreallocation(st, req));
  return st.metadataPreallocation;
}
