/**
 * Rebuilding the refcount structure, as QEMU's rebuild_refcount_structure
 * (block/qcow2-refcount.c, QEMU 7.1+) does it: every refcount block range
 * that has a used cluster gets a new refcount block in the first free
 * cluster at or after the start of that range (so it is written after all
 * the refcounts it holds are final), written as a slice of the counted
 * references; then the new table goes into the first free run of clusters,
 * the blocks covering it are rewritten, and this repeats until the table
 * stops growing. Finally the header is pointed at the new table. The old
 * structure is left leaked; check frees it afterwards.
 *
 * Private to `check.ts`.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import type { Qcow2Header } from "./header.ts";
import type { RefArray } from "./_check_refarray.ts";
import { HI, writeRefcount } from "./_entries.ts";
import { writeHeaderFields } from "./_header_write.ts";

interface State {
  file: BlockNode;
  ref: RefArray;
  cs: number;
  order: number;
  per: number;
  /** New refcount table entries (cluster index of each block, 0 = none). */
  table: number[];
  /** Entries the table has room for (whole clusters). */
  entries: number;
}

/** QEMU's alloc_clusters_imrt: first run of `count` free clusters from `first.value`; marks them used. */
function allocClusters(s: State, count: number, first: { value: number }): number {
  let cluster = first.value;
  let free = 0;
  let firstGap = true;
  for (; cluster < s.ref.size && free < count; cluster++) {
    if (!s.ref.get(cluster)) {
      free++;
      if (firstGap) {
        first.value = cluster;
        firstGap = false;
      }
    } else free = 0;
  }
  if (free < count) s.ref.grow(cluster + count - free);
  cluster -= free;
  for (let i = 0; i < count; i++) s.ref.set(cluster + i, 1);
  return cluster;
}

/** QEMU's rebuild_refcounts_write_refblocks; returns whether the table grew. */
async function writeRefblocks(s: State, firstCluster: number, endCluster: number): Promise<boolean> {
  const first = { value: 0 };
  let grown = false;
  const block = new Uint8Array(s.cs);
  const view = new DataView(block.buffer);
  for (let cluster = firstCluster; cluster < endCluster; cluster++) {
    if (!s.ref.get(cluster)) continue;
    const index = Math.floor(cluster / s.per);
    const start = index * s.per;
    let at = index < s.entries ? s.table[index] : 0;
    if (!at) {
      // Never inside a refcount block range already written.
      if (first.value < start) first.value = start;
      at = allocClusters(s, 1, first);
      if (at >= endCluster) endCluster = at + 1;
      if (s.entries <= index) {
        s.entries = Math.ceil(((index + 1) * 8) / s.cs) * (s.cs / 8);
        grown = true;
      }
      s.table[index] = at;
    }
    block.fill(0);
    for (let k = 0; k < s.per && start + k < s.ref.size; k++) {
      const r = s.ref.get(start + k);
      if (r) writeRefcount(view, 2 ** s.order, k, r);
    }
    await s.file.pwrite(at * s.cs, block);
    cluster = start + s.per - 1;
  }
  return grown;
}

/** Writes a new refcount structure for the refcounts in `ref`; updates `h`. */
export async function rebuildRefcountStructure(file: BlockNode, h: Qcow2Header, ref: RefArray): Promise<void> {
  const cs = 2 ** h.clusterBits;
  const s: State = { file, ref, cs, order: h.refcountOrder, per: (cs * 8) / 2 ** h.refcountOrder, table: [], entries: 0 };
  let grown = await writeRefblocks(s, 0, ref.size);
  let tableCluster = 0;
  let tableClusters = 0;
  while (grown) {
    tableClusters = Math.ceil((s.entries * 8) / cs);
    tableCluster = allocClusters(s, tableClusters, { value: 0 });
    grown = await writeRefblocks(s, tableCluster, tableCluster + tableClusters);
  }
  const table = new Uint8Array(s.entries * 8);
  const tv = new DataView(table.buffer);
  s.table.forEach((cluster, i) => {
    if (!cluster) return;
    tv.setUint32(i * 8, Math.floor((cluster * cs) / HI));
    tv.setUint32(i * 8 + 4, (cluster * cs) % HI);
  });
  const tableOffset = tableCluster * cs;
  await file.pwrite(tableOffset, table);
  // The new table is durable before the header points at it; both pointer fields change in one write.
  await file.flush();
  await writeHeaderFields(file, { ...h, refcountTableOffset: tableOffset, refcountTableClusters: tableClusters }, [
    "refcountTableOffset",
    "refcountTableClusters",
  ]);
  h.refcountTableOffset = tableOffset;
  h.refcountTableClusters = tableClusters;
  ref.grow(Math.ceil(file.length / cs));
}
