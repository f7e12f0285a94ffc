/**
 * Where `createQcow2` puts every cluster, computed the way QEMU's allocator
 * places them during `qcow2_co_create` + `qcow2_co_truncate`: header,
 * refcount table and first refcount block in clusters 0-2, the L1 table
 * from cluster 3, refcount blocks right after the range whose allocation
 * needed them, and for preallocation either one L2 table then its data
 * clusters at a time (`metadata`), or (`falloc`, `full`) a new refcount
 * area sized for the whole image followed by the data clusters, with L2
 * tables in the freed old refcount table and after the data
 * (QEMU's qcow2_refcount_area).
 *
 * Private to `create.ts`.
 *
 * @module
 */

import { setRefcount } from "./_check_tables.ts";

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
  /** Refcount table and blocks: byte offset and content. */
  tables: [number, Uint8Array][];
  /** Preallocated L2 tables, encoded on demand by {@linkcode encodeL2}. */
  l2: L2Plan[];
  /** Preallocated data clusters in the image file: byte range. */
  data?: { offset: number; length: number };
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
  const step = extendedL2 ? 16 : 8;
  for (const [first, host, n] of plan.runs) {
    for (let k = 0; k < n; k++) putEntry(view, (first + k) * step, (host + k) * cs);
  }
}

/** Sequential cluster allocator with QEMU's refcount block placement. */
class Allocator {
  next = 0;
  reftable: number[] = [];
  reftableCluster = 1;
  reftableClusters = 1;
  readonly freed = new Set<number>();
  /** The table refcountArea replaced: QEMU frees it without zeroing it. */
  oldTable?: { cluster: number; clusters: number; entries: number[] };
  readonly perBlock: number;
  readonly cs: number;

  constructor(cs: number, refcountBits: number) {
    this.cs = cs;
    this.perBlock = (cs * 8) / refcountBits;
  }

  /** Allocates `n` contiguous clusters at the end. */
  alloc(n: number): number {
    const start = this.next;
    this.next += n;
    for (let c = start; c < start + n; c++) this.#cover(c);
    return start;
  }

  /** Allocates one cluster, reusing the lowest freed one first (QEMU's free_cluster_index). */
  allocOne(): number {
    if (this.freed.size === 0) return this.alloc(1);
    const c = Math.min(...this.freed);
    this.freed.delete(c);
    return c;
  }

  #cover(c: number): void {
    const idx = Math.floor(c / this.perBlock);
    if (idx >= (this.reftableClusters * this.cs) / 8) this.#growTable(idx);
    if (this.reftable[idx]) return;
    const b = this.next++;
    this.reftable[idx] = b;
    if (Math.floor(b / this.perBlock) !== idx) this.#cover(b);
  }

  #growTable(idx: number): void {
    // Not QEMU's placement (it rarely matters: 16 TB of file with 64k clusters).
    const old = this.reftableCluster;
    const oldClusters = this.reftableClusters;
    const clusters = Math.max(Math.ceil(((idx + 1) * 8) / this.cs), oldClusters * 2);
    this.reftableClusters = clusters;
    this.reftableCluster = this.next;
    this.next += clusters;
    for (let c = this.reftableCluster; c < this.reftableCluster + clusters; c++) this.#cover(c);
    for (let c = old; c < old + oldClusters; c++) this.freed.add(c);
  }

  /**
   * QEMU's qcow2_refcount_area: refcount blocks and a new exact-size table
   * covering `extra` more clusters after the current end; frees the old
   * table. Returns the first cluster after the area.
   */
  refcountArea(extra: number): number {
    const start = this.next;
    const blocks = refblockCount(start + extra, this.cs, this.perBlock);
    const perTableCluster = this.cs / 8;
    const tableClusters = Math.ceil(blocks / perTableCluster);
    this.oldTable = { cluster: this.reftableCluster, clusters: this.reftableClusters, entries: [...this.reftable] };
    let at = start;
    for (let i = Math.floor(start / this.perBlock); i < blocks; i++) if (!this.reftable[i]) this.reftable[i] = at++;
    const old = this.reftableCluster;
    const oldClusters = this.reftableClusters;
    this.reftableCluster = at;
    this.reftableClusters = tableClusters;
    this.next = at + tableClusters;
    for (let c = old; c < old + oldClusters; c++) this.freed.add(c);
    return this.next;
  }
}

/** QEMU's qcow2_refcount_metadata_size fixed point: refcount blocks for `clusters` plus themselves. */
function refblockCount(clusters: number, cs: number, perBlock: number): number {
  const perTableCluster = cs / 8;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / perBlock);
    table = Math.ceil(blocks / perTableCluster);
    n = clusters + blocks + table;
  } while (n !== last);
  return blocks;
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
  const entryBytes = o.extendedL2 ? 16 : 8;
  const l2Entries = cs / entryBytes;
  const guestClusters = Math.ceil(o.size / cs);
  const l1Size = Math.ceil(guestClusters / l2Entries);
  const a = new Allocator(cs, o.refcountBits);
  a.reftable[0] = 2; // header, refcount table, first refcount block
  a.alloc(3);
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
    for (let i = 0; i < l1Size; i++) {
      const plan = newL2(i, a.alloc(1));
      const g0 = i * l2Entries;
      const gEnd = Math.min(guestClusters, g0 + l2Entries);
      for (let g = g0; g < gEnd;) {
        const n = Math.min(maxChunk, gEnd - g);
        // With an external data file, host offsets are guest offsets.
        const host = o.dataFile ? g : a.alloc(n);
        if (first < 0 && !o.dataFile) first = host;
        plan.runs.push([g - g0, host, n]);
        g += n;
      }
    }
    if (first >= 0) data = { offset: first * cs, length: (a.next - first) * cs };
  } else if (o.preallocation !== "off") {
    const dataStart = a.refcountArea(guestClusters + Math.ceil(guestClusters / l2Entries) + 1);
    a.next = dataStart + guestClusters;
    if (guestClusters) data = { offset: dataStart * cs, length: guestClusters * cs };
    for (let i = 0; i < l1Size; i++) {
      const plan = newL2(i, a.allocOne());
      const g0 = i * l2Entries;
      plan.runs.push([0, dataStart + g0, Math.min(guestClusters, g0 + l2Entries) - g0]);
    }
  }

  // Refcount table and blocks: every allocated cluster not freed has refcount 1.
  const order = Math.log2(o.refcountBits);
  const stale: [number, Uint8Array][] = a.oldTable
    ? [[a.oldTable.cluster * cs, encodeTable(a.oldTable.entries, a.oldTable.clusters, cs)]]
    : [];
  const reftable = encodeTable(a.reftable, a.reftableClusters, cs);
  const blocks: [number, Uint8Array][] = [];
  a.reftable.forEach((cluster, idx) => {
    if (!cluster) return;
    const block = new Uint8Array(cs);
    const bv = new DataView(block.buffer);
    const first = idx * a.perBlock;
    for (let k = 0; k < a.perBlock && first + k < a.next; k++) {
      if (!a.freed.has(first + k)) setRefcount(block, bv, k, order, 1);
    }
    blocks.push([cluster * cs, block]);
  });
  return {
    l1Size,
    l1Offset: l1Cluster * cs,
    l1,
    reftableOffset: a.reftableCluster * cs,
    reftableClusters: a.reftableClusters,
    tables: [...stale, [a.reftableCluster * cs, reftable], ...blocks],
    l2,
    data,
  };
}
