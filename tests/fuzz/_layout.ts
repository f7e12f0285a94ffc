/**
 * Where a qcow2 image keeps its structures, read straight from the bytes
 * (qcow2.txt offsets, no driver code), so the fuzzer and the overlap tests
 * can aim mutations at them without trusting the code under test. Every
 * read is bounds-checked: a seed is well formed, but a layout may be taken
 * of a mutated image too.
 *
 * @module
 */

/** One table or block in the file. */
export interface Region {
  /** What it is ("l1", "l2", "refcount-table", "refcount-block", "snapshot-table", "snapshot-l1", "snapshot-l2", "bitmap-directory", "bitmap-table", "compressed"). */
  kind: string;
  /** Byte offset in the image file. */
  offset: number;
  /** Byte length. */
  length: number;
}

/** The structures of one image. */
export interface Layout {
  /** Image file length. */
  fileLength: number;
  /** Format version. */
  version: number;
  /** Cluster size. */
  cs: number;
  /** log2 of the cluster size. */
  clusterBits: number;
  /** Bytes per L2 entry (8, or 16 with extended L2). */
  l2EntryBytes: number;
  /** Refcount width in bits. */
  refcountBits: number;
  /** Header length (end of the fixed part). */
  headerLength: number;
  /** Header extensions (offset of the 8-byte extension header, type, data length). */
  extensions: { offset: number; type: number; length: number }[];
  /** Every table found. */
  regions: Region[];
}

const HI = 2 ** 32;

function u32(d: DataView, at: number): number {
  return at + 4 <= d.byteLength ? d.getUint32(at) : 0;
}

function u64(d: DataView, at: number): number {
  return at + 8 <= d.byteLength ? u32(d, at) * HI + u32(d, at + 4) : 0;
}

function entryOffset(d: DataView, at: number): number {
  return at + 8 <= d.byteLength ? (d.getUint32(at) & 0x00ffffff) * HI + (d.getUint32(at + 4) & 0xfffffe00) >>> 0 : 0;
}

function entryOffsetExact(d: DataView, at: number): number {
  return (d.getUint32(at) & 0x00ffffff) * HI + ((d.getUint32(at + 4) & 0xfffffe00) >>> 0);
}

/** Finds the structures of the qcow2 image in `img`. */
export function layoutOf(img: Uint8Array): Layout {
  const d = new DataView(img.buffer, img.byteOffset, img.byteLength);
  const version = u32(d, 4);
  // A mutated header may say anything: fall back to sane values where it does not parse.
  const rawBits = u32(d, 20);
  const clusterBits = rawBits >= 9 && rawBits <= 21 ? rawBits : 16;
  const cs = 2 ** clusterBits;
  const headerLength = version >= 3 ? Math.min(u32(d, 100), cs) : 72;
  const incompat = version >= 3 ? u32(d, 76) : 0;
  const extL2 = (incompat & 16) !== 0;
  const order = version >= 3 ? u32(d, 96) : 4;
  const refcountBits = order <= 6 ? 2 ** order : 16;
  const out: Layout = {
    fileLength: img.length,
    version,
    cs,
    clusterBits,
    l2EntryBytes: extL2 ? 16 : 8,
    refcountBits,
    headerLength,
    extensions: [],
    regions: [],
  };
  const inFile = (off: number, len: number) => off > 0 && off % 512 === 0 && off + len <= img.length;
  const add = (kind: string, offset: number, length: number) => {
    if (inFile(offset, length)) out.regions.push({ kind, offset, length });
  };
  // Extensions.
  let at = headerLength;
  const extEnd = Math.min(cs, img.length);
  while (at + 8 <= extEnd) {
    const type = u32(d, at);
    const len = u32(d, at + 4);
    if (type === 0) break;
    out.extensions.push({ offset: at, type, length: len });
    at += 8 + Math.ceil(len / 8) * 8;
  }
  const l2Seen = new Set<number>();
  const addL1 = (kind: "l1" | "snapshot-l1", off: number, entries: number) => {
    if (!inFile(off, entries * 8) || entries > 1 << 22) return;
    add(kind, off, entries * 8);
    for (let i = 0; i < entries; i++) {
      const l2 = entryOffsetExact(d, off + i * 8);
      if (!l2 || l2Seen.has(l2) || !inFile(l2, cs) || l2 % cs) continue;
      l2Seen.add(l2);
      add(kind === "l1" ? "l2" : "snapshot-l2", l2, cs);
      // Compressed clusters the L2 table points at.
      for (let e = 0; e < cs; e += out.l2EntryBytes) {
        const hi = d.getUint32(l2 + e);
        if (!(hi & 0x40000000)) continue;
        const x = 62 - (clusterBits - 8);
        const host = (hi & ((1 << (x - 32)) - 1)) * HI + d.getUint32(l2 + e + 4);
        const sectors = (hi >>> (x - 32) & ((1 << (clusterBits - 8)) - 1)) + 1;
        const len = Math.min(sectors * 512 - (host % 512), img.length - host);
        if (host > 0 && len > 0) out.regions.push({ kind: "compressed", offset: host, length: len });
      }
    }
  };
  addL1("l1", u64(d, 40), u32(d, 36));
  const rtOff = u64(d, 48);
  const rtClusters = u32(d, 56);
  if (inFile(rtOff, rtClusters * cs)) {
    add("refcount-table", rtOff, rtClusters * cs);
    for (let i = 0; i < (rtClusters * cs) / 8; i++) {
      const rb = entryOffset(d, rtOff + i * 8);
      if (rb && rb % cs === 0) add("refcount-block", rb, cs);
    }
  }
  const nbSnapshots = u32(d, 60);
  const snOff = u64(d, 64);
  if (nbSnapshots && nbSnapshots < 1024 && inFile(snOff, 40)) {
    let p = snOff;
    for (let i = 0; i < nbSnapshots && p + 40 <= img.length; i++) {
      const l1Off = u64(d, p);
      const l1Size = u32(d, p + 8);
      const idSize = d.getUint16(p + 12);
      const nameSize = d.getUint16(p + 14);
      const extra = u32(d, p + 36);
      addL1("snapshot-l1", l1Off, l1Size);
      p += Math.ceil((40 + extra + idSize + nameSize) / 8) * 8;
    }
    add("snapshot-table", snOff, Math.min(p, img.length) - snOff);
  }
  const bm = out.extensions.find((e) => e.type === 0x23852875);
  if (bm && bm.length >= 24) {
    const x = bm.offset + 8;
    const count = u32(d, x);
    const dirSize = u64(d, x + 8);
    const dirOff = u64(d, x + 16);
    if (inFile(dirOff, dirSize)) {
      add("bitmap-directory", dirOff, dirSize);
      let p = dirOff;
      for (let i = 0; i < count && p + 24 <= dirOff + dirSize; i++) {
        const tOff = u64(d, p);
        const tSize = u32(d, p + 8);
        add("bitmap-table", tOff, tSize * 8);
        const nameSize = d.getUint16(p + 18);
        const extra = u32(d, p + 20);
        p += Math.ceil((24 + extra + nameSize) / 8) * 8;
      }
    }
  }
  return out;
}

/** The first region of `kind`, if any. */
export function regionOf(l: Layout, kind: string): Region | undefined {
  return l.regions.find((r) => r.kind === kind);
}
