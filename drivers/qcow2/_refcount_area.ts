/**
 * A "refcount area" (QEMU's qcow2_refcount_area): new refcount blocks and a
 * new, larger refcount table placed together from a given cluster on, the
 * blocks describing themselves and the table, written and flushed before the
 * header switches to the new table in one write; then the old table is
 * freed. QEMU grows the refcount table this way (from the first cluster
 * after all the blocks in use) and preallocates with it (`falloc`/`full`),
 * so images that grow their refcount table keep qemu-img's layout.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import type { CacheEntry } from "./_cache.ts";
import { refblockCount } from "./_create_alloc.ts";
import { readRefcount, writeRefcount } from "./_entries.ts";
import { MAX_REFTABLE_BYTES } from "./header.ts";
import { OL_REFCOUNT_BLOCK, OL_REFCOUNT_TABLE, preWriteOverlapCheck } from "./_overlap.ts";
import { writeHeaderFields } from "./_header_write.ts";
import type { Qcow2State } from "./_state.ts";

/**
 * Creates refcount blocks covering everything up to `startCluster +
 * additional` clusters plus themselves and a new refcount table, placed from
 * `startCluster` (which must be free, as everything after it); with `exact`
 * false the table gets room to grow by half. `hook.offset` (a refcount
 * block already written) is entered at table index `hook.index`. Returns the
 * first cluster after the area and the old table, which the caller frees
 * (it is unreferenced once this returns). Metadata lock held.
 */
export async function refcountArea(
  st: Qcow2State,
  startCluster: number,
  additional: number,
  exact: boolean,
  hook: { index: number; offset: number } | undefined,
  req: RequestInfo | undefined,
): Promise<{ end: number; oldTable: { cluster: number; clusters: number } }> {
  const cs = st.cs;
  const per = st.perBlock;
  const total = refblockCount(startCluster + additional, cs, per, !exact);
  const perTableCluster = cs / 8;
  let tableSize = exact ? total : total + Math.ceil(total / 2);
  tableSize = Math.ceil(tableSize / perTableCluster) * perTableCluster;
  if (tableSize * 8 > MAX_REFTABLE_BYTES) {
    throw new BlockError(
      "EFBIG",
      `Cannot grow the refcount table to ${tableSize} entries: the limit is ${MAX_REFTABLE_BYTES / 8} (${MAX_REFTABLE_BYTES} bytes)`,
      { node: st.node.name },
    );
  }
  const tableClusters = tableSize / perTableCluster;
  const areaIndex = Math.floor(startCluster / per);
  const table = new Float64Array(tableSize);
  table.set(st.reftable.length > tableSize ? st.reftable.subarray(0, tableSize) : st.reftable);
  if (hook) table[hook.index] = hook.offset;
  let missing = 0;
  for (let i = areaIndex; i < total; i++) if (!table[i]) missing++;
  const tableCluster = startCluster + missing;
  const end = tableCluster + tableClusters;
  // Fill the blocks covering the area (new ones are made, existing ones reused).
  let blockCluster = startCluster;
  for (let i = areaIndex; i < total; i++) {
    let e: CacheEntry;
    if (table[i]) {
      e = await st.loadTable(
        st.rbCache,
        table[i],
        { kind: "Refblock", where: `reftable index: 0x${i.toString(16)}` },
        "refblock_load",
        req,
      );
    } else {
      e = st.rbCache.insert(blockCluster * cs, new Uint8Array(cs), { dirty: true, isNew: true, pin: true });
      table[i] = blockCluster * cs;
      blockCluster++;
    }
    try {
      const first = i * per;
      if (first < end) {
        const from = first < startCluster ? startCluster - first : 0;
        const to = Math.min(end - first, per);
        for (let j = from; j < to; j++) {
          if (readRefcount(e.view, st.refBits, j) !== 0) {
            throw new BlockError("EIO", `Internal error: refcount area cluster ${first + j} is already in use`, { node: st.node.name });
          }
          writeRefcount(e.view, st.refBits, j, 1);
        }
        st.rbCache.markDirty(e);
      }
    } finally {
      st.rbCache.release(e);
    }
  }
  let p = st.event("refblock_alloc_write_blocks", req);
  if (p) await p;
  for (const e of st.rbCache.dirtyEntries()) {
    await preWriteOverlapCheck(st, OL_REFCOUNT_BLOCK, e.offset, cs, false);
    await st.file.pwrite(e.offset, e.buf, { req });
    st.rbCache.markClean(e);
  }
  await st.file.flush({ req });
  p = st.event("refblock_alloc_write_table", req);
  if (p) await p;
  const bytes = new Uint8Array(tableSize * 8);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < total; i++) if (table[i]) view.setBigUint64(i * 8, BigInt(table[i]));
  await preWriteOverlapCheck(st, OL_REFCOUNT_TABLE, tableCluster * cs, bytes.length, false);
  await st.file.pwrite(tableCluster * cs, bytes, { req });
  await st.file.flush({ req });
  p = st.event("refblock_alloc_switch_table", req);
  if (p) await p;
  // refcount_table_offset and refcount_table_clusters change in one write.
  const next = { ...st.header, refcountTableOffset: tableCluster * cs, refcountTableClusters: tableClusters };
  await writeHeaderFields(st.file, next, ["refcountTableOffset", "refcountTableClusters"], req);
  const oldCluster = st.header.refcountTableOffset / cs;
  const oldClusters = st.header.refcountTableClusters;
  st.header.refcountTableOffset = tableCluster * cs;
  st.header.refcountTableClusters = tableClusters;
  st.reftable = table;
  st.reftableDirty.clear();
  st.reftableSwitches++;
  st.metadataMoved();
  return { end, oldTable: { cluster: oldCluster, clusters: oldClusters } };
}
