/**
 * Serialisation of overlapping requests on one node: a write waits for every
 * request it overlaps, a read waits for overlapping writes, so two writes to
 * the same bytes never interleave and a read never sees half of a write.
 * The common case (nothing overlapping) costs one scan of a short array and
 * no promise.
 *
 * @module
 */

/** A request registered with a {@linkcode RequestTracker}. */
export interface Tracked {
  /** First byte. */
  start: number;
  /** One past the last byte. */
  end: number;
  /** Writes conflict with everything; reads only with writes. */
  write: boolean;
  /** Callbacks run when the request leaves (null until someone waits). */
  waiters: (() => void)[] | null;
}

/** The requests in flight on one node. */
export class RequestTracker {
  #inflight: Tracked[] = [];

  /** Waits for overlapping conflicting requests, then registers this one. */
  track(start: number, end: number, write: boolean): Tracked | Promise<Tracked> {
    for (const t of this.#inflight) {
      if (t.start < end && start < t.end && (write || t.write)) {
        return new Promise<void>((resolve) => (t.waiters ??= []).push(resolve)).then(() => this.track(start, end, write));
      }
    }
    const t: Tracked = { start, end, write, waiters: null };
    this.#inflight.push(t);
    return t;
  }

  /** Unregisters a request and wakes those waiting for it. */
  untrack(t: Tracked): void {
    const i = this.#inflight.indexOf(t);
    if (i >= 0) this.#inflight.splice(i, 1);
    if (t.waiters) { for (const w of t.waiters) w(); }
  }

  /** Resolves when no request is in flight. */
  async drain(): Promise<void> {
    while (this.#inflight.length) {
      const t = this.#inflight[0];
      await new Promise<void>((resolve) => (t.waiters ??= []).push(resolve));
    }
  }
}
