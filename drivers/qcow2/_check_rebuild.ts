/**
 * Rebuilding the refcount structure (QEMU's rebuild_refcount_structure):
 * new refcount blocks and a new refcount table, written from the counted
 * references after the last used cluster, then the header is pointed at
 * them. The old structure is left leaked; check frees it afterwards.
 *
 * Private to `check.ts`.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import type { Qcow2Header } from "./header.ts";
import { HI, type RefArray, setRefcount } from "./_check_tables.ts";

/** Writes a new refcount structure for the refcounts in `ref`; updates `h`. */
export async function rebuildRefcountStructure(file: BlockNode, h: Qcow2Header, ref: RefArray): Promise<void> {
  const cs = 2 ** h.clusterBits;
  const order = h.refcountOrder;
  const refMax = 2 ** (2 ** order) - 1;
  const per = (cs * 8) / 2 ** order;
  let start = ref.size;
  while (start > 1 && ref.get(start - 1) === 0) start--;
  const used = new Set<number>();
  for (let i = 0; i < ref.size; i++) if (ref.get(i)) used.add(Math.floor(i / per));
  // Fixed point: the new blocks and table need refcounts themselves.
  let need = new Set(used);
  let tableClusters = 0;
  for (;;) {
    const end = start + need.size + tableClusters;
    const next = new Set(used);
    for (let c = start; c < end; c++) next.add(Math.floor(c / per));
    let maxIndex = 0;
    for (const i of next) maxIndex = Math.max(maxIndex, i);
    const t = Math.ceil(((maxIndex + 1) * 8) / cs);
    if (next.size === need.size && t === tableClusters) break;
    need = next;
    tableClusters = t;
  }
  const end = start + need.size + tableClusters;
  for (let c = start; c < end; c++) ref.set(c, 1);
  const table = new Uint8Array(tableClusters * cs);
  const tv = new DataView(table.buffer);
  let at = start;
  for (const index of [...need].sort((a, b) => a - b)) {
    const bytes = new Uint8Array(cs);
    const view = new DataView(bytes.buffer);
    const first = index * per;
    for (let k = 0; k < per && first + k < ref.size; k++) {
      const r = ref.get(first + k);
      if (r) setRefcount(bytes, view, k, order, Math.min(r, refMax));
    }
    await file.pwrite(at * cs, bytes);
    tv.setUint32(index * 8, Math.floor((at * cs) / HI));
    tv.setUint32(index * 8 + 4, (at * cs) % HI);
    at++;
  }
  const tableOffset = at * cs;
  await file.pwrite(tableOffset, table);
  await file.flush();
  // refcount_table_offset and refcount_table_clusters in one write.
  const hdr = new Uint8Array(12);
  const hv = new DataView(hdr.buffer);
  hv.setUint32(0, Math.floor(tableOffset / HI));
  hv.setUint32(4, tableOffset % HI);
  hv.setUint32(8, tableClusters);
  await file.pwrite(48, hdr);
  await file.flush();
  h.refcountTableOffset = tableOffset;
  h.refcountTableClusters = tableClusters;
  ref.grow(Math.ceil(file.length / cs));
}
