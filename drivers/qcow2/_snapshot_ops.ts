/**
 * Creating, deleting and applying qcow2 internal snapshots (QEMU's
 * qcow2_snapshot_create, _delete and _goto, with qemu-img's layout), the
 * read-only view of a snapshot (qcow2_snapshot_load_tmp) and where the VM
 * state lives (after the guest data, at the first L2 table boundary past
 * the virtual size).
 *
 * Crash safety: every new reference is durable only after the refcounts it
 * needs (a snapshot's L1 copy and its table entry after the increments, a
 * reverted active L1 after the increments of what it points at), and
 * refcounts drop only after the references are gone on disk, so a crash
 * leaves leaks at worst. The COPIED flags cannot change in the same write as
 * the refcounts they mirror, so a version 3 image carries the dirty bit
 * while they may disagree; opening it read-write (or `check -r all`) after a
 * crash there repairs them, and clusters shared with a snapshot are never
 * flagged COPIED on disk in the meantime.
 *
 * @module
 */

import { BlockError, CorruptImageError } from "../../core/errors.ts";
import type { RequestInfo, SnapshotInfo } from "../../core/types.ts";
import { entryOffset, HI_COMPRESSED, maxRefcount } from "./_entries.ts";
import { INCOMPAT_DIRTY, MAX_REFTABLE_BYTES } from "./header.ts";
import { writeHeaderFields } from "./_header_write.ts";
import { decodeCompressed, newMapping } from "./_l2.ts";
import { allocClusters, getRefcount } from "./_refcount.ts";
import { growL1 } from "./_l1_grow.ts";
import { resize } from "./_resize.ts";
import {
  findSnapshot,
  findSnapshotByIdOrName,
  newSnapshotId,
  readSnapshotTable,
  snapshotL1Error,
  writeSnapshotTable,
} from "./_snapshot.ts";
import { addRef, discardReleased, type Released, updateSnapshotRefcount } from "./_snapshot_refcount.ts";
import type { Qcow2State } from "./_state.ts";
import type { SnapshotEntry } from "./_tables.ts";
import { zeroOrDiscard } from "./_zero.ts";
import { markDirty, writeback } from "./_writeback.ts";
import { OL_ACTIVE_L1, OL_INACTIVE_L1, preWriteOverlapCheck } from "./_overlap.ts";

/** Guest offset of the VM state area: the first L2 table boundary at or after the virtual size (QEMU's qcow2_vm_state_offset). */
export function vmStateOffset(st: Qcow2State): number {
  return Math.ceil(st.header.size / st.l2Span) * st.l2Span;
}

function refuseDataFile(st: Qcow2State, what: string): void {
  if (st.externalData) {
    throw new BlockError("ENOTSUP", `Cannot ${what}: the image keeps its data in an external data file, which has no internal snapshots`, {
      node: st.node.name,
    });
  }
}

function notFound(st: Qcow2State, what: string): never {
  throw new BlockError("ENOENT", `Can't find the snapshot '${what}'`, { node: st.node.name });
}

/** QEMU's qcow2_validate_table for a snapshot's L1 table. */
function validateL1(st: Qcow2State, sn: SnapshotEntry): void {
  const e = snapshotL1Error(st, sn);
  if (e) throw e;
}

/**
 * The same check where QEMU reports what it found (error_report_err) and
 * returns only the errno (qcow2_snapshot_goto): the drop-ins print the
 * line, then the caller's "Failed to load snapshot: Invalid argument".
 */
function validateL1Reported(st: Qcow2State, sn: SnapshotEntry): void {
  const e = snapshotL1Error(st, sn);
  if (e) throw new BlockError(e.code, e.message, { node: st.node.name, qemuMessage: e.qemuMessage, qemuReported: [e.qemuMessage] });
}

async function readL1(st: Qcow2State, sn: SnapshotEntry, bytes: number, req: RequestInfo | undefined): Promise<Uint8Array> {
  const buf = new Uint8Array(Math.max(bytes, sn.l1Size * 8));
  if (sn.l1Size) await st.file.pread(sn.l1Offset, buf.subarray(0, sn.l1Size * 8), { req });
  return buf;
}

/** Marks the active L1 entries that differ from `before` for write-back. */
function markL1Changes(st: Qcow2State, before: Uint8Array): void {
  const v = new DataView(before.buffer, before.byteOffset, before.byteLength);
  for (let i = 0; i < st.l1Size; i++) {
    if (v.getUint32(i * 8) !== st.l1View.getUint32(i * 8) || v.getUint32(i * 8 + 4) !== st.l1View.getUint32(i * 8 + 4)) st.l1Dirty.add(i);
  }
  st.metadataMoved();
}

/** Writes everything back and makes it durable. */
async function settle(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  await writeback(st, req);
  await st.flushFiles(req);
}

/**
 * Runs `fn` with the dirty bit set (version 3, unless lazy refcounts set it
 * already): refcounts and COPIED flags may disagree on disk meanwhile. On
 * success everything is written back and the bit cleared; on failure it
 * stays, so the next read-write open repairs the image.
 */
async function withDirtyBit(st: Qcow2State, req: RequestInfo | undefined, fn: () => Promise<void>): Promise<void> {
  if (st.mode === "lazy") {
    await markDirty(st, req);
    await fn();
    return;
  }
  const mark = st.header.version >= 3 && !(st.header.incompatibleFeatures & INCOMPAT_DIRTY);
  if (mark) {
    st.header.incompatibleFeatures |= INCOMPAT_DIRTY;
    await writeHeaderFields(st.file, st.header, ["incompatibleFeatures"], req);
  }
  await fn();
  await settle(st, req);
  if (mark) {
    st.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
    await writeHeaderFields(st.file, st.header, ["incompatibleFeatures"], req);
  }
}

/**
 * Refuses (EINVAL, as QEMU's update_refcount) before anything changes when
 * one more reference through `l1` would overflow a refcount, or would go to
 * a cluster without a refcount block (`missingRefblock`).
 */
async function checkRoom(st: Qcow2State, l1: Uint8Array, req: RequestInfo | undefined): Promise<void> {
  const max = maxRefcount(st.refBits);
  const adds = new Map<number, number>();
  const l1v = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
  const m = newMapping();
  const add = (c: number) => adds.set(c, (adds.get(c) ?? 0) + 1);
  for (let i = 0; i < l1.length / 8; i++) {
    const l2 = entryOffset(l1v, i * 8);
    if (!l2 || l2 % st.cs) continue;
    add(l2 / st.cs);
    const e = await st.loadL2(l2, i, req);
    try {
      for (let at = 0; at < st.cs; at += st.entryBytes) {
        if (e.view.getUint32(at) & HI_COMPRESSED) {
          decodeCompressed(st, e.view, at, m);
          for (let c = Math.floor(m.host / st.cs); c <= Math.floor((m.host + m.compressedBytes - 1) / st.cs); c++) add(c);
        } else {
          const host = entryOffset(e.view, at);
          if (host) add(Math.floor(host / st.cs));
        }
      }
    } finally {
      st.l2Cache.release(e);
    }
  }
  for (const [c, n] of adds) {
    missingRefblock(st, c);
    if (st.refBits >= 53) continue;
    const rc = await getRefcount(st, c, req);
    if (rc + n > max) {
      throw new BlockError(
        "EINVAL",
        `Refcount of cluster ${c} would exceed ${max} (refcount_bits ${st.refBits}): the image cannot share it with one more snapshot`,
        { node: st.node.name },
      );
    }
  }
}

/**
 * A cluster in use must have a refcount block: one without is corruption,
 * and sharing it is refused before anything changes. QEMU's update_refcount
 * fails there too, with its errnos: EFBIG when no refcount table could
 * reach the cluster, else EAGAIN (after hooking up a new block).
 */
function missingRefblock(st: Qcow2State, c: number): void {
  const rt = Math.floor(c / st.perBlock);
  if (rt < st.reftable.length && st.reftable[rt]) return;
  const where = `cluster ${c} (offset 0x${(c * st.cs).toString(16)})`;
  if ((rt + 1) * 8 > MAX_REFTABLE_BYTES) {
    throw new BlockError("EFBIG", `Cannot share ${where}: no refcount table can describe it (the image is corrupt; run check -r all)`, {
      node: st.node.name,
    });
  }
  throw new BlockError("EAGAIN", `Cannot share ${where}: it is in use but has no refcount block (the image is corrupt; run check -r all)`, {
    node: st.node.name,
  });
}

/** qemu-img snapshot -c: copies the active L1 table and shares every cluster with the new snapshot (lock held). */
export async function createSnapshot(st: Qcow2State, info: SnapshotInfo, req: RequestInfo | undefined): Promise<void> {
  refuseDataFile(st, "create a snapshot");
  await settle(st, req);
  const entries = await readSnapshotTable(st);
  if (entries.length >= 65536) {
    throw new BlockError("EFBIG", `Cannot create snapshot '${info.name}': the image has 65536 snapshots already`, { node: st.node.name });
  }
  if (info.id && entries.some((e) => e.id === info.id)) {
    throw new BlockError("EEXIST", `Cannot create snapshot with ID '${info.id}': the ID is in use`, { node: st.node.name });
  }
  // A refusal of checkRoom() leaves a consistent image (the copy leaked, refcounts untouched): it is reported after the
  // write-back and the dirty bit's clearing, so the next open has nothing to repair (qemu-img leaves such an image clean).
  let refused: unknown;
  await withDirtyBit(st, req, async () => {
    const bytes = st.l1Size * 8;
    // The copy keeps the COPIED flags as they are now (QEMU's bytes; nobody reads a snapshot's flags).
    const l1Offset = bytes ? await allocClusters(st, Math.ceil(bytes / st.cs), req) : 0;
    const copy = st.l1.slice();
    // x-wrong-order=snapshot-l1-after-table (tests only): the copy is written after the table points at it.
    const late = st.wrongOrder === "snapshot-l1-after-table";
    if (bytes && !late) {
      await preWriteOverlapCheck(st, 0, l1Offset, bytes, false);
      await st.file.pwrite(l1Offset, copy, { req });
    }
    // QEMU's order: the copy is allocated and written before the refcounts are raised, so a refcount that
    // cannot go up leaves the copy's clusters leaked (qemu-img check reports them as QEMU's do).
    try {
      await checkRoom(st, st.l1, req);
    } catch (e) {
      refused = e;
      return;
    }
    const released: Released = [];
    const before = st.l1.slice();
    await updateSnapshotRefcount(st, st.l1, 1, released, req);
    markL1Changes(st, before);
    entries.push({
      l1Offset,
      l1Size: st.l1Size,
      id: info.id || newSnapshotId(entries),
      name: info.name,
      dateSec: info.dateSec,
      dateNsec: info.dateNsec,
      vmClockNsec: info.vmClockNsec,
      vmStateSize: info.vmStateSize,
      diskSize: st.header.size,
      icount: info.icount,
      extra: new Uint8Array(0),
    });
    // The increments and the cleared COPIED flags are durable before the snapshot points at the copy.
    await writeSnapshotTable(st, entries, req);
    if (bytes && late) {
      // The table names the copy already: it is an inactive L1 table now.
      await preWriteOverlapCheck(st, OL_INACTIVE_L1, l1Offset, bytes, false);
      await st.file.pwrite(l1Offset, copy, { req });
    }
    if (info.vmStateSize > 0) {
      // The VM state is the snapshot's now: drop it from the active layer (QEMU does, to spare the next snapshot the COW).
      const len = Math.ceil(info.vmStateSize / st.cs) * st.cs;
      await zeroOrDiscard(st, vmStateOffset(st), len, { discard: true, unmap: true }, req);
    }
  });
  if (refused !== undefined) throw refused;
}

/** Runs one stage of a snapshot deletion; a failure is reported as QEMU words it ("<stage>: <strerror>"). */
async function step<T>(st: Qcow2State, stage: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (!(e instanceof BlockError)) throw e;
    const err = new BlockError(e.code, `${stage}: ${e.strerror}`, { node: st.node.name, cause: e });
    throw e instanceof CorruptImageError ? e : err;
  }
}

/** qemu-img snapshot -d: removes the entry, then drops the snapshot's references (lock held). */
export async function deleteSnapshot(st: Qcow2State, idOrName: string, req: RequestInfo | undefined): Promise<void> {
  refuseDataFile(st, "delete a snapshot");
  await settle(st, req);
  const entries = await readSnapshotTable(st);
  const idx = findSnapshotByIdOrName(entries, idOrName);
  if (idx < 0) notFound(st, idOrName);
  const sn = entries[idx];
  validateL1(st, sn);
  await withDirtyBit(st, req, async () => {
    entries.splice(idx, 1);
    // The snapshot is gone on disk before any refcount drops.
    await step(st, "Failed to remove snapshot from snapshot list", () => writeSnapshotTable(st, entries, req));
    const released: Released = [];
    await step(st, "Failed to free the cluster and L1 table", async () => {
      await updateSnapshotRefcount(st, await readL1(st, sn, 0, req), -1, released, req);
      const l1Bytes = sn.l1Size * 8;
      if (l1Bytes) {
        for (let c = Math.floor(sn.l1Offset / st.cs); c <= Math.floor((sn.l1Offset + l1Bytes - 1) / st.cs); c++) {
          await addRef(st, c * st.cs, -1, released, req);
        }
      }
    });
    const before = st.l1.slice();
    await step(st, "Failed to update snapshot status in disk", () => updateSnapshotRefcount(st, st.l1, 0, released, req));
    markL1Changes(st, before);
    await settle(st, req);
    await discardReleased(st, released, req);
  });
}

/** qemu-img snapshot -a: makes the active layer a copy of the snapshot's (lock held). */
export async function gotoSnapshot(st: Qcow2State, idOrName: string, req: RequestInfo | undefined): Promise<void> {
  refuseDataFile(st, "apply a snapshot");
  await settle(st, req);
  const entries = await readSnapshotTable(st);
  const idx = findSnapshotByIdOrName(entries, idOrName);
  if (idx < 0) notFound(st, idOrName);
  const sn = entries[idx];
  validateL1Reported(st, sn);
  if (sn.diskSize !== undefined && sn.diskSize !== st.header.size) await resize(st, sn.diskSize, { req });
  const snL1 = await readL1(st, sn, 0, req);
  await checkRoom(st, snL1, req);
  await withDirtyBit(st, req, async () => {
    await growL1(st, sn.l1Size, true, req);
    const released: Released = [];
    // Count what the snapshot points at once more; its own table gets the COPIED flags fixed (all clear: shared now).
    if (await updateSnapshotRefcount(st, snL1, 1, released, req)) {
      await settle(st, req);
      await preWriteOverlapCheck(st, OL_INACTIVE_L1, sn.l1Offset, snL1.length, false);
      await st.file.pwrite(sn.l1Offset, snL1, { req });
    }
    await settle(st, req);
    // The new active table: the snapshot's entries, none COPIED, zeros after them.
    const next = new Uint8Array(st.l1Size * 8);
    next.set(snL1.subarray(0, Math.min(snL1.length, next.length)));
    await preWriteOverlapCheck(st, OL_ACTIVE_L1, st.header.l1TableOffset, next.length, false);
    await st.file.pwrite(st.header.l1TableOffset, next, { req });
    await st.file.flush({ req });
    // The old active layer is unreferenced on disk now.
    const old = st.l1.slice();
    st.l1.set(next);
    st.l1Dirty.clear();
    st.metadataMoved();
    await updateSnapshotRefcount(st, old, -1, released, req);
    const before = st.l1.slice();
    await updateSnapshotRefcount(st, st.l1, 0, released, req);
    markL1Changes(st, before);
    await settle(st, req);
    await discardReleased(st, released, req);
  });
}

/**
 * Switches the state of a read-only node to the snapshot with ID `id` and
 * name `name` (either may be omitted): reads then see the image as it was
 * when the snapshot was taken (QEMU's qcow2_snapshot_load_tmp; the virtual
 * size stays the current one).
 */
export async function loadSnapshotView(st: Qcow2State, id: string | undefined, name: string | undefined): Promise<void> {
  if (!st.node.readOnly) {
    throw new BlockError("EINVAL", "Options snapshot.id and snapshot.name need a read-only open: a snapshot view cannot be written", {
      node: st.node.name,
    });
  }
  const entries = await readSnapshotTable(st);
  const idx = findSnapshot(entries, id, name);
  if (idx < 0) {
    const what = [id !== undefined ? `ID '${id}'` : "", name !== undefined ? `name '${name}'` : ""].filter(Boolean).join(" and ");
    throw new BlockError("ENOENT", `Can't find snapshot with ${what}`, { node: st.node.name });
  }
  const sn = entries[idx];
  validateL1(st, sn);
  const l1 = await readL1(st, sn, 0, undefined);
  st.l1 = l1;
  st.l1View = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
  st.header.l1Size = sn.l1Size;
  st.header.l1TableOffset = sn.l1Offset;
  st.l2Cache.clear();
}
