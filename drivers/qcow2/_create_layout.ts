/**
 * Where `createQcow2` puts every cluster, as `qemu-img create` does
 * (qcow2_co_create, then qcow2_co_truncate to the virtual size), using the
 * allocator model in `_create_alloc.ts`: header, refcount table and first
 * refcount block in clusters 0-2, the L1 table from cluster 3, then for
 * `preallocation=metadata` one L2 table and its data clusters at a time
 * (preallocate_co), or for `falloc`/`full` a refcount area sized for the
 * whole image, the data clusters after it, and the L2 tables wherever the
 * allocator finds room (the freed old refcount table first).
 *
 * Private to `create.ts`.
 *
 * @module
 */

import { l2EntrySize, writeRefcount } from "./_entries.ts";
import { QemuAllocator } from "./_create_alloc.ts";

const INT_MAX = 2 ** 31 - 1;
const COPIED_HI = 0x80000000;

/** What the layout needs to know about the image. */
export interface LayoutInput {
  /** Virtual size. */
  size: number;
  /** Cluster size. */
  clusterSize: number;
  /** Refcount entry width in bits. */
  refcountBits: number;
  /** 16-byte L2 entries. */
  extendedL2: boolean;
  /** Preallocation mode. */
  preallocation: "off" | "metadata" | "falloc" | "full";
  /** Guest data lives in an external data file (host offset = guest offset). */
  dataFile: boolean;
  /** Bytes of LUKS header to allocate after everything else (0: not encrypted). */
  cryptoBytes?: number;
}

/** The clusters to write. */
export interface Layout {
  /** Entries in the L1 table. */
  l1Size: number;
  /** Byte offset of the L1 table (0 when empty). */
  l1Offset: number;
  /** The L1 table (`l1Size * 8` bytes). */
  l1: Uint8Array;
  /** Byte offset of the refcount table. */
  reftableOffset: number;
  /** Refcount table length in clusters. */
  reftableClusters: number;
  /** Refcount tables (replaced ones first, then the current one): byte offset and content. */
  tables: [number, Uint8Array][];
  /** Refcount blocks, encoded on demand by `encodeBlock`. */
  blocks: RefblockPlan[];
  /** Encodes a refcount block into `buf` (one cluster). */
  encodeBlock(plan: RefblockPlan, buf: Uint8Array): void;
  /** Preallocated L2 tables, encoded on demand by {@linkcode encodeL2}. */
  l2: L2Plan[];
  /** Preallocated data clusters in the image file: byte range. */
  data?: { offset: number; length: number };
  /** Clusters of the LUKS header (encrypted images). */
  crypto?: { offset: number; clusters: number };
}

/** One refcount block: where it goes and which refcount table entry it is. */
export interface RefblockPlan {
  /** Byte offset of the block. */
  offset: number;
  /** Its index in the refcount table. */
  index: number;
}

/** One preallocated L2 table: where it goes and the runs of entries it maps. */
export interface L2Plan {
  /** Byte offset of the table. */
  offset: number;
  /** Runs of entries: first entry index, first host cluster, count. */
  runs: [number, number, number][];
}

/**
 * Encodes an L2 table into `buf` (one cluster, zeroed here): entries with
 * COPIED and consecutive host offsets per run.
 */
export function encodeL2(plan: L2Plan, buf: Uint8Array, cs: number, extendedL2: boolean): void {
  buf.fill(0);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const step = l2EntrySize(extendedL2);
  for (const [first, host, n] of plan.runs) {
    for (let k = 0; k < n; k++) putEntry(view, (first + k) * step, (host + k) * cs);
  }
}

function putEntry(view: DataView, at: number, offset: number): void {
  view.setUint32(at, (COPIED_HI | Math.floor(offset / 2 ** 32)) >>> 0);
  view.setUint32(at + 4, offset % 2 ** 32);
}

function encodeTable(entries: number[], clusters: number, cs: number): Uint8Array {
  const out = new Uint8Array(clusters * cs);
  const view = new DataView(out.buffer);
  entries.forEach((cluster, idx) => {
    if (!cluster || idx * 8 >= out.length) return;
    view.setUint32(idx * 8, Math.floor((cluster * cs) / 2 ** 32));
    view.setUint32(idx * 8 + 4, (cluster * cs) % 2 ** 32);
  });
  return out;
}

/** Computes the metadata of a new image. */
export function planLayout(o: LayoutInput): Layout {
  const cs = o.clusterSize;
  const entryBytes = l2EntrySize(o.extendedL2);
  const l2Entries = cs / entryBytes;
  const guestClusters = Math.ceil(o.size / cs);
  const l1Size = Math.ceil(guestClusters / l2Entries);
  const a = new QemuAllocator(cs, o.refcountBits);
  a.alloc(3); // header, refcount table, first refcount block
  const l1Cluster = l1Size ? a.alloc(Math.ceil((l1Size * 8) / cs)) : 0;
  const l1 = new Uint8Array(l1Size * 8);
  const l1View = new DataView(l1.buffer);
  const l2: L2Plan[] = [];
  let data: Layout["data"];
  const newL2 = (i: number, cluster: number): L2Plan => {
    putEntry(l1View, i * 8, cluster * cs);
    const plan: L2Plan = { offset: cluster * cs, runs: [] };
    l2.push(plan);
    return plan;
  };

  if (o.preallocation === "metadata" || (o.preallocation !== "off" && o.dataFile)) {
    // preallocate_co: per L2 table, the table then its data (limited to INT_MAX bytes a chunk).
    const maxChunk = Math.floor(INT_MAX / cs);
    let first = -1;
    let end = 0;
    for (let i = 0; i < l1Size; i++) {
      const plan = newL2(i, a.alloc(1));
      const g0 = i * l2Entries;
      const gEnd = Math.min(guestClusters, g0 + l2Entries);
      for (let g = g0; g < gEnd;) {
        const n = Math.min(maxChunk, gEnd - g);
        // With an external data file, host offsets are guest offsets.
        const host = o.dataFile ? g : a.alloc(n);
        if (!o.dataFile) {
          if (first < 0) first = host;
          end = Math.max(end, host + n);
        }
        plan.runs.push([g - g0, host, n]);
        g += n;
      }
    }
    if (first >= 0) data = { offset: first * cs, length: (end - first) * cs };
  } else if (o.preallocation !== "off") {
    // qcow2_co_truncate with falloc/full: a refcount area sized for the data
    // and its L2 tables, then the data, then the L2 tables where they fit.
    const dataStart = a.refcountArea(a.end, guestClusters + Math.ceil(guestClusters / l2Entries) + 1, true);
    a.allocAt(dataStart, guestClusters);
    if (guestClusters) data = { offset: dataStart * cs, length: guestClusters * cs };
    for (let i = 0; i < l1Size; i++) {
      const plan = newL2(i, a.alloc(1));
      const g0 = i * l2Entries;
      plan.runs.push([0, dataStart + g0, Math.min(guestClusters, g0 + l2Entries) - g0]);
    }
  }

  // qcow2_set_up_encryption allocates the LUKS header last (after the truncate to the virtual size).
  const cryptoClusters = Math.ceil((o.cryptoBytes ?? 0) / cs);
  const crypto = cryptoClusters ? { offset: a.alloc(cryptoClusters) * cs, clusters: cryptoClusters } : undefined;

  // Refcount table and blocks; replaced tables first (QEMU leaves their bytes).
  const order = Math.log2(o.refcountBits);
  const perTableCluster = cs / 8;
  const stale: [number, Uint8Array][] = a.stale.map((t) => [t.cluster * cs, encodeTable(t.entries, t.clusters, cs)]);
  const reftable = encodeTable(a.table, a.tableEntries / perTableCluster, cs);
  const last = a.end;
  const blocks: RefblockPlan[] = [];
  a.table.forEach((cluster, index) => {
    if (cluster && index < a.tableEntries) blocks.push({ offset: cluster * cs, index });
  });
  const encodeBlock = (plan: RefblockPlan, buf: Uint8Array): void => {
    buf.fill(0);
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const first = plan.index * a.perBlock;
    for (let k = 0; k < a.perBlock && first + k < last; k++) {
      const r = a.refcount(first + k);
      if (r) writeRefcount(view, 2 ** order, k, r);
    }
  };
  return {
    l1Size,
    l1Offset: l1Cluster * cs,
    l1,
    reftableOffset: a.tableCluster * cs,
    reftableClusters: a.tableEntries / perTableCluster,
    tables: [...stale, [a.tableCluster * cs, reftable]],
    blocks,
    encodeBlock,
    l2,
    data,
    crypto,
  };
}
