/**
 * Growing the active L1 table (QEMU's qcow2_grow_l1_table): a larger table
 * is written and flushed, the header switched to it in one write, then the
 * old table freed. A resize asks for the exact size; writes past the table
 * (the VM state area) grow it by half again as often as needed.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import { MAX_L1_BYTES } from "./header.ts";
import { allocClusters } from "./_refcount.ts";
import type { Qcow2State } from "./_state.ts";
import { writeRefblocks } from "./_metadata_write.ts";
import { writeback } from "./_writeback.ts";
import { writeHeaderFields } from "./_header_write.ts";
import { preWriteOverlapCheck } from "./_overlap.ts";

/**
 * Grows the active L1 table to at least `minEntries` entries (metadata lock
 * held): exactly that many for a resize, else by half again as often as
 * needed (QEMU's qcow2_grow_l1_table). The new table is written and flushed,
 * the header switched to it in one write, then the old table is freed.
 */
export async function growL1(st: Qcow2State, minEntries: number, exact: boolean, req: RequestInfo | undefined): Promise<void> {
  if (minEntries <= st.l1Size) return;
  let entries = minEntries;
  if (!exact) {
    entries = Math.max(1, st.l1Size);
    while (entries < minEntries) entries = Math.ceil((entries * 3) / 2);
  }
  if (entries > MAX_L1_BYTES / 8) {
    throw new BlockError("EFBIG", `Cannot grow the L1 table to ${entries} entries: the limit is ${MAX_L1_BYTES / 8}`, {
      node: st.node.name,
    });
  }
  // Everything the old table points at is on disk before the copy is made.
  await writeback(st, req);
  let p = st.event("l1_grow_alloc_table", req);
  if (p) await p;
  const clusters = Math.ceil((entries * 8) / st.cs);
  const newOffset = await allocClusters(st, clusters, req);
  await writeRefblocks(st, req);
  const table = new Uint8Array(clusters * st.cs);
  table.set(st.l1);
  p = st.event("l1_grow_write_table", req);
  if (p) await p;
  await preWriteOverlapCheck(st, 0, newOffset, entries * 8, false);
  await st.file.pwrite(newOffset, table.subarray(0, entries * 8), { req });
  await st.file.flush({ req });
  p = st.event("l1_grow_activate_table", req);
  if (p) await p;
  // l1_size and l1_table_offset change in one write.
  await writeHeaderFields(st.file, { ...st.header, l1Size: entries, l1TableOffset: newOffset }, ["l1Size", "l1TableOffset"], req);
  const oldOffset = st.header.l1TableOffset;
  const oldClusters = Math.ceil((st.l1Size * 8) / st.cs);
  st.l1 = table.subarray(0, entries * 8);
  st.l1View = new DataView(table.buffer, 0, entries * 8);
  st.header.l1Size = entries;
  st.header.l1TableOffset = newOffset;
  st.metadataMoved();
  // QCOW2_DISCARD_OTHER: the old table's space stays in the file.
  if (oldOffset !== 0) {
    for (let i = 0; i < oldClusters; i++) {
      st.pendingFree.push(oldOffset + i * st.cs);
      st.noDiscard.add(oldOffset + i * st.cs);
    }
  }
  await writeback(st, req);
}
