/**
 * `qemu-img amend -o compat=0.10` (QEMU's qcow2_downgrade): refused for
 * what version 2 cannot express (other refcount widths, a data file,
 * incompatible features, snapshots of another size or with VM state past
 * 4 GiB, zstd-compressed clusters); otherwise the image is made clean,
 * compatible and autoclear features are dropped, zero clusters in the
 * active and every snapshot's tables become real clusters (unallocated
 * without a backing file; zero-filled data clusters with one, counted once
 * per table reference), and the header is rewritten as version 2.
 *
 * Where QEMU 7.2 goes wrong, this does not: a zero cluster whose host
 * cluster another table also maps (QEMU keeps the allocation of a shared
 * cluster on `write -z`) gets a cluster of its own instead of having the
 * shared one zeroed, which would change the snapshot's data; COPIED follows
 * the data cluster's refcount, not the table's.
 *
 * @module
 */

import { BlockError, CorruptImageError, toBlockError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import { entryOffset, HI_COMPRESSED, HI_COPIED, LO_ZERO, setEntry } from "./_entries.ts";
import { INCOMPAT_COMPRESSION, INCOMPAT_DIRTY } from "./header.ts";
import { allocClusters, getRefcount, updateRefcount } from "./_refcount.ts";
import { readSnapshotTable, snapshotL1Error } from "./_snapshot.ts";
import type { Qcow2State } from "./_state.ts";
import type { SnapshotEntry } from "./_tables.ts";
import { markClean, rewriteHeader, writeback } from "./_writeback.ts";
import { preWriteOverlapCheck } from "./_overlap.ts";

function refuse(st: Qcow2State, message: string): never {
  throw new BlockError("ENOTSUP", message, { node: st.node.name });
}

/** C's `%#x`: 0 as "0", anything else with "0x". */
function hex(n: number): string {
  return n ? `0x${n.toString(16)}` : "0";
}

/** Turns the zero clusters reachable from `l1` into data or unallocated clusters (QEMU's expand_zero_clusters_in_l1). */
async function expandIn(st: Qcow2State, l1: Uint8Array, backed: boolean, req: RequestInfo | undefined): Promise<void> {
  const cs = st.cs;
  const v = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
  for (let i = 0; i < l1.length / 8; i++) {
    const l2 = entryOffset(v, i * 8);
    if (!l2) continue;
    if (l2 % cs) {
      throw new CorruptImageError(`Corrupt qcow2 image: L2 table offset 0x${l2.toString(16)} unaligned (L1 index ${i})`, {
        node: st.node.name,
        qemuMessage: `L2 table offset 0x${l2.toString(16)} unaligned (L1 index: ${hex(i)})`,
      });
    }
    const l2Refcount = await getRefcount(st, l2 / cs, req);
    const e = await st.loadL2(l2, i, req);
    try {
      for (let at = 0; at < cs; at += 8) {
        const hi = e.view.getUint32(at);
        if (hi & HI_COMPRESSED || !(e.view.getUint32(at + 4) & LO_ZERO)) continue;
        let host = entryOffset(e.view, at);
        if (host % cs) {
          const where = (sep: string, index: string) => `L2 offset${sep} 0x${l2.toString(16)}, L2 index${sep} ${index}`;
          throw new CorruptImageError(
            `Corrupt qcow2 image: cluster allocation offset 0x${host.toString(16)} unaligned (${where("", `${at / 8}`)})`,
            {
              node: st.node.name,
              qemuMessage: `Cluster allocation offset 0x${host.toString(16)} unaligned (${where(":", hex(at / 8))})`,
            },
          );
        }
        let rc = host ? await getRefcount(st, host / cs, req) : 0;
        if (host && rc > l2Refcount) {
          // The cluster is also mapped by another table, maybe as data (a
          // snapshot's): QEMU zeroes it in place and so corrupts that
          // snapshot. This table lets go of it and gets a cluster of its own.
          for (let k = 0; k < l2Refcount; k++) st.pendingFree.push(host);
          host = 0;
        }
        if (!host) {
          if (!backed) {
            // Not backed: an unallocated cluster reads as zeros too.
            setEntry(e.view, at, 0, 0, 0);
            st.l2Cache.markDirty(e);
            continue;
          }
          host = await allocClusters(st, 1, req);
          // A shared table counts its clusters once per reference.
          if (l2Refcount > 1) await updateRefcount(st, host / cs, l2Refcount - 1, req);
          rc = l2Refcount;
        }
        await preWriteOverlapCheck(st, 0, host, cs, true);
        st.noteDataWrite(host, cs);
        await st.data.pwrite(host, new Uint8Array(cs), { req });
        setEntry(e.view, at, host, rc === 1 ? HI_COPIED : 0, 0);
        st.l2Cache.markDirty(e);
      }
    } finally {
      st.l2Cache.release(e);
    }
  }
}

/** QEMU's qcow2_expand_zero_clusters: the active layer's, then each snapshot's. */
async function expandZeroClusters(
  st: Qcow2State,
  snapshots: readonly SnapshotEntry[],
  backed: boolean,
  req: RequestInfo | undefined,
): Promise<void> {
  await expandIn(st, st.l1, backed, req);
  await writeback(st, req);
  for (const sn of snapshots) {
    // QEMU reports what is wrong with the table (error_report_err) and returns only the errno.
    const bad = snapshotL1Error(st, sn);
    if (bad) throw new BlockError(bad.code, bad.message, { node: st.node.name, qemuReported: [bad.qemuMessage] });
    const l1 = new Uint8Array(sn.l1Size * 8);
    if (l1.length) await st.file.pread(sn.l1Offset, l1, { req });
    await expandIn(st, l1, backed, req);
  }
}

/** Whether the active layer has compressed clusters (QEMU's qcow2_has_compressed_clusters). */
async function hasCompressed(st: Qcow2State, req: RequestInfo | undefined): Promise<boolean> {
  for (let i = 0; i < st.l1Size; i++) {
    const l2 = st.l1Offset(i);
    if (!l2) continue;
    const e = await st.loadL2(l2, i, req);
    try {
      for (let at = 0; at < st.cs; at += st.entryBytes) if (e.view.getUint32(at) & HI_COMPRESSED) return true;
    } finally {
      st.l2Cache.release(e);
    }
  }
  return false;
}

/** Rewrites the open image as compat=0.10 (metadata lock held). */
export async function downgrade(st: Qcow2State, req?: RequestInfo): Promise<void> {
  const h = st.header;
  if (st.refBits !== 16) refuse(st, "compat=0.10 requires refcount_bits=16");
  if (st.externalData) refuse(st, "Cannot downgrade an image with a data file");
  const snapshots = await readSnapshotTable(st);
  for (const sn of snapshots) {
    if (sn.vmStateSize > 0xffffffff || sn.diskSize !== h.size) refuse(st, "Internal snapshots prevent downgrade of image");
  }
  if (h.incompatibleFeatures & INCOMPAT_DIRTY) await markClean(st, req);
  const incompat = (st.header.incompatibleFeatures & ~INCOMPAT_COMPRESSION) >>> 0;
  const high = st.header.featureHigh?.incompatible ?? 0;
  if (incompat || high) {
    const hex = high ? high.toString(16) + incompat.toString(16).padStart(8, "0") : incompat.toString(16);
    refuse(st, `Cannot downgrade an image with incompatible features 0x${hex} set`);
  }
  // Zero clusters first: version 2 has no zero flag.
  const backed = st.backing !== undefined || h.backingFile !== undefined;
  await expandZeroClusters(st, snapshots, backed, req).catch((e) => {
    // As QEMU's qcow2_downgrade: whatever failed, "Failed to turn zero into data clusters" and the errno.
    const err = toBlockError(e, "Cannot expand zero clusters");
    const details = { node: st.node.name, cause: err, qemuMessage: `Failed to turn zero into data clusters: ${err.strerror}` };
    const message = `Failed to turn zero into data clusters: ${err.message}`;
    // Corruption stays corruption for callers that tell it apart.
    throw err instanceof CorruptImageError ? new CorruptImageError(message, details) : new BlockError(err.code, message, details);
  });
  if (st.header.incompatibleFeatures & INCOMPAT_COMPRESSION) {
    if (await hasCompressed(st, req)) refuse(st, "Cannot downgrade an image with zstd compression type and existing compressed clusters");
  }
  await rewriteHeader(st, (n) => {
    n.version = 2;
    n.headerLength = 72;
    n.incompatibleFeatures = 0;
    n.compatibleFeatures = 0;
    n.autoclearFeatures = 0;
    n.compressionType = 0;
    n.refcountOrder = 4;
    if (n.featureHigh) n.featureHigh = { incompatible: 0, compatible: 0, autoclear: 0 };
  });
  if (st.mode === "lazy") st.mode = "ordered";
}
