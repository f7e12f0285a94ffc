/**
 * The refcount walk behind internal snapshots (QEMU's
 * qcow2_update_snapshot_refcount): for every L2 table an L1 table points at,
 * and every cluster those tables point at, add `addend` (+1, -1 or 0) to the
 * refcount, then set QCOW_OFLAG_COPIED on the L2 and L1 entries exactly
 * where the refcount is 1. Compressed clusters are counted for every host
 * cluster their data touches and never get COPIED.
 *
 * Changes go through the metadata caches (the write-back orders them);
 * clusters whose refcount reaches 0 are dropped from the caches and
 * collected for a discard once the caller has made the change durable.
 *
 * @module
 */

import { BlockError, CorruptImageError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import { decodeCompressed, newMapping } from "./_l2.ts";
import { entryOffset, HI_COMPRESSED, HI_COPIED } from "./_entries.ts";
import { discardClusters, getRefcount, updateRefcount } from "./_refcount.ts";
import type { Qcow2State } from "./_state.ts";

/** Host cluster offsets freed by a walk, to discard once the change is durable. */
export type Released = number[];

/** Adds `delta` to the refcount of the cluster at `offset`; a cluster that reaches 0 leaves the caches. */
export async function addRef(
  st: Qcow2State,
  offset: number,
  delta: number,
  released: Released,
  req: RequestInfo | undefined,
): Promise<number> {
  const c = Math.floor(offset / st.cs);
  let v: number;
  try {
    v = await updateRefcount(st, c, delta, req);
  } catch (e) {
    // QEMU's update_refcount: an overflowing refcount is EINVAL.
    if (e instanceof BlockError && e.code === "ERANGE") {
      throw new BlockError("EINVAL", `${e.message}: the image cannot share it once more`, { node: st.node.name, cause: e });
    }
    throw e;
  }
  if (v === 0) {
    st.l2Cache.drop(c * st.cs);
    if (Math.floor(st.freeByteOffset / st.cs) === c) st.freeByteOffset = 0;
    st.lastCompressed = undefined;
    released.push(c * st.cs);
  }
  return v;
}

/**
 * Walks the L1 table `l1` (big-endian entries, modified in place) and the
 * L2 tables it points at, adding `addend` to every refcount and fixing the
 * COPIED flags (unless `flags` is false: then only refcounts change).
 * Returns whether an L1 entry changed (the caller writes the table back
 * where it lives, unless it is being freed).
 */
export async function updateSnapshotRefcount(
  st: Qcow2State,
  l1: Uint8Array,
  addend: -1 | 0 | 1,
  released: Released,
  req: RequestInfo | undefined,
  flags = true,
): Promise<boolean> {
  const l1v = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
  const cs = st.cs;
  const m = newMapping();
  let l1Modified = false;
  for (let i = 0; i < l1.length / 8; i++) {
    const l2Offset = entryOffset(l1v, i * 8);
    if (!l2Offset) continue;
    if (l2Offset % cs !== 0) {
      throw new CorruptImageError(`Corrupt qcow2 image: L2 table offset 0x${l2Offset.toString(16)} unaligned (L1 index ${i})`, {
        node: st.node.name,
      });
    }
    const e = await st.loadL2(l2Offset, i, req);
    try {
      for (let at = 0; at < cs; at += st.entryBytes) {
        const hi = e.view.getUint32(at);
        let refcount: number;
        if (hi & HI_COMPRESSED) {
          if (addend !== 0) {
            decodeCompressed(st, e.view, at, m);
            const first = Math.floor(m.host / cs);
            const last = Math.floor((m.host + m.compressedBytes - 1) / cs);
            for (let c = first; c <= last; c++) await addRef(st, c * cs, addend, released, req);
          }
          refcount = 2; // compressed clusters are never overwritten in place
        } else {
          const host = entryOffset(e.view, at);
          if (host === 0) refcount = 0;
          else {
            if (host % cs !== 0) {
              throw new CorruptImageError(
                `Corrupt qcow2 image: cluster allocation offset 0x${host.toString(16)} unaligned (L2 offset 0x${
                  l2Offset.toString(16)
                }, L2 index ${at / st.entryBytes})`,
                { node: st.node.name },
              );
            }
            refcount = addend !== 0 ? await addRef(st, host, addend, released, req) : await getRefcount(st, host / cs, req);
          }
        }
        const want = refcount === 1 ? (hi | HI_COPIED) >>> 0 : (hi & ~HI_COPIED) >>> 0;
        if (flags && want !== hi) {
          e.view.setUint32(at, want);
          st.l2Cache.markDirty(e);
        }
      }
    } finally {
      st.l2Cache.release(e);
    }
    const refcount = addend !== 0 ? await addRef(st, l2Offset, addend, released, req) : await getRefcount(st, l2Offset / cs, req);
    const hi = l1v.getUint32(i * 8);
    const want = refcount === 1 ? (hi | HI_COPIED) >>> 0 : (hi & ~HI_COPIED) >>> 0;
    if (flags && want !== hi) {
      l1v.setUint32(i * 8, want);
      l1Modified = true;
    }
  }
  return l1Modified;
}

/** Gives freed clusters back to the host (after the change that freed them is durable), adjacent ones as one range. */
export async function discardReleased(st: Qcow2State, released: Released, req: RequestInfo | undefined): Promise<void> {
  await discardClusters(st, released.splice(0), req);
}
