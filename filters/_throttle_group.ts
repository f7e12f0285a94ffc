/**
 * Throttle groups (QEMU's block/throttle-groups.c): nodes in one group share
 * one set of buckets. Each member queues its reads and its writes in order;
 * when the budget runs out one timer is armed for the whole group, and the
 * members with queued requests are served round-robin.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import { type Clock, realClock } from "./_clock.ts";
import { type ThrottleLimits, ThrottleState, validateThrottleLimits } from "./_throttle_bucket.ts";

/** Index of a direction: 0 = read, 1 = write. */
type Dir = 0 | 1;

/** One node's place in a group (QEMU's ThrottleGroupMember). */
export class ThrottleGroupMember {
  /** Name of the member node. */
  readonly name: string;
  /** Requests waiting, per direction. */
  readonly queues: [(() => void)[], (() => void)[]] = [[], []];
  /** Requests queued or being woken, per direction. */
  readonly pending: [number, number] = [0, 0];
  /** Armed timer per direction. */
  readonly timers: [unknown, unknown] = [null, null];

  /** Creates a member for node `name`. */
  constructor(name: string) {
    this.name = name;
  }
}

interface ZeroTimer {
  cancelled: boolean;
}

/** A throttle group: shared limits and buckets for its member nodes. */
export class ThrottleGroup {
  /** Group name. */
  readonly name: string;
  /** The group's clock. */
  readonly clock: Clock;
  #limits: ThrottleLimits;
  #state: ThrottleState;
  #members: ThrottleGroupMember[] = [];
  #tokens: [ThrottleGroupMember | null, ThrottleGroupMember | null] = [null, null];
  #anyTimerArmed: [boolean, boolean] = [false, false];

  /** Creates a group with validated `limits`. */
  constructor(name: string, limits: Record<string, unknown>, clock: Clock = realClock) {
    this.name = name;
    this.clock = clock;
    this.#limits = validateThrottleLimits(limits);
    this.#state = new ThrottleState(this.#limits, this.#nowNs());
  }

  #nowNs(): number {
    return this.clock.now() * 1e6;
  }

  /** The limits in force. */
  get limits(): ThrottleLimits {
    return { ...this.#limits };
  }

  /** Some limit is set (an unlimited group costs nothing per request). */
  get enabled(): boolean {
    return this.#state.enabled;
  }

  /** The buckets (for tests and `info`). */
  get state(): ThrottleState {
    return this.#state;
  }

  /** Names of the member nodes. */
  get memberNames(): string[] {
    return this.#members.map((m) => m.name);
  }

  /** Replaces the limits (levels restart at 0) and restarts waiting requests. */
  setLimits(limits: Record<string, unknown>): void {
    const valid = validateThrottleLimits(limits);
    this.#limits = valid;
    this.#state = new ThrottleState(valid, this.#nowNs());
    for (const m of this.#members) {
      for (const dir of [0, 1] as const) {
        if (m.timers[dir] !== null) {
          this.#cancelTimer(m, dir);
          this.#timerFired(m, dir);
        } else {
          this.#restartQueue(m, dir);
        }
      }
    }
  }

  /** Adds a member node. */
  join(name: string): ThrottleGroupMember {
    const m = new ThrottleGroupMember(name);
    this.#members.push(m);
    if (!this.#tokens[0]) this.#tokens[0] = m;
    if (!this.#tokens[1]) this.#tokens[1] = m;
    return m;
  }

  /** Removes a member (its requests have finished). */
  leave(m: ThrottleGroupMember): void {
    const i = this.#members.indexOf(m);
    if (i < 0) return;
    for (const dir of [0, 1] as const) {
      if (m.timers[dir] !== null) {
        this.#cancelTimer(m, dir);
        this.#anyTimerArmed[dir] = false;
      }
    }
    this.#members.splice(i, 1);
    for (const dir of [0, 1] as const) {
      if (this.#tokens[dir] === m) this.#tokens[dir] = this.#members[i % Math.max(1, this.#members.length)] ?? null;
      // Hand the group timer to whoever still waits.
      const waiting = this.#members.find((x) => x.pending[dir] > 0);
      if (waiting && !this.#anyTimerArmed[dir]) this.#scheduleNext(waiting, dir);
    }
  }

  /** Number of members. */
  get size(): number {
    return this.#members.length;
  }

  /**
   * Admits a request of `bytes` bytes: undefined when it may go at once,
   * else a promise that resolves when it may go (QEMU's
   * throttle_group_co_io_limits_intercept).
   */
  intercept(m: ThrottleGroupMember, bytes: number, write: boolean): Promise<void> | undefined {
    if (!this.#state.enabled && !m.pending[0] && !m.pending[1]) return undefined;
    const dir: Dir = write ? 1 : 0;
    const mustWait = this.#scheduleTimer(m, dir);
    if (mustWait || m.pending[dir]) {
      m.pending[dir]++;
      return new Promise<void>((resolve) => m.queues[dir].push(resolve)).then(() => {
        m.pending[dir]--;
        this.#state.account(write, bytes);
        this.#scheduleNext(m, dir);
      });
    }
    this.#state.account(write, bytes);
    this.#scheduleNext(m, dir);
    return undefined;
  }

  /** True when a timer must run first; arms one for `m` when none is armed. */
  #scheduleTimer(m: ThrottleGroupMember, dir: Dir): boolean {
    if (this.#anyTimerArmed[dir]) return true;
    const wait = this.#state.computeWait(dir === 1, this.#nowNs());
    if (!wait) return false;
    if (m.timers[dir] === null) this.#armTimer(m, dir, wait / 1e6);
    this.#tokens[dir] = m;
    this.#anyTimerArmed[dir] = true;
    return true;
  }

  /** Picks the next member with queued requests (round-robin) and lets it go or arms its timer. */
  #scheduleNext(m: ThrottleGroupMember, dir: Dir): void {
    const token = this.#nextToken(m, dir);
    if (!token.pending[dir]) return;
    if (this.#scheduleTimer(token, dir)) return;
    // It may go now: the current member's queue first (as QEMU), else the token's via a zero timer.
    if (this.#wakeOne(m, dir)) {
      this.#tokens[dir] = m;
    } else {
      this.#armTimer(token, dir, 0);
      this.#anyTimerArmed[dir] = true;
      this.#tokens[dir] = token;
    }
  }

  #nextToken(m: ThrottleGroupMember, dir: Dir): ThrottleGroupMember {
    const start = this.#tokens[dir] ?? m;
    const n = this.#members.length;
    let i = this.#members.indexOf(start);
    let token = start;
    if (i >= 0 && n > 0) {
      do {
        i = (i + 1) % n;
        token = this.#members[i];
      } while (token !== start && !token.pending[dir]);
    }
    if (token === start && !token.pending[dir]) token = m;
    return token;
  }

  #wakeOne(m: ThrottleGroupMember, dir: Dir): boolean {
    const next = m.queues[dir].shift();
    if (!next) return false;
    next();
    return true;
  }

  #restartQueue(m: ThrottleGroupMember, dir: Dir): void {
    if (!this.#wakeOne(m, dir)) this.#scheduleNext(m, dir);
  }

  #timerFired(m: ThrottleGroupMember, dir: Dir): void {
    m.timers[dir] = null;
    this.#anyTimerArmed[dir] = false;
    this.#restartQueue(m, dir);
  }

  #armTimer(m: ThrottleGroupMember, dir: Dir, ms: number): void {
    if (ms <= 0) {
      // "Now": a microtask, not a clock timer, so no clock advance is needed.
      const z: ZeroTimer = { cancelled: false };
      m.timers[dir] = z;
      queueMicrotask(() => {
        if (!z.cancelled && m.timers[dir] === z) this.#timerFired(m, dir);
      });
      return;
    }
    m.timers[dir] = this.clock.setTimer(ms, () => this.#timerFired(m, dir));
  }

  #cancelTimer(m: ThrottleGroupMember, dir: Dir): void {
    const t = m.timers[dir];
    if (t === null) return;
    if (typeof t === "object" && t !== null && "cancelled" in t) (t as ZeroTimer).cancelled = true;
    else this.clock.clearTimer(t);
    m.timers[dir] = null;
  }
}

const groups = new Map<string, ThrottleGroup>();

/** Options for {@linkcode createThrottleGroup}. */
export interface ThrottleGroupOptions {
  /** Clock for the group's timers (default: the real clock; tests pass a fake one). */
  clock?: Clock;
}

/**
 * Creates a named throttle group; throttle nodes join it with
 * `throttle-group: name`.
 *
 * @example
 * ```ts
 * import { createThrottleGroup, deleteThrottleGroup } from "@blkgraph/blkgraph/filters/throttle";
 * createThrottleGroup("tg0", { "iops-total": 100 });
 * deleteThrottleGroup("tg0");
 * ```
 */
export function createThrottleGroup(name: string, limits: Record<string, unknown> = {}, opts: ThrottleGroupOptions = {}): ThrottleGroup {
  if (!name) throw new BlockError("EINVAL", "Cannot create a throttle group without a name");
  if (groups.has(name)) throw new BlockError("EEXIST", `Cannot create throttle group '${name}': a group with that name exists`);
  const g = new ThrottleGroup(name, limits, opts.clock);
  groups.set(name, g);
  return g;
}

/** Looks up a named throttle group. */
export function getThrottleGroup(name: string): ThrottleGroup | undefined {
  return groups.get(name);
}

/** Changes a group's limits live; waiting requests are re-evaluated. */
export function setThrottleGroupLimits(name: string, limits: Record<string, unknown>): void {
  const g = groups.get(name);
  if (!g) throw new BlockError("ENOENT", `Cannot set limits of throttle group '${name}': no such group`);
  g.setLimits(limits);
}

/** Deletes a named throttle group; EBUSY while nodes use it. */
export function deleteThrottleGroup(name: string): void {
  const g = groups.get(name);
  if (!g) throw new BlockError("ENOENT", `Cannot delete throttle group '${name}': no such group`);
  if (g.size) {
    throw new BlockError("EBUSY", `Cannot delete throttle group '${name}': nodes ${g.memberNames.map((n) => `'${n}'`).join(", ")} use it`);
  }
  groups.delete(name);
}

/** Removes a group from the registry (used for groups created implicitly by a node). */
export function forgetThrottleGroup(g: ThrottleGroup): void {
  if (groups.get(g.name) === g) groups.delete(g.name);
}
