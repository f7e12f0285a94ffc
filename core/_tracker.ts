/**
 * Serialisation of overlapping requests on one node: a write waits for every
 * request it overlaps, a read waits for overlapping writes, so two writes to
 * the same bytes never interleave and a read never sees half of a write.
 *
 * Requests live in slots of typed arrays (QEMU's `BdrvTrackedRequest` lives
 * on the coroutine stack; here a slot index stands for it), so tracking a
 * request allocates nothing. A read while no write is registered takes a slot
 * without scanning anything (QEMU's `serialising_in_flight` shortcut); a
 * write scans the requests in flight, as QEMU's
 * `bdrv_find_conflicting_request` does.
 *
 * @module
 */

/** The requests in flight on one node. */
export class RequestTracker {
  #start = new Float64Array(16);
  #end = new Float64Array(16);
  #write = new Uint8Array(16);
  /** Callbacks run when the slot's request leaves (null until someone waits). */
  #waiters: ((() => void)[] | null)[] = new Array(16).fill(null);
  /** Slot indexes in use, densely packed in `#active[0..#count)`; `#pos[slot]` is a slot's place there. */
  #active = new Int32Array(16);
  #pos = new Int32Array(16);
  #count = 0;
  /** Free slot indexes (a stack). */
  #free: number[] = [];
  #capacity = 0;
  /** Writes registered (tracked and not yet left). */
  #writes = 0;

  /** Requests in flight. */
  get size(): number {
    return this.#count;
  }

  /** Writes in flight. */
  get writes(): number {
    return this.#writes;
  }

  /**
   * Registers a request for `[start, end)` and returns its slot, or a
   * promise of the slot when it must first wait for a conflicting request.
   */
  track(start: number, end: number, write: boolean): number | Promise<number> {
    if (write || this.#writes > 0) {
      const c = this.#conflict(start, end, write);
      if (c >= 0) return this.#waitFor(c).then(() => this.track(start, end, write));
    }
    return this.#add(start, end, write);
  }

  /** Unregisters the request in `slot` and wakes those waiting for it. */
  untrack(slot: number): void {
    const at = this.#pos[slot];
    const last = this.#active[--this.#count];
    this.#active[at] = last;
    this.#pos[last] = at;
    if (this.#write[slot]) this.#writes--;
    this.#free.push(slot);
    const w = this.#waiters[slot];
    if (w) {
      this.#waiters[slot] = null;
      for (const f of w) f();
    }
  }

  /** Resolves when no request is in flight. */
  async drain(): Promise<void> {
    while (this.#count) await this.#waitFor(this.#active[0]);
  }

  #waitFor(slot: number): Promise<void> {
    return new Promise<void>((resolve) => (this.#waiters[slot] ??= []).push(resolve));
  }

  /** The slot of a request in flight that conflicts with `[start, end)`, or -1. */
  #conflict(start: number, end: number, write: boolean): number {
    const active = this.#active;
    for (let i = 0; i < this.#count; i++) {
      const s = active[i];
      if (this.#start[s] < end && start < this.#end[s] && (write || this.#write[s])) return s;
    }
    return -1;
  }

  #add(start: number, end: number, write: boolean): number {
    let slot = this.#free.pop();
    if (slot === undefined) {
      if (this.#capacity === this.#start.length) this.#grow();
      slot = this.#capacity++;
    }
    this.#start[slot] = start;
    this.#end[slot] = end;
    this.#write[slot] = write ? 1 : 0;
    if (write) this.#writes++;
    this.#pos[slot] = this.#count;
    this.#active[this.#count++] = slot;
    return slot;
  }

  #grow(): void {
    const n = this.#start.length * 2;
    const f64 = (a: Float64Array) => {
      const b = new Float64Array(n);
      b.set(a);
      return b;
    };
    const i32 = (a: Int32Array) => {
      const b = new Int32Array(n);
      b.set(a);
      return b;
    };
    this.#start = f64(this.#start);
    this.#end = f64(this.#end);
    const w = new Uint8Array(n);
    w.set(this.#write);
    this.#write = w;
    this.#active = i32(this.#active);
    this.#pos = i32(this.#pos);
    for (let i = this.#waiters.length; i < n; i++) this.#waiters.push(null);
  }
}
