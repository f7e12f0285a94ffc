/**
 * Opening a qcow2 image, the parts below the driver: cache sizing from the
 * options and reading the L1 and refcount tables (the children are opened
 * in `_children.ts`).
 *
 * @module
 */

import type { BlockNode, OpenContext } from "../../core/node.ts";
import { optSize } from "../../core/options.ts";
import { clusterSize, l2EntryBytes, type Qcow2Header } from "./header.ts";
import { entryOffset } from "./_entries.ts";

/** L2 and refcount block cache sizes in tables, from `cache-size`, `l2-cache-size`, `refcount-cache-size` as QEMU sizes them. */
export function cacheTables(ctx: OpenContext, h: Qcow2Header): { l2: number; rb: number } {
  const o = ctx.options;
  const cs = clusterSize(h);
  const entryBytes = l2EntryBytes(h);
  const full = Math.ceil(h.size / cs) * entryBytes;
  const total = optSize(o, "cache-size", "qcow2");
  let l2 = optSize(o, "l2-cache-size", "qcow2");
  let rb = optSize(o, "refcount-cache-size", "qcow2");
  if (total !== undefined && l2 === undefined && rb === undefined) {
    l2 = Math.min(full, Math.floor((total * 4) / 5));
    rb = total - l2;
  } else if (total !== undefined && l2 !== undefined && rb === undefined) rb = Math.max(0, total - l2);
  else if (total !== undefined && rb !== undefined && l2 === undefined) l2 = Math.max(0, total - rb);
  l2 ??= Math.min(full, 32 << 20);
  rb ??= Math.max(Math.floor(l2 / 4), 4 * cs);
  return { l2: Math.max(2, Math.ceil(l2 / cs)), rb: Math.max(4, Math.ceil(rb / cs)) };
}

/** Reads the active L1 table and the refcount table the header points at. */
export async function readTables(node: BlockNode, file: BlockNode, h: Qcow2Header): Promise<{ l1: Uint8Array; reftable: Float64Array }> {
  const l1 = new Uint8Array(h.l1Size * 8);
  if (l1.length) await file.pread(h.l1TableOffset, l1);
  const ev = node.event("reftable_load", undefined);
  if (ev) await ev;
  const rtBytes = new Uint8Array(h.refcountTableClusters * clusterSize(h));
  await file.pread(h.refcountTableOffset, rtBytes);
  const rtView = new DataView(rtBytes.buffer);
  const reftable = new Float64Array(rtBytes.length / 8);
  for (let i = 0; i < reftable.length; i++) {
    reftable[i] = entryOffset(rtView, i * 8);
  }
  return { l1, reftable };
}
