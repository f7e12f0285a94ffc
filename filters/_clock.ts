/**
 * Clocks for time-based filters: the real one (`performance.now()` and
 * `setTimeout`) and a fake one that tests advance by hand, so throttling is
 * tested without wall time.
 *
 * @module
 */

/** A clock with timers; times in milliseconds (fractions allowed). */
export interface Clock {
  /** Current time in milliseconds. */
  now(): number;
  /** Calls `fn` after `ms` milliseconds; returns a handle for {@linkcode Clock.clearTimer}. */
  setTimer(ms: number, fn: () => void): unknown;
  /** Cancels a timer that has not fired. */
  clearTimer(handle: unknown): void;
}

/** The real clock: `performance.now()` and `setTimeout`. */
export const realClock: Clock = {
  now: () => performance.now(),
  setTimer: (ms, fn) => setTimeout(fn, Math.max(0, Math.ceil(ms))),
  clearTimer: (h) => clearTimeout(h as number),
};

interface FakeTimer {
  at: number;
  seq: number;
  fn: () => void;
}

/** A manual clock for tests: time moves only with {@linkcode FakeClock.advance}. */
export class FakeClock implements Clock {
  #now = 0;
  #seq = 0;
  #timers = new Set<FakeTimer>();

  /** Current fake time in milliseconds. */
  now(): number {
    return this.#now;
  }

  /** Schedules `fn` at now + `ms`. */
  setTimer(ms: number, fn: () => void): unknown {
    const t: FakeTimer = { at: this.#now + Math.max(0, ms), seq: this.#seq++, fn };
    this.#timers.add(t);
    return t;
  }

  /** Cancels a timer. */
  clearTimer(handle: unknown): void {
    this.#timers.delete(handle as FakeTimer);
  }

  /** Number of timers not yet fired. */
  get pendingTimers(): number {
    return this.#timers.size;
  }

  /**
   * Moves time forward by `ms`, firing due timers in order and letting the
   * promise chains they start run to completion after each one.
   */
  async advance(ms: number): Promise<void> {
    const target = this.#now + ms;
    for (;;) {
      await settle();
      let next: FakeTimer | undefined;
      for (const t of this.#timers) {
        if (t.at <= target && (!next || t.at < next.at || (t.at === next.at && t.seq < next.seq))) next = t;
      }
      if (!next) break;
      this.#timers.delete(next);
      if (next.at > this.#now) this.#now = next.at;
      next.fn();
    }
    this.#now = target;
    await settle();
  }
}

function settle(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/**
 * Makes a fake clock for tests.
 *
 * @example
 * ```ts
 * import { createFakeClock } from "@blkgraph/blkgraph/filters/throttle";
 * const clock = createFakeClock();
 * let fired = false;
 * clock.setTimer(100, () => (fired = true));
 * await clock.advance(100);
 * console.log(fired, clock.now()); // true 100
 * ```
 */
export function createFakeClock(): FakeClock {
  return new FakeClock();
}
