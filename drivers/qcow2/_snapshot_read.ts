/**
 * Reading a qcow2 snapshot table with QEMU's limits (qcow2_do_read_snapshots),
 * tolerant where a repair needs it: what `check -r` and the overlap checks
 * read (they must see the table as it lies on disk, however damaged).
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import type { Qcow2Header } from "./header.ts";
import { MAX_SNAPSHOT_TABLE, parseSnapshotTable, SNAPSHOT_HEADER, type SnapshotEntry } from "./_tables.ts";

/** QEMU's limit on a snapshot's extra data (QCOW_MAX_SNAPSHOT_EXTRA_DATA). */
export const MAX_SNAPSHOT_EXTRA = 1024;

/** The snapshot table as QEMU's qcow2_do_read_snapshots reads it, with what a repair would change. */
export interface CheckedSnapshotTable {
  /** The entries (extra data past 1024 bytes cut off when repairing). */
  entries: SnapshotEntry[];
  /** Bytes of the table as it is on disk. */
  size: number;
  /** Entries whose extra data was cut to 1024 bytes, with the size they had (repair only). */
  extraDropped: [number, number][];
  /** Entries left out at the end because the table passed 64 MiB (repair only). */
  overhang: number;
}

/**
 * Reads the snapshot table with QEMU's limits (qcow2_do_read_snapshots):
 * more than 1024 bytes of extra data in an entry, or a table past 64 MiB, is
 * an error (with qemu-img's hint), or with `repair` is cut (extra data) or
 * dropped (the overhanging entries). Reads in windows, never more than the
 * file holds.
 */
export async function readSnapshotTableChecked(
  file: BlockNode,
  h: Qcow2Header,
  repair: boolean,
): Promise<CheckedSnapshotTable | { error: string; hint: string }> {
  const out: CheckedSnapshotTable = { entries: [], size: 0, extraDropped: [], overhang: 0 };
  if (!h.nbSnapshots) return out;
  const start = h.snapshotsOffset;
  const fileEnd = file.length;
  let win = new Uint8Array(0);
  let winAt = 0;
  const bytes = async (off: number, n: number): Promise<Uint8Array> => {
    if (off < winAt || off + n > winAt + win.length) {
      winAt = off;
      const len = Math.max(n, 1 << 16);
      win = new Uint8Array(Math.max(0, Math.min(len, fileEnd - off)));
      if (win.length) await file.pread(off, win);
      if (win.length < n) {
        // Past the end of the file reads as zeros, as QEMU's block layer reads it.
        const z = new Uint8Array(n);
        z.set(win);
        win = z;
      }
    }
    return win.subarray(off - winAt, off - winAt + n);
  };
  const pad8 = (n: number) => Math.ceil(n / 8) * 8;
  let offset = start;
  let length = 0;
  for (let i = 0; i < h.nbSnapshots; i++) {
    const entryStart = offset;
    offset = pad8(offset - start) + start;
    length = pad8(length);
    const hv = new DataView((await bytes(offset, SNAPSHOT_HEADER)).slice().buffer);
    const idSize = hv.getUint16(12);
    const nameSize = hv.getUint16(14);
    const extraSize = hv.getUint32(36);
    let keptExtra = extraSize;
    if (extraSize > MAX_SNAPSHOT_EXTRA) {
      if (!repair) {
        return {
          error: `Too much extra metadata in snapshot table entry ${i}`,
          hint: "You can force-remove this extra metadata with qemu-img check -r all",
        };
      }
      out.extraDropped.push([i, extraSize]);
      keptExtra = MAX_SNAPSHOT_EXTRA;
    }
    // The entry as the codec reads it, with the extra data it keeps.
    const whole = new Uint8Array(SNAPSHOT_HEADER + keptExtra + idSize + nameSize);
    whole.set(await bytes(offset, SNAPSHOT_HEADER + keptExtra));
    whole.set(await bytes(offset + SNAPSHOT_HEADER + extraSize, idSize + nameSize), SNAPSHOT_HEADER + keptExtra);
    new DataView(whole.buffer).setUint32(36, keptExtra);
    offset += SNAPSHOT_HEADER + extraSize + idSize + nameSize;
    length += SNAPSHOT_HEADER + keptExtra + idSize + nameSize;
    if (length > MAX_SNAPSHOT_TABLE || offset - start > 2 ** 31 - 1) {
      if (!repair) {
        return {
          error: "Snapshot table is too big",
          hint: `You can force-remove all ${h.nbSnapshots - i} overhanging snapshots with qemu-img check -r all`,
        };
      }
      out.overhang = h.nbSnapshots - i;
      offset = entryStart;
      break;
    }
    const parsed = parseSnapshotTable(whole, 1);
    if (typeof parsed === "string") return { error: parsed, hint: "" };
    out.entries.push(parsed.entries[0]);
  }
  out.size = offset - start;
  return out;
}
