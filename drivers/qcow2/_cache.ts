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
 * Pin discipline (QEMU's `qcow2_cache_get`/`qcow2_cache_put`): code that
 * uses an entry across an `await` holds a pin, taken in the same synchronous
 * step as the lookup ({@linkcode MetaCache.acquire}, or `insert` with
 * `pin`), and gives it back with {@linkcode MetaCache.release}. A pinned
 * entry is never evicted. {@linkcode MetaCache.get} is for synchronous use
 * only: after any `await` its entry may be gone. Marking an entry dirty that
 * is no longer cached is a loud internal error, never a silently lost update.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";

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

  /**
   * Looks up a table and marks it recently used, without pinning it: use the
   * entry synchronously (before any `await`) or call
   * {@linkcode MetaCache.acquire} instead.
   */
  get(offset: number): CacheEntry | undefined {
    const e = this.#map.get(offset);
    if (e) e.used = ++this.#tick;
    return e;
  }

  /** Looks up a table and pins it in the same step; undefined when not cached. */
  acquire(offset: number): CacheEntry | undefined {
    const e = this.#map.get(offset);
    if (e) {
      e.used = ++this.#tick;
      e.pins++;
    }
    return e;
  }

  /** Gives back a pin taken by {@linkcode MetaCache.acquire} or `insert` with `pin`. */
  release(e: CacheEntry): void {
    if (e.pins <= 0) {
      throw new BlockError("EIO", `Internal error: metadata table at offset 0x${e.offset.toString(16)} released more often than pinned`);
    }
    e.pins--;
  }

  /**
   * Adds a table; if one is already cached at `offset` (a concurrent load won
   * the race) the cached one is kept and returned. With `pin`, the returned
   * entry is pinned in the same step. Evicts clean LRU entries beyond the
   * capacity.
   */
  insert(offset: number, buf: Uint8Array, opts: { dirty?: boolean; isNew?: boolean; pin?: boolean } = {}): CacheEntry {
    const old = this.#map.get(offset);
    if (old) {
      old.used = ++this.#tick;
      if (opts.pin) old.pins++;
      return old;
    }
    const dirty = opts.dirty ?? false;
    const e: CacheEntry = {
      offset,
      buf,
      view: new DataView(buf.buffer, buf.byteOffset, buf.byteLength),
      dirty,
      isNew: opts.isNew ?? false,
      used: ++this.#tick,
      pins: opts.pin ? 1 : 0,
    };
    this.#map.set(offset, e);
    if (dirty) this.#dirtyCount++;
    this.trim(e);
    return e;
  }

  /**
   * Loads a table through the cache: a hit is pinned at once; on a miss
   * `read` fetches it and the inserted entry comes back pinned. The caller
   * releases it.
   */
  async load(offset: number, read: () => Promise<Uint8Array>): Promise<CacheEntry> {
    const hit = this.acquire(offset);
    if (hit) return hit;
    const buf = await read();
    return this.insert(offset, buf, { pin: true });
  }

  /** Marks an entry dirty (it stays cached until written back). */
  markDirty(e: CacheEntry): void {
    if (this.#map.get(e.offset) !== e) {
      throw new BlockError(
        "EIO",
        `Internal error: metadata table at offset 0x${e.offset.toString(16)} was changed after it left the cache (it was not pinned)`,
      );
    }
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
