/**
 * Internal snapshots of a qcow2 image, read from its snapshot table, for
 * `info` and `snapshot -l` (the fields and table layout of qemu-img).
 *
 * @module
 */

import type { BlockNode } from "../core/node.ts";
import type { Qcow2Header } from "../drivers/qcow2/header.ts";
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

const SNAPSHOT_HEADER = 40;
const decoder = new TextDecoder();

function u64(v: DataView, at: number): number {
  return v.getUint32(at) * 2 ** 32 + v.getUint32(at + 4);
}

/** Reads the snapshot table of a qcow2 format node (empty for other formats). */
export async function readSnapshots(node: BlockNode): Promise<SnapshotInfo[]> {
  const h = (node.instance as { header?: Qcow2Header }).header;
  const file = node.file;
  if (node.driver.name !== "qcow2" || !h || !file || !h.nbSnapshots) return [];
  const out: SnapshotInfo[] = [];
  let at = h.snapshotsOffset;
  for (let i = 0; i < h.nbSnapshots; i++) {
    const head = new Uint8Array(SNAPSHOT_HEADER);
    await file.pread(at, head);
    const v = new DataView(head.buffer);
    const idLen = v.getUint16(12);
    const nameLen = v.getUint16(14);
    const extraLen = v.getUint32(36);
    const rest = new Uint8Array(extraLen + idLen + nameLen);
    await file.pread(at + SNAPSHOT_HEADER, rest);
    const ev = new DataView(rest.buffer);
    const clock = u64(v, 24);
    const info: SnapshotInfo = {
      "vm-clock-nsec": clock % 1e9,
      name: decoder.decode(rest.subarray(extraLen + idLen)),
      "date-sec": v.getUint32(16),
      "date-nsec": v.getUint32(20),
      "vm-clock-sec": Math.floor(clock / 1e9),
      id: decoder.decode(rest.subarray(extraLen, extraLen + idLen)),
      "vm-state-size": extraLen >= 8 ? u64(ev, 0) : v.getUint32(32),
    };
    // icount is recorded when the extra data has room for it (all ones = unknown).
    if (extraLen >= 24 && !(ev.getUint32(16) === 0xffffffff && ev.getUint32(20) === 0xffffffff)) {
      out.push({ icount: u64(ev, 16), ...info });
    } else out.push(info);
    at = Math.ceil((at + SNAPSHOT_HEADER + rest.length) / 8) * 8;
  }
  return out;
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
