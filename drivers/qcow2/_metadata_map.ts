/**
 * Where a qcow2 image keeps its metadata (the `metadataExtents` driver
 * callback, drawn by `map --output=svg`): the header cluster, the active
 * L1 table and its L2 tables, the refcount table and blocks, the snapshot
 * table with each snapshot's L1 (and the L2 tables only snapshots use), the
 * bitmap directory, tables and data, and the LUKS header. The active tables
 * come from the open image's state (cached metadata included); the rest is
 * read from the file, with every offset and size checked against the file
 * before it is trusted, and bounded by QEMU's limits.
 *
 * @module
 */

import type { MetadataExtent } from "../../core/types.ts";
import { parseBitmapDirectory } from "./_tables.ts";
import { entryOffset, HI } from "./_entries.ts";
import { readSnapshotTableFrom } from "./_snapshot.ts";
import type { Qcow2State } from "./_state.ts";
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS, EXT_CRYPTO, MAX_L1_BYTES } from "./header.ts";

/** QEMU's limits: a snapshot table of at most 64 MiB, a bitmap directory of at most 64 MiB. */
const MAX_TABLE_BYTES = 64 * 1024 * 1024;

/** Lists the image's metadata clusters, sorted by offset. */
export async function metadataExtents(st: Qcow2State): Promise<MetadataExtent[]> {
  const cs = st.cs;
  const h = st.header;
  const fileLength = st.file.length;
  const out: MetadataExtent[] = [];
  const clusters = (n: number) => Math.max(cs, Math.ceil(n / cs) * cs);
  const inFile = (off: number, len: number) => off > 0 && off + len <= fileLength + cs;
  const add = (kind: string, offset: number, length: number, label?: string) => {
    if (offset === 0 && kind !== "header") return;
    out.push(label === undefined ? { kind, offset, length } : { kind, offset, length, label });
  };
  const read = async (offset: number, length: number) => {
    const buf = new Uint8Array(Math.max(0, Math.min(length, fileLength - offset)));
    if (buf.length) await st.file.pread(offset, buf);
    return buf;
  };

  add("header", 0, cs, "header and extensions");
  if (st.l1Size) add("l1", h.l1TableOffset, clusters(st.l1Size * 8), "active L1 table");
  const activeL2 = new Set<number>();
  for (let i = 0; i < st.l1Size; i++) {
    const off = st.l1Offset(i);
    if (!off) continue;
    activeL2.add(off);
    add("l2", off, cs, `L2 table ${i}`);
  }
  add("refcount-table", h.refcountTableOffset, h.refcountTableClusters * cs, "refcount table");
  for (let i = 0; i < st.reftable.length; i++) {
    if (st.reftable[i]) add("refcount-block", st.reftable[i], cs, `refcount block ${i}`);
  }

  if (h.nbSnapshots > 0 && inFile(h.snapshotsOffset, 0)) {
    const parsed = await readSnapshotTableFrom(st.file, h);
    if (typeof parsed !== "string") {
      add("snapshot-table", h.snapshotsOffset, clusters(parsed.size), `snapshot table (${h.nbSnapshots})`);
      const snapshotL2 = new Set<number>();
      for (const sn of parsed.entries) {
        const bytes = sn.l1Size * 8;
        if (bytes > MAX_L1_BYTES || !inFile(sn.l1Offset, bytes) || sn.l1Offset % cs) continue;
        add("snapshot-l1", sn.l1Offset, clusters(bytes), `snapshot '${sn.name}' L1 table`);
        const l1 = await read(sn.l1Offset, bytes);
        const v = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
        for (let at = 0; at + 8 <= l1.length; at += 8) {
          const off = entryOffset(v, at);
          if (!off || activeL2.has(off) || snapshotL2.has(off) || off % cs || !inFile(off, cs)) continue;
          snapshotL2.add(off);
          add("snapshot-l2", off, cs, `snapshot '${sn.name}' L2 table ${at / 8}`);
        }
      }
    }
  }

  const bm = h.extensions.find((e) => e.type === EXT_BITMAPS);
  if (bm && h.autoclearFeatures & AUTOCLEAR_BITMAPS && bm.data.length >= 24) {
    const v = new DataView(bm.data.buffer, bm.data.byteOffset, bm.data.byteLength);
    const count = v.getUint32(0);
    const dirSize = v.getUint32(8) * HI + v.getUint32(12);
    const dirOffset = v.getUint32(16) * HI + v.getUint32(20);
    if (count && dirSize <= MAX_TABLE_BYTES && inFile(dirOffset, dirSize)) {
      add("bitmap-directory", dirOffset, clusters(dirSize), `bitmap directory (${count})`);
      const dir = parseBitmapDirectory(await read(dirOffset, dirSize), count);
      if (typeof dir !== "string") {
        for (const b of dir) {
          const bytes = b.tableSize * 8;
          if (bytes > MAX_TABLE_BYTES || !inFile(b.tableOffset, bytes)) continue;
          add("bitmap-table", b.tableOffset, clusters(bytes), `bitmap '${b.name}' table`);
          const table = await read(b.tableOffset, bytes);
          const tv = new DataView(table.buffer, table.byteOffset, table.byteLength);
          for (let at = 0; at + 8 <= table.length; at += 8) {
            const off = entryOffset(tv, at);
            if (off && inFile(off, cs)) add("bitmap-data", off, cs, `bitmap '${b.name}' data ${at / 8}`);
          }
        }
      }
    }
  }

  const crypto = h.extensions.find((e) => e.type === EXT_CRYPTO);
  if (crypto && crypto.data.length >= 16) {
    const v = new DataView(crypto.data.buffer, crypto.data.byteOffset, crypto.data.byteLength);
    const off = v.getUint32(0) * HI + v.getUint32(4);
    const len = v.getUint32(8) * HI + v.getUint32(12);
    if (inFile(off, len)) add("crypto-header", off, clusters(len), "LUKS header");
  }
  return out.sort((a, b) => a.offset - b.offset || a.kind.localeCompare(b.kind));
}
