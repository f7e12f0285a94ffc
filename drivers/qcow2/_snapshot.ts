/**
 * qcow2 internal snapshots: reading the snapshot table (the table codec is
 * `_tables.ts`).
 *
 * @module
 */

import { CorruptImageError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import type { SnapshotInfo } from "../../core/types.ts";
import type { Qcow2Header } from "./header.ts";
import type { Qcow2State } from "./_state.ts";
import { parseSnapshotTable, type SnapshotEntry } from "./_tables.ts";

/** QEMU's limit on the snapshot table size (QCOW_MAX_SNAPSHOTS_SIZE). */
export const MAX_SNAPSHOT_TABLE = 64 * 1024 * 1024;

/**
 * Reads and decodes the snapshot table of the image on `file`: entries are
 * variable-sized, so it reads in growing steps, at most QEMU's 64 MiB limit.
 * Returns the entries and the table's size, or what is wrong.
 */
export async function readSnapshotTableFrom(
  file: BlockNode,
  h: Qcow2Header,
): Promise<{ entries: SnapshotEntry[]; size: number } | string> {
  if (h.nbSnapshots === 0) return { entries: [], size: 0 };
  const limit = Math.max(0, Math.min(MAX_SNAPSHOT_TABLE, file.length - h.snapshotsOffset));
  let want = Math.min(h.nbSnapshots * 1024, limit);
  for (;;) {
    const buf = new Uint8Array(want);
    await file.pread(h.snapshotsOffset, buf);
    const parsed = parseSnapshotTable(buf, h.nbSnapshots);
    if (typeof parsed !== "string" || want >= limit) return parsed;
    want = Math.min(limit, want * 4);
  }
}

/** Reads the open image's snapshot table; a damaged table is a corruption error. */
export async function readSnapshotTable(st: Qcow2State): Promise<SnapshotEntry[]> {
  const parsed = await readSnapshotTableFrom(st.file, st.header);
  if (typeof parsed === "string") throw new CorruptImageError(`Corrupt qcow2 image: ${parsed}`, { node: st.node.name });
  return parsed.entries;
}

/** The snapshots as the driver interface lists them. */
export async function listSnapshots(st: Qcow2State): Promise<SnapshotInfo[]> {
  return (await readSnapshotTable(st)).map((e) => {
    const info: SnapshotInfo = {
      id: e.id,
      name: e.name,
      vmStateSize: e.vmStateSize,
      dateSec: e.dateSec,
      dateNsec: e.dateNsec,
      vmClockNsec: e.vmClockNsec,
    };
    if (e.icount !== undefined) info.icount = e.icount;
    return info;
  });
}
