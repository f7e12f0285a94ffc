/**
 * Changing the refcount width of an image (`qemu-img amend -o
 * refcount_bits=N`, QEMU's qcow2_change_refcount_order): the refcounts are
 * repacked into new refcount blocks of the new width. Walks over the old
 * refcount table allocate the new blocks (and a new table) in the old
 * structure until a walk allocates nothing more; a last walk writes the
 * blocks; the new table is written; everything is durable before the
 * header switches width, table offset and size in one write; then the old
 * blocks and table are freed in the new structure.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import { readRefcount, writeRefcount } from "./_entries.ts";
import { MAX_REFTABLE_BYTES } from "./header.ts";
import { allocClusters, updateRefcount } from "./_refcount.ts";
import type { Qcow2State } from "./_state.ts";
import { rewriteHeader, writeback } from "./_writeback.ts";
import { preWriteOverlapCheck } from "./_overlap.ts";

/** Called for every new refcount block's worth of refcounts: its index, whether all are 0, and (writing) its content. */
type BlockOp = (index: number, empty: boolean, block: Uint8Array | undefined) => Promise<void>;

/**
 * QEMU's walk_over_reftable: every refcount of the old structure, in
 * order, packed `newPer` to a new block; `op` gets each new block (with its
 * content when `fill`) once the next refcount needs room or the walk ends.
 * Refcounts are read as the walk reaches them, so clusters `op` allocates
 * are seen by the rest of the walk. Refuses refcounts that do not fit.
 */
async function walk(
  st: Qcow2State,
  newBits: number,
  fill: boolean,
  op: BlockOp,
  req: RequestInfo | undefined,
  status: WalkStatus,
): Promise<void> {
  // QEMU's progress: one step per refcount table entry of walk `index` out of `total`.
  const size = st.reftable.length;
  const report = (done: number) => status.progress?.(status.index * size + done, status.total * size);
  const cs = st.cs;
  const newPer = (cs * 8) / newBits;
  const block = fill ? new Uint8Array(cs) : undefined;
  const bv = block ? new DataView(block.buffer) : undefined;
  const limit = newBits < 53 ? 2 ** newBits : Infinity;
  let index = 0;
  let pos = 0;
  let empty = true;
  const next = async () => {
    await op(index++, empty, block);
    block?.fill(0);
    pos = 0;
    empty = true;
  };
  for (let rt = 0; rt < st.reftable.length; rt++) {
    report(rt);
    const off = st.reftable[rt];
    if (!off) {
      // No refcount block: all zeros, skipped a new block at a time.
      for (let left = st.perBlock; left > 0;) {
        if (pos >= newPer) await next();
        const take = Math.min(left, newPer - pos);
        pos += take;
        left -= take;
      }
      continue;
    }
    if (off % cs !== 0) {
      throw new BlockError("EIO", `Image is corrupt (unaligned refblock offset 0x${off.toString(16)}, reftable index ${rt})`, {
        node: st.node.name,
      });
    }
    const e = await st.loadTable(
      st.rbCache,
      off,
      { kind: "Refblock", where: `reftable index: 0x${rt.toString(16)}` },
      "refblock_load",
      req,
    );
    try {
      for (let i = 0; i < st.perBlock; i++) {
        if (pos >= newPer) await next();
        const rc = readRefcount(e.view, st.refBits, i);
        if (rc >= limit) {
          throw new BlockError(
            "EINVAL",
            `Cannot decrease refcount entry width to ${newBits} bits: Cluster at offset 0x${
              ((rt * st.perBlock + i) * cs).toString(16)
            } has a refcount of ${rc}`,
            { node: st.node.name },
          );
        }
        if (rc !== 0) {
          if (bv) writeRefcount(bv, newBits, pos, rc);
          empty = false;
        }
        pos++;
      }
    } finally {
      st.rbCache.release(e);
    }
  }
  if (pos > 0) await op(index, empty, block);
  report(size);
}

/** Which walk this is and how many there are expected to be, for the progress callback. */
interface WalkStatus {
  index: number;
  total: number;
  progress?: (offset: number, size: number) => void;
}

/** Repacks the refcounts of the open image into `2^order`-bit entries (metadata lock held). */
export async function changeRefcountOrder(
  st: Qcow2State,
  order: number,
  req?: RequestInfo,
  progress?: (offset: number, size: number) => void,
): Promise<void> {
  const cs = st.cs;
  const newBits = 2 ** order;
  const perTableCluster = cs / 8;
  await writeback(st, req);
  await st.flushFiles(req);
  const table: number[] = [];
  let tableOffset = 0;
  let tableAllocated = 0;
  let allocated: boolean;
  try {
    await build();
  } catch (e) {
    // QEMU's cleanup: what was allocated for the new structure goes back.
    for (const off of table) if (off) await updateRefcount(st, off / cs, -1, req);
    if (tableOffset) {
      for (let c = 0; c < Math.ceil((tableAllocated * 8) / cs); c++) await updateRefcount(st, tableOffset / cs + c, -1, req);
    }
    await writeback(st, req);
    throw e;
  }
  async function build(): Promise<void> {
    // Allocate until a whole walk needs nothing new (the new structure counts itself).
    let walks = 0;
    do {
      allocated = false;
      // As QEMU: at least this walk, one to find nothing new and the writing one.
      const status = { index: walks, total: Math.max(walks + 2, 3), progress };
      walks++;
      await walk(
        st,
        newBits,
        false,
        async (index, empty) => {
          if (empty) return;
          if (index >= table.length) {
            const size = Math.ceil((index + 1) / perTableCluster) * perTableCluster;
            if (size * 8 > MAX_REFTABLE_BYTES) {
              throw new BlockError(
                "ENOTSUP",
                "This operation would make the refcount table grow beyond the maximum size supported by QEMU, aborting",
                { node: st.node.name },
              );
            }
            while (table.length < size) table.push(0);
          }
          if (!table[index]) {
            table[index] = await allocClusters(st, 1, req);
            allocated = true;
          }
        },
        req,
        status,
      );
      if (allocated) {
        if (tableOffset) {
          for (let c = 0; c < Math.ceil((tableAllocated * 8) / cs); c++) await updateRefcount(st, tableOffset / cs + c, -1, req);
        }
        tableOffset = await allocClusters(st, Math.ceil((table.length * 8) / cs), req);
        tableAllocated = table.length;
      }
    } while (allocated);
    // Write the new blocks.
    await walk(
      st,
      newBits,
      true,
      async (index, empty, block) => {
        if (index < table.length && table[index]) {
          await preWriteOverlapCheck(st, 0, table[index], block!.length, false);
          await st.file.pwrite(table[index], block!, { req });
        } else if (!empty) throw new BlockError("EIO", `Internal error: refcount block ${index} was not allocated`, { node: st.node.name });
      },
      req,
      { index: walks, total: walks + 1, progress },
    );
  }
  const bytes = new Uint8Array(table.length * 8);
  const view = new DataView(bytes.buffer);
  table.forEach((off, i) => off && view.setBigUint64(i * 8, BigInt(off)));
  await preWriteOverlapCheck(st, 0, tableOffset, bytes.length, false);
  await st.file.pwrite(tableOffset, bytes, { req });
  // The old structure (counting the new one) and the new one are durable before the switch.
  const oldTable = st.reftable;
  const oldTableOffset = st.header.refcountTableOffset;
  const oldTableClusters = st.header.refcountTableClusters;
  await rewriteHeader(st, (h) => {
    h.refcountOrder = order;
    h.refcountTableOffset = tableOffset;
    h.refcountTableClusters = (table.length * 8) / cs;
  });
  st.setRefcounts(order, Float64Array.from(table));
  // The old blocks and table are unreferenced now; the new structure counts them.
  for (const off of oldTable) if (off) await updateRefcount(st, off / cs, -1, req);
  for (let c = 0; c < oldTableClusters; c++) await updateRefcount(st, oldTableOffset / cs + c, -1, req);
  await writeback(st, req);
  await st.flushFiles(req);
}
