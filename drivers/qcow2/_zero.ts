/**
 * qcow2 write-zeroes and discard of whole clusters through the L2 entries
 * (QEMU's qcow2_cluster_zeroize and qcow2_cluster_discard): the zero flag
 * (v3), deallocation, or both; a raw external data file gets the same
 * operation. Run under the metadata lock.
 *
 * @module
 */

import type { RequestInfo } from "../../core/types.ts";
import type { CacheEntry } from "./_cache.ts";
import { entryOffset, HI_COMPRESSED, HI_COPIED, LO_ZERO, setEntry } from "./_entries.ts";
import { AUTOCLEAR_DATA_FILE_RAW } from "./header.ts";
import type { Qcow2State } from "./_state.ts";
import { markDirty } from "./_writeback.ts";
import { getL2ForWrite, releaseEntry } from "./_write.ts";

const ALL = 0xffffffff;

/**
 * Makes whole clusters `[offset, offset + length)` read as zeros (v3 zero
 * flag, `discard` false) or discards them (`discard` true: v3 zero flag when
 * the old content must stay hidden, v2 deallocation). Metadata lock held.
 */
export async function zeroOrDiscard(
  st: Qcow2State,
  offset: number,
  length: number,
  opts: { discard: boolean; unmap: boolean; full?: boolean },
  req: RequestInfo | undefined,
): Promise<void> {
  await markDirty(st, req);
  const end = offset + length;
  const v3 = st.header.version >= 3;
  if (st.externalData && st.header.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) {
    // A raw data file reads as the image does (QEMU's qcow2_subcluster_zeroize and discard pass through).
    const n = Math.min(end, st.header.size) - offset;
    if (n > 0 && !opts.discard) await st.data.pwriteZeroes(offset, n, { req });
    else if (n > 0) await st.data.pdiscard(offset, n, { req }).catch(() => {});
  }
  let cur = offset;
  while (cur < end) {
    const l1i = Math.floor(cur / st.l2Span);
    const base = l1i * st.l2Span;
    const chunkEnd = Math.min(end, base + st.l2Span);
    const hasTable = l1i < st.l1Size && st.l1Offset(l1i) !== 0;
    // Unallocated with nothing below to hide: a discard leaves it. Write-zeroes on v3 still marks the
    // clusters zero (allocating the L2 table), as QEMU's zero_in_l2_slice does: they then read as
    // present zeros, and a backing file added later stays hidden.
    const skip = opts.discard ? !st.backing || !v3 || opts.full : !st.backing && !v3;
    if (!hasTable && skip) {
      cur = chunkEnd;
      continue;
    }
    const e = await getL2ForWrite(st, l1i, req);
    try {
      for (let idx = Math.floor((cur - base) / st.cs); base + idx * st.cs < chunkEnd; idx++) {
        zeroEntry(st, e, idx * st.entryBytes, v3, opts);
      }
      st.l2Cache.markDirty(e);
    } finally {
      st.l2Cache.release(e);
    }
    cur = chunkEnd;
  }
}

function zeroEntry(
  st: Qcow2State,
  e: CacheEntry,
  at: number,
  v3: boolean,
  opts: { discard: boolean; unmap: boolean; full?: boolean },
): void {
  const view = e.view;
  const hi = view.getUint32(at);
  const host = entryOffset(view, at);
  const compressed = (hi & HI_COMPRESSED) !== 0;
  const copied = (hi & HI_COPIED) !== 0;
  const allocated = compressed || host !== 0 || (st.externalData && copied);
  let keep = false;
  let zero: boolean;
  if (opts.discard) {
    // A full discard makes the cluster unallocated (reads from the backing
    // file again), as QEMU's full_discard does for make_empty.
    zero = !opts.full && v3 && (st.backing !== undefined || allocated);
  } else {
    zero = true;
    keep = !opts.unmap && !compressed && allocated && copied;
  }
  if (!keep && allocated) releaseEntry(st, view, at);
  if (st.extL2) {
    setEntry(view, at, keep ? host : 0, keep ? HI_COPIED : 0, 0);
    view.setUint32(at + 8, zero ? ALL : 0);
    view.setUint32(at + 12, 0);
  } else {
    setEntry(view, at, keep ? host : 0, keep ? HI_COPIED : 0, zero ? LO_ZERO : 0);
  }
}
