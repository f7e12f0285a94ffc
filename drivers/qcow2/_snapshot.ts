/**
 * qcow2 internal snapshots: the snapshot table (the codec is `_tables.ts`):
 * reading it with QEMU's defaults for fields old images lack, finding
 * entries as QEMU does (by ID, by name, or both), and writing a new table
 * crash-safely (QEMU's qcow2_write_snapshots: a new table in new clusters,
 * durable before the header points at it, the old one freed after).
 *
 * @module
 */

import { BlockError, CorruptImageError } from "../../core/errors.ts";
import type { RequestInfo, SnapshotInfo } from "../../core/types.ts";
import { MAX_L1_BYTES } from "./header.ts";
import { writeHeaderFields } from "./_header_write.ts";
import { allocClusters, discardClusters, freeCluster } from "./_refcount.ts";
import type { Qcow2State } from "./_state.ts";
import { encodeSnapshotTable, MAX_SNAPSHOT_TABLE, readSnapshotTableFrom, type SnapshotEntry } from "./_tables.ts";

export { MAX_SNAPSHOT_TABLE, readSnapshotTableFrom };
export { type CheckedSnapshotTable, MAX_SNAPSHOT_EXTRA, readSnapshotTableChecked } from "./_snapshot_read.ts";
import { writeback } from "./_writeback.ts";
import { preWriteOverlapCheck } from "./_overlap.ts";

/**
 * Reads the open image's snapshot table; a damaged table is a corruption
 * error. A snapshot without a recorded disk size gets the current size, as
 * QEMU's qcow2_read_snapshots gives it.
 */
export async function readSnapshotTable(st: Qcow2State): Promise<SnapshotEntry[]> {
  const parsed = await readSnapshotTableFrom(st.file, st.header);
  if (typeof parsed === "string") throw new CorruptImageError(`Corrupt qcow2 image: ${parsed}`, { node: st.node.name });
  for (const e of parsed.entries) e.diskSize ??= st.header.size;
  return parsed.entries;
}

/** An ID or name as QEMU lists it: a C string (up to the first NUL) in a buffer of `size` bytes (QEMUSnapshotInfo). */
function listed(text: string, raw: Uint8Array | undefined, size: number): string {
  let b = raw ?? new TextEncoder().encode(text);
  const nul = b.indexOf(0);
  if (nul >= 0) b = b.subarray(0, nul);
  return new TextDecoder().decode(b.subarray(0, size - 1));
}

/** The snapshots as the driver interface lists them (IDs up to 127 bytes, names up to 255, as QEMU lists them). */
export async function listSnapshots(st: Qcow2State): Promise<SnapshotInfo[]> {
  return (await readSnapshotTable(st)).map((e) => {
    const info: SnapshotInfo = {
      id: listed(e.id, e.raw?.id, 128),
      name: listed(e.name, e.raw?.name, 256),
      vmStateSize: e.vmStateSize,
      dateSec: e.dateSec,
      dateNsec: e.dateNsec,
      vmClockNsec: e.vmClockNsec,
    };
    if (e.icount !== undefined) info.icount = e.icount;
    return info;
  });
}

/**
 * Index of the first entry whose ID is `id` and whose name is `name` (either
 * may be left out, not both): QEMU's find_snapshot_by_id_and_name. -1 when
 * none matches.
 */
export function findSnapshot(entries: readonly SnapshotEntry[], id: string | undefined, name: string | undefined): number {
  if (id === undefined && name === undefined) return -1;
  return entries.findIndex((e) => (id === undefined || e.id === id) && (name === undefined || e.name === name));
}

/** Index of the snapshot whose ID is `idOrName`, else of the first one named so; -1 when none. */
export function findSnapshotByIdOrName(entries: readonly SnapshotEntry[], idOrName: string): number {
  const byId = findSnapshot(entries, idOrName, undefined);
  return byId >= 0 ? byId : findSnapshot(entries, undefined, idOrName);
}

/** The ID QEMU gives a new snapshot: one more than the largest numeric ID (find_new_snapshot_id). */
export function newSnapshotId(entries: readonly SnapshotEntry[]): string {
  let max = 0n;
  for (const e of entries) {
    // strtoul: leading digits, anything else stops the number.
    const digits = /^\s*\+?(\d+)/.exec(e.id)?.[1];
    if (digits !== undefined && BigInt(digits) > max) max = BigInt(digits);
  }
  return String(max + 1n);
}

/**
 * Replaces the snapshot table with `entries` (metadata lock held): the new
 * table goes to newly allocated clusters, which are counted and durable
 * before it is written; the table is durable before nb_snapshots and
 * snapshots_offset change in one header write; then the old table's clusters
 * are freed (`oldTableBytes` long: by default the size the current table
 * parses to). An empty table has offset 0.
 */
export async function writeSnapshotTable(
  st: Qcow2State,
  entries: readonly SnapshotEntry[],
  req: RequestInfo | undefined,
  oldTableBytes?: number,
): Promise<void> {
  if (entries.length > 65536) {
    throw new BlockError("EFBIG", `Cannot write ${entries.length} snapshots: an image holds at most 65536`, { node: st.node.name });
  }
  const bytes = encodeSnapshotTable(entries);
  if (bytes.length > MAX_SNAPSHOT_TABLE) {
    throw new BlockError("EFBIG", `Snapshot table too large: ${bytes.length} bytes (at most ${MAX_SNAPSHOT_TABLE})`, {
      node: st.node.name,
    });
  }
  const oldOffset = st.header.snapshotsOffset;
  const oldSize = oldTableBytes ?? (st.header.nbSnapshots ? await oldTableSize(st) : 0);
  const clusters = Math.ceil(bytes.length / st.cs);
  const offset = clusters ? await allocClusters(st, clusters, req) : 0;
  try {
    // The clusters are counted on disk before anything is written into them.
    await writeback(st, req);
    await st.flushFiles(req);
    if (bytes.length) {
      await preWriteOverlapCheck(st, 0, offset, bytes.length, false);
      await st.file.pwrite(offset, bytes, { req });
      await st.file.flush({ req });
    }
    const next = { ...st.header, nbSnapshots: entries.length, snapshotsOffset: offset };
    await writeHeaderFields(st.file, next, ["nbSnapshots", "snapshotsOffset"], req);
  } catch (e) {
    for (let c = 0; c < clusters; c++) st.pendingFree.push(offset + c * st.cs);
    throw e;
  }
  st.header.nbSnapshots = entries.length;
  st.header.snapshotsOffset = offset;
  // The header no longer points at the old table. Failing to free it leaks
  // it, nothing worse: like QEMU's qcow2_free_clusters, freeCluster reports it.
  const first = Math.floor(oldOffset / st.cs);
  const last = oldSize ? Math.floor((oldOffset + oldSize - 1) / st.cs) : first - 1;
  const released: number[] = [];
  for (let c = first; c <= last; c++) if ((await freeCluster(st, c * st.cs, req)) === 0) released.push(c * st.cs);
  if (released.length) {
    // QCOW2_DISCARD_SNAPSHOT: the space goes back to the host once the header no longer pointing there is durable.
    await st.file.flush({ req });
    await discardClusters(st, released, req);
  }
}

async function oldTableSize(st: Qcow2State): Promise<number> {
  const parsed = await readSnapshotTableFrom(st.file, st.header);
  if (typeof parsed === "string") throw new CorruptImageError(`Corrupt qcow2 image: ${parsed}`, { node: st.node.name });
  return parsed.size;
}

/**
 * QEMU's qcow2_validate_table for a snapshot's L1 table: too large (EFBIG),
 * or misaligned or past the end of the file (EINVAL); undefined when valid.
 * The message names the snapshot and the field; `qemuMessage` is QEMU's.
 */
export function snapshotL1Error(st: Qcow2State, sn: SnapshotEntry): BlockError | undefined {
  const node = st.node.name;
  if (sn.l1Size * 8 > MAX_L1_BYTES) {
    const qemuMessage = "Snapshot L1 table too large";
    return new BlockError("EFBIG", `${qemuMessage}: snapshot '${sn.id}' has l1_size ${sn.l1Size}`, { node, qemuMessage });
  }
  if (sn.l1Offset % st.cs !== 0 || (sn.l1Size > 0 && sn.l1Offset + sn.l1Size * 8 > st.file.length)) {
    const qemuMessage = "Snapshot L1 table offset invalid";
    return new BlockError("EINVAL", `${qemuMessage}: snapshot '${sn.id}' has l1_table_offset 0x${sn.l1Offset.toString(16)}`, {
      node,
      qemuMessage,
    });
  }
  return undefined;
}
