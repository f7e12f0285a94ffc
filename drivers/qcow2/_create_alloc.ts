/**
 * A model of QEMU's qcow2 cluster allocator as image creation exercises it
 * (block/qcow2-refcount.c: alloc_clusters_noref, update_refcount,
 * alloc_refcount_block, qcow2_refcount_area), so that `createQcow2` places
 * every cluster where `qemu-img create` does: the free-cluster cursor, the
 * restart (-EAGAIN) after a refcount block is hooked up, self-describing
 * refcount blocks, and the refcount table growth into a new "refcount area"
 * after the blocks in use, with the old table freed (and left unzeroed).
 *
 * All refcounts here are 0 or 1: creation never shares a cluster.
 *
 * Private to `create.ts`.
 *
 * @module
 */

const AGAIN = -1;

/** A refcount table that was replaced and freed: QEMU leaves its bytes on disk. */
export interface StaleTable {
  /** First cluster of the table. */
  cluster: number;
  /** Table length in clusters. */
  clusters: number;
  /** Its entries (cluster index of each refcount block, 0 = none). */
  entries: number[];
}

/** The allocator state of a new image. */
export class QemuAllocator {
  /** Cluster size. */
  readonly cs: number;
  /** Refcounts per refcount block. */
  readonly perBlock: number;
  /** Refcount table entries: cluster index of each refcount block (0 = none). */
  table: number[] = [];
  /** First cluster of the refcount table. */
  tableCluster = 1;
  /** Entries the refcount table has room for. */
  tableEntries: number;
  /** Replaced tables, in the order they were freed. */
  readonly stale: StaleTable[] = [];
  #rc = new Uint8Array(1024);
  #rcLength = 0;
  #free = 0;

  /**
   * Starts as qcow2_co_create leaves an image before its first allocation:
   * a one-cluster refcount table in cluster 1 pointing at a refcount block
   * in cluster 2, and no refcounts yet.
   */
  constructor(cs: number, refcountBits: number) {
    this.cs = cs;
    this.perBlock = (cs * 8) / refcountBits;
    this.tableEntries = cs / 8;
    this.table[0] = 2;
  }

  /** The refcount of `cluster` as stored on disk (0 without a refcount block). */
  refcount(cluster: number): number {
    const i = Math.floor(cluster / this.perBlock);
    if (i >= this.tableEntries || !this.table[i]) return 0;
    return cluster < this.#rcLength ? this.#rc[cluster] : 0;
  }

  /** One past the last cluster with a refcount (QEMU's qcow2_get_last_cluster + 1). */
  get end(): number {
    let c = this.#rcLength;
    while (c > 0 && !this.refcount(c - 1)) c--;
    return c;
  }

  /** qcow2_alloc_clusters: `n` contiguous clusters; returns the first. */
  alloc(n: number): number {
    for (;;) {
      const at = this.#noref(n);
      if (this.#update(at, n, 1) !== AGAIN) return at;
    }
  }

  /** qcow2_alloc_clusters_at for clusters known to be free. */
  allocAt(at: number, n: number): void {
    while (this.#update(at, n, 1) === AGAIN);
  }

  /**
   * qcow2_refcount_area: refcount blocks for everything up to `start +
   * extra` clusters (plus themselves) and a new table, placed from `start`;
   * the old table is freed. With `exact` false the table gets room to grow.
   * Returns the first cluster after the area.
   */
  refcountArea(start: number, extra: number, exact: boolean, newIndex = 0, newBlock = 0): number {
    const per = this.perBlock;
    const total = refblockCount(start + extra, this.cs, per, !exact);
    const areaIndex = Math.floor(start / per);
    const perTableCluster = this.cs / 8;
    let size = exact ? total : total + Math.ceil(total / 2);
    size = Math.ceil(size / perTableCluster) * perTableCluster;
    const table = this.table.slice(0, size);
    if (newBlock) table[newIndex] = newBlock;
    let at = start;
    for (let i = areaIndex; i < total; i++) if (!table[i]) table[i] = at++;
    const tableCluster = at;
    const end = tableCluster + size / perTableCluster;
    for (let c = start; c < end; c++) this.#set(c, 1);
    const old: StaleTable = { cluster: this.tableCluster, clusters: this.tableEntries / perTableCluster, entries: this.table.slice() };
    this.table = table;
    this.tableCluster = tableCluster;
    this.tableEntries = size;
    this.stale.push(old);
    this.#update(old.cluster, old.clusters, -1);
    return end;
  }

  #set(cluster: number, value: number): void {
    if (cluster >= this.#rc.length) {
      const next = new Uint8Array(Math.max(cluster + 1, this.#rc.length * 2));
      next.set(this.#rc);
      this.#rc = next;
    }
    this.#rc[cluster] = value;
    if (cluster >= this.#rcLength) this.#rcLength = cluster + 1;
  }

  #noref(n: number): number {
    for (let i = 0; i < n; i++) if (this.refcount(this.#free++) !== 0) i = -1;
    return this.#free - n;
  }

  #update(start: number, n: number, add: number): number {
    let oldIndex = -1;
    for (let c = start; c < start + n; c++) {
      const index = Math.floor(c / this.perBlock);
      if (index !== oldIndex && this.#allocBlock(c) === AGAIN) {
        // Restart the search at the same clusters, after undoing this pass.
        if (this.#free > start) this.#free = start;
        if (c > start) this.#update(start, c - start, -add);
        return AGAIN;
      }
      oldIndex = index;
      const v = (c < this.#rcLength ? this.#rc[c] : 0) + add;
      this.#set(c, v);
      if (v === 0 && c < this.#free) this.#free = c;
    }
    return 0;
  }

  #allocBlock(cluster: number): number {
    const per = this.perBlock;
    const index = Math.floor(cluster / per);
    if (index < this.tableEntries && this.table[index]) return 0;
    const block = this.#noref(1);
    if (Math.floor(block / per) === index) this.#set(block, 1); // describes itself
    else if (this.#update(block, 1, 1) === AGAIN) return AGAIN;
    if (index < this.tableEntries) {
      this.table[index] = block;
      return AGAIN;
    }
    const used = Math.ceil(Math.max(cluster + 1, block + 1) / per);
    this.refcountArea(used * per, 0, false, index, block);
    return AGAIN;
  }
}

/** QEMU's qcow2_refcount_metadata_size fixed point: refcount blocks for `clusters` plus themselves. */
export function refblockCount(clusters: number, cs: number, perBlock: number, generous: boolean): number {
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
    if (n === last && generous) {
      clusters += Math.ceil(table / 2);
      n = 0;
      generous = false;
    }
  } while (n !== last);
  return blocks;
}
