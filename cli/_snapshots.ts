/**
 * Internal snapshots as `info` and `snapshot -l` print them (qemu-img's JSON
 * keys and table layout), from the node's snapshot list.
 *
 * @module
 */

import type { BlockNode } from "../core/node.ts";
import { sizeToStr } from "./_common.ts";

/** One snapshot, keyed as qemu-img info's JSON `snapshots` entries. */
export interface SnapshotInfo {
  /** Guest instructions executed (absent when not recorded). */
  icount?: number;
  /** Nanoseconds part of the VM clock. */
  "vm-clock-nsec": number;
  /** Snapshot name (tag). */
  name: string;
  /** Creation time, seconds since the epoch. */
  "date-sec": number;
  /** Creation time, nanoseconds part. */
  "date-nsec": number;
  /** Whole seconds of the VM clock. */
  "vm-clock-sec": number;
  /** Snapshot ID. */
  id: string;
  /** Size of the saved VM state. */
  "vm-state-size": number;
}

/** The image's internal snapshots with qemu-img info's JSON keys (empty when its format has none). */
export async function readSnapshots(node: BlockNode): Promise<SnapshotInfo[]> {
  return (await node.snapshots.list()).map((sn) => {
    const info: SnapshotInfo = {
      "vm-clock-nsec": sn.vmClockNsec % 1e9,
      name: sn.name,
      "date-sec": sn.dateSec,
      "date-nsec": sn.dateNsec,
      "vm-clock-sec": Math.floor(sn.vmClockNsec / 1e9),
      id: sn.id,
      "vm-state-size": sn.vmStateSize,
    };
    return sn.icount === undefined ? info : { icount: sn.icount, ...info };
  });
}

const pad2 = (n: number) => String(n).padStart(2, "0");

/** qemu's snapshot table: the header line and one line per snapshot (local time). */
export function formatSnapshotTable(snaps: SnapshotInfo[]): string {
  let s = `${"ID".padEnd(10)}${"TAG".padEnd(17)}${"VM SIZE".padStart(8)}${"DATE".padStart(20)}${"VM CLOCK".padStart(13)}${
    "ICOUNT".padStart(11)
  }\n`;
  for (const sn of snaps) {
    const d = new Date(sn["date-sec"] * 1000);
    const date = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${
      pad2(d.getSeconds())
    }`;
    const secs = sn["vm-clock-sec"];
    const clock = `${pad2(Math.floor(secs / 3600))}:${pad2(Math.floor(secs / 60) % 60)}:${pad2(secs % 60)}.${
      String(Math.floor(sn["vm-clock-nsec"] / 1e6) % 1000).padStart(3, "0")
    }`;
    const icount = sn.icount === undefined ? "" : String(sn.icount);
    s += `${sn.id.padEnd(9)} ${sn.name.padEnd(16)} ${sizeToStr(sn["vm-state-size"]).padStart(8)}${date.padStart(20)}${clock.padStart(13)}${
      icount.padStart(11)
    }\n`;
  }
  return s;
}
