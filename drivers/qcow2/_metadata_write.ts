/**
 * Writes the dirty metadata tables of an open image from its caches: refcount
 * blocks, refcount table entries, L2 tables and L1 entries, each write
 * through the overlap check, the tables in 512-byte chunks. No flushes and
 * no ordering here: `_writeback.ts` orders these writes (and `_exit.ts` the
 * synchronous ones at exit), so the image stays consistent after a crash.
 *
 * @module
 */

import type { RequestInfo } from "../../core/types.ts";
import { OL_ACTIVE_L1, OL_ACTIVE_L2, OL_REFCOUNT_BLOCK, OL_REFCOUNT_TABLE, preWriteOverlapCheck } from "./_overlap.ts";
import type { Qcow2State } from "./_state.ts";

/** Writes dirty refcount blocks and refcount table entries (no flush). */
export async function writeRefblocks(st: Qcow2State, req: RequestInfo | undefined): Promise<boolean> {
  const dirty = st.rbCache.dirtyEntries();
  for (const e of dirty) {
    const p = st.event("refblock_update_part", req);
    if (p) await p;
    await preWriteOverlapCheck(st, OL_REFCOUNT_BLOCK, e.offset, e.buf.length, false);
    await st.file.pwrite(e.offset, e.buf, { req });
    st.rbCache.markClean(e);
  }
  let wrote = dirty.length > 0;
  if (st.reftableDirty.size) {
    // A refcount block that was just hooked in may be counted by one of the
    // blocks written above: that count must be durable before the table
    // entry makes the new block part of the image (QEMU flushes the
    // refcount cache before hooking a block up, too).
    if (dirty.length) await st.file.flush({ req });
    const rt = st.reftable;
    await writeEntries(
      st,
      st.header.refcountTableOffset,
      rt.length,
      st.reftableDirty,
      (i) => BigInt(rt[i]),
      OL_REFCOUNT_TABLE,
      req,
    );
    wrote = true;
  }
  return wrote;
}

/** Writes dirty L2 tables (no flush). Returns whether one of them was new. */
export async function writeL2Tables(st: Qcow2State, req: RequestInfo | undefined): Promise<boolean> {
  let anyNew = false;
  for (const e of st.l2Cache.dirtyEntries()) {
    const p = st.event("l2_update", req);
    if (p) await p;
    if (e.isNew) anyNew = true;
    await preWriteOverlapCheck(st, OL_ACTIVE_L2, e.offset, e.buf.length, false);
    await st.file.pwrite(e.offset, e.buf, { req });
    st.l2Cache.markClean(e);
  }
  return anyNew;
}

/** Writes dirty L1 entries, one 512-byte chunk of the table each (no flush). */
export async function writeL1(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  if (!st.l1Dirty.size) return;
  await writeEntries(
    st,
    st.header.l1TableOffset,
    st.l1Size,
    st.l1Dirty,
    (i) => st.l1View.getBigUint64(i * 8),
    OL_ACTIVE_L1,
    req,
  );
}

async function writeEntries(
  st: Qcow2State,
  tableOffset: number,
  tableEntries: number,
  dirty: Set<number>,
  value: (i: number) => bigint,
  ign: number,
  req: RequestInfo | undefined,
): Promise<void> {
  for (const [off, buf] of dirtyChunks(tableOffset, tableEntries, dirty, value)) {
    await preWriteOverlapCheck(st, ign, off, buf.length, false);
    await st.file.pwrite(off, buf, { req });
  }
}

/** The dirty parts of the refcount table as (offset, bytes) writes; the dirty set is cleared. */
export function dirtyReftableChunks(st: Qcow2State): [number, Uint8Array][] {
  const rt = st.reftable;
  return dirtyChunks(st.header.refcountTableOffset, rt.length, st.reftableDirty, (i) => BigInt(rt[i]));
}

/** The dirty parts of the L1 table as (offset, bytes) writes; the dirty set is cleared. */
export function dirtyL1Chunks(st: Qcow2State): [number, Uint8Array][] {
  return dirtyChunks(st.header.l1TableOffset, st.l1Size, st.l1Dirty, (i) => st.l1View.getBigUint64(i * 8));
}

/** Entries per 512-byte chunk of the L1 and refcount tables (one sector: written whole or not at all). */
const ENTRIES_PER_CHUNK = 64;

/** The 512-byte chunks of a table holding dirty entries, as (offset, bytes) writes in offset order; clears `dirty`. */
function dirtyChunks(tableOffset: number, tableEntries: number, dirty: Set<number>, value: (i: number) => bigint): [number, Uint8Array][] {
  const chunks = new Set<number>();
  for (const i of dirty) chunks.add(Math.floor(i / ENTRIES_PER_CHUNK));
  dirty.clear();
  const out: [number, Uint8Array][] = [];
  for (const c of [...chunks].sort((a, b) => a - b)) {
    const first = c * ENTRIES_PER_CHUNK;
    const n = Math.min(ENTRIES_PER_CHUNK, tableEntries - first);
    const buf = new Uint8Array(n * 8);
    const view = new DataView(buf.buffer);
    for (let k = 0; k < n; k++) view.setBigUint64(k * 8, value(first + k));
    out.push([tableOffset + first * 8, buf]);
  }
  return out;
}
