/**
 * Bounded metadata caches (QEMU's Qcow2Cache) for L2 tables and refcount
 * blocks: one cluster-sized buffer per entry, keyed by its offset in the
 * image file, least-recently-used eviction of clean entries, dirty tracking.
 *
 * The cache never writes anything itself: when every entry is dirty it grows
 * past its capacity and reports {@linkcode MetaCache.overfull}; the driver
 * then writes the caches back in dependency order (refcount blocks, flush,
 * L2 tables, L1) and calls {@linkcode MetaCache.trim}. That keeps the
 * ordering rules in one place and lets many allocations share one flush.
 *
 * @module
 */

/** One cached table. */
export interface CacheEntry {
  /** Offset of the table in the image file. */
  readonly offset: number;
  /** The table (one cluster). */
  readonly buf: Uint8Array;
  /** Big-endian view of {@linkcode CacheEntry.buf}. */
  readonly view: DataView;
  /** Changed in memory and not yet written. */
  dirty: boolean;
  /** Newly allocated table that is not yet on disk (must be written before it is hooked in). */
  isNew: boolean;
  /** LRU stamp. */
  used: number;
  /** In use by a metadata operation: never evicted. */
  pins: number;
}

/** An LRU cache of cluster-sized metadata tables. */
export class MetaCache {
  /** Maximum number of entries kept (dirty entries may exceed it until written back). */
  readonly capacity: number;
  #map = new Map<number, CacheEntry>();
  #tick = 0;
  #dirtyCount = 0;

  /** Creates a cache holding up to `capacity` tables (at least 2). */
  constructor(capacity: number) {
    this.capacity = Math.max(2, capacity);
  }

  /** Number of cached tables. */
  get size(): number {
    return this.#map.size;
  }

  /** Looks up a table and marks it recently used. */
  get(offset: number): CacheEntry | undefined {
    const e = this.#map.get(offset);
    if (e) e.used = ++this.#tick;
    return e;
  }

  /**
   * Adds a table; if one is already cached at `offset` (a concurrent load won
   * the race) the cached one is kept and returned. Evicts clean LRU entries
   * beyond the capacity.
   */
  insert(offset: number, buf: Uint8Array, dirty = false, isNew = false): CacheEntry {
    const old = this.#map.get(offset);
    if (old) {
      old.used = ++this.#tick;
      return old;
    }
    const e: CacheEntry = {
      offset,
      buf,
      view: new DataView(buf.buffer, buf.byteOffset, buf.byteLength),
      dirty,
      isNew,
      used: ++this.#tick,
      pins: 0,
    };
    this.#map.set(offset, e);
    if (dirty) this.#dirtyCount++;
    this.trim(e);
    return e;
  }

  /** Marks an entry dirty (it stays cached until written back). */
  markDirty(e: CacheEntry): void {
    if (!e.dirty) {
      e.dirty = true;
      this.#dirtyCount++;
    }
  }

  /** Marks an entry clean after it was written. */
  markClean(e: CacheEntry): void {
    if (e.dirty) {
      e.dirty = false;
      this.#dirtyCount--;
    }
    e.isNew = false;
  }

  /** Number of dirty entries. */
  get dirtyCount(): number {
    return this.#dirtyCount;
  }

  /** Dirty entries, in offset order (sequential writes). */
  dirtyEntries(): CacheEntry[] {
    if (this.#dirtyCount === 0) return [];
    const out: CacheEntry[] = [];
    for (const e of this.#map.values()) if (e.dirty) out.push(e);
    return out.sort((a, b) => a.offset - b.offset);
  }

  /** More entries than the capacity are cached (all evictable ones are dirty). */
  get overfull(): boolean {
    return this.#map.size > this.capacity;
  }

  /** Evicts clean least-recently-used entries until within capacity (never `keep`). */
  trim(keep?: CacheEntry): void {
    while (this.#map.size > this.capacity) {
      let victim: CacheEntry | undefined;
      for (const e of this.#map.values()) {
        if (e.dirty || e.pins > 0 || e === keep) continue;
        if (!victim || e.used < victim.used) victim = e;
      }
      if (!victim) return;
      this.#map.delete(victim.offset);
    }
  }

  /** Drops an entry (the table was freed). */
  drop(offset: number): void {
    const e = this.#map.get(offset);
    if (!e) return;
    if (e.dirty) this.#dirtyCount--;
    this.#map.delete(offset);
  }

  /** Drops every entry. */
  clear(): void {
    this.#map.clear();
    this.#dirtyCount = 0;
  }
}
