/**
 * Layout comparison of two qcow2 files (ours and qemu-img's after the same
 * operations): every cluster in use (refcount > 0 in either image) must hold
 * the same bytes with the same refcount, and the files must end at the same
 * cluster. Freed clusters may differ: QEMU leaves some freed clusters' old
 * bytes in place where blkgraph gives the space back to the host.
 * Snapshot dates (set from the clock) are masked before comparing.
 *
 * @module
 */

import { parseHeader } from "../../../drivers/qcow2/header.ts";
import { entryOffset, readRefcount } from "../../../drivers/qcow2/_entries.ts";
import { parseSnapshotTable, SNAPSHOT_HEADER } from "../../../drivers/qcow2/_tables.ts";

/** Refcounts of every cluster of a qcow2 file, from its refcount table. */
export function refcounts(img: Uint8Array): number[] {
  const h = parseHeader(img.subarray(0, Math.min(img.length, 2 ** 21)), img.length);
  const cs = 2 ** h.clusterBits;
  const bits = 2 ** h.refcountOrder;
  const per = (cs * 8) / bits;
  const v = new DataView(img.buffer, img.byteOffset, img.byteLength);
  const out: number[] = [];
  const clusters = Math.ceil(img.length / cs);
  for (let i = 0; i < h.refcountTableClusters * cs / 8; i++) {
    const block = entryOffset(v, h.refcountTableOffset + i * 8);
    if (!block || block + cs > img.length) continue;
    const bv = new DataView(img.buffer, img.byteOffset + block, cs);
    for (let k = 0; k < per && i * per + k < clusters; k++) out[i * per + k] = readRefcount(bv, bits, k);
  }
  for (let c = 0; c < clusters; c++) out[c] ??= 0;
  return out;
}

/** Zeroes the date fields of every snapshot table entry (a copy). */
export function maskSnapshotDates(img: Uint8Array): Uint8Array {
  const out = img.slice();
  const h = parseHeader(out.subarray(0, Math.min(out.length, 2 ** 21)), out.length);
  if (!h.nbSnapshots) return out;
  const t = parseSnapshotTable(out.subarray(h.snapshotsOffset), h.nbSnapshots);
  if (typeof t === "string") throw new Error(t);
  let at = h.snapshotsOffset;
  const v = new DataView(out.buffer);
  for (let i = 0; i < h.nbSnapshots; i++) {
    v.setUint32(at + 16, 0);
    v.setUint32(at + 20, 0);
    const extra = v.getUint32(at + 36);
    const id = v.getUint16(at + 12);
    const name = v.getUint16(at + 14);
    at += Math.ceil((SNAPSHOT_HEADER + extra + id + name) / 8) * 8;
  }
  return out;
}

/**
 * Differences between the clusters in use of two qcow2 files, one line each
 * (empty when the layouts agree).
 */
export function layoutDiff(ours: Uint8Array, theirs: Uint8Array, limit = 8): string[] {
  const a = maskSnapshotDates(ours);
  const b = maskSnapshotDates(theirs);
  const h = parseHeader(b.subarray(0, Math.min(b.length, 2 ** 21)), b.length);
  const cs = 2 ** h.clusterBits;
  const ra = refcounts(a);
  const rb = refcounts(b);
  const out: string[] = [];
  if (Math.ceil(a.length / cs) !== Math.ceil(b.length / cs)) out.push(`file length ${a.length} (ours) vs ${b.length} (qemu-img)`);
  const n = Math.max(ra.length, rb.length);
  for (let c = 0; c < n && out.length < limit; c++) {
    const x = ra[c] ?? 0;
    const y = rb[c] ?? 0;
    if (x !== y) {
      out.push(`cluster ${c} (0x${(c * cs).toString(16)}): refcount ${x} (ours) vs ${y} (qemu-img)`);
      continue;
    }
    if (!x) continue;
    const pa = a.subarray(c * cs, (c + 1) * cs);
    const pb = b.subarray(c * cs, (c + 1) * cs);
    for (let i = 0; i < cs; i++) {
      if ((pa[i] ?? 0) !== (pb[i] ?? 0)) {
        out.push(
          `cluster ${c} (0x${(c * cs).toString(16)}) byte ${i}: 0x${(pa[i] ?? 0).toString(16)} (ours) vs 0x${
            (pb[i] ?? 0).toString(16)
          } (qemu-img)`,
        );
        break;
      }
    }
  }
  return out;
}

/** Reads two files and returns {@linkcode layoutDiff} of them. */
export async function fileLayoutDiff(ours: string, theirs: string): Promise<string[]> {
  return layoutDiff(await Deno.readFile(ours), await Deno.readFile(theirs));
}
