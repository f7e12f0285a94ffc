/**
 * The OFLAG_COPIED check (QEMU's check_oflag_copied): an active L1 or L2
 * entry must have the COPIED flag exactly when the cluster it points at has
 * refcount 1. Run after the refcounts are settled; repairs flip the flag.
 *
 * Private to `check.ts`.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import { INCOMPAT_DATA_FILE, INCOMPAT_EXTL2, type Qcow2Header } from "./header.ts";
import { type Counters, readPadded } from "./_check_types.ts";
import type { DiskRefcounts } from "./_check_refcounts.ts";
import { entryHex, entryOffset, l2EntrySize } from "./_entries.ts";

const COPIED = 0x80000000;

/** Checks (and with `repair`, fixes) the COPIED flags of the active tables. */
export async function checkOflagCopied(
  file: BlockNode,
  h: Qcow2Header,
  disk: DiskRefcounts,
  res: Counters,
  say: (line: string) => void,
  repair: boolean,
): Promise<void> {
  if (h.l1Size === 0) return;
  const cs = 2 ** h.clusterBits;
  const extL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0;
  const dataFile = (h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0;
  const step = l2EntrySize(extL2);
  const l1 = new Uint8Array(h.l1Size * 8);
  await readPadded(file, h.l1TableOffset, l1);
  const l1v = new DataView(l1.buffer);
  const table = new Uint8Array(cs);
  const tv = new DataView(table.buffer);
  for (let i = 0; i < h.l1Size; i++) {
    const l2Offset = entryOffset(l1v, i * 8);
    if (!l2Offset) continue;
    let refcount: number;
    try {
      refcount = await disk.get(Math.floor(l2Offset / cs));
    } catch {
      continue;
    }
    const hi = l1v.getUint32(i * 8);
    if ((refcount === 1) !== ((hi & COPIED) !== 0)) {
      res.corruptions++;
      const shown = refcount >= 2 ** 53 ? await disk.textOf(Math.floor(l2Offset / cs)) : refcount;
      say(`${repair ? "Repairing" : "ERROR"} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${entryHex(l1v, i * 8)} refcount=${shown}`);
      if (repair) {
        l1v.setUint32(i * 8, refcount === 1 ? (hi | COPIED) >>> 0 : hi & ~COPIED);
        await file.pwrite(h.l1TableOffset + i * 8, l1.subarray(i * 8, i * 8 + 8));
        res.corruptions--;
        res.corruptionsFixed++;
      }
    }
    await readPadded(file, l2Offset, table);
    let dirty = 0;
    for (let at = 0; at < cs; at += step) {
      const ehi = tv.getUint32(at);
      if (ehi & 0x40000000) continue; // compressed
      const offset = entryOffset(tv, at);
      // Offset 0 is unallocated or zero, except for a data file's first cluster (COPIED set).
      if (!offset && (!dataFile || !(ehi & COPIED) || (!extL2 && tv.getUint32(at + 4) & 1))) continue;
      let rc = 1;
      if (!dataFile) {
        const c = Math.floor(offset / cs);
        const known = disk.peek(c); // no await per entry when the block is loaded
        if (known !== undefined) rc = known;
        else {
          try {
            rc = await disk.get(c);
          } catch {
            continue;
          }
        }
      }
      if ((rc === 1) !== ((ehi & COPIED) !== 0)) {
        res.corruptions++;
        const shown = rc >= 2 ** 53 ? await disk.textOf(Math.floor(offset / cs)) : rc;
        say(`${repair ? "Repairing" : "ERROR"} OFLAG_COPIED data cluster: l2_entry=${entryHex(tv, at)} refcount=${shown}`);
        if (repair) {
          tv.setUint32(at, rc === 1 ? (ehi | COPIED) >>> 0 : ehi & ~COPIED);
          dirty++;
        }
      }
    }
    if (dirty) {
      await file.pwrite(l2Offset, table);
      res.corruptions -= dirty;
      res.corruptionsFixed += dirty;
    }
  }
  if (repair) await file.flush();
}
