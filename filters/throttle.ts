/**
 * The `throttle` filter (QEMU's block/throttle.c): limits the rate of reads
 * and writes through it with leaky buckets. Limits use QEMU's names
 * (`bps-total`, `iops-read-max`, `iops-size`, ...) and live in a throttle
 * group: either a named one (`throttle-group: "tg0"`, made with
 * {@linkcode createThrottleGroup}) shared by several nodes, or a private one
 * from inline `limits`. Flush is not throttled. A node without limits costs
 * next to nothing per request. Node listeners see each wait as a
 * `{kind: "throttle", phase: "begin" | "end"}` pair.
 *
 * @example
 * ```ts
 * import { open } from "../mod.ts";
 * await using disk = await open({
 *   driver: "throttle",
 *   limits: { "iops-total": 1000 },
 *   file: { driver: "memory", size: 1 << 20 },
 * });
 * await disk.pwrite(0, new Uint8Array(4096));
 * ```
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import type { BlockNode } from "../core/node.ts";
import { checkKnownOptions, optString } from "../core/options.ts";
import { registerDriver } from "../core/registry.ts";
import { isPlainObject } from "../core/spec.ts";
import type { RequestOptions, WriteOptions, WriteZeroesOptions } from "../core/types.ts";
import type { BlockDriver, DriverInstance, OpenContext } from "../core/node.ts";
import type { Clock } from "./_clock.ts";
import { createThrottleGroup, forgetThrottleGroup, getThrottleGroup, ThrottleGroup, type ThrottleGroupMember } from "./_throttle_group.ts";

export { type Clock, createFakeClock, FakeClock, realClock } from "./_clock.ts";
export {
  bucketWait,
  type LeakyBucket,
  THROTTLE_VALUE_MAX,
  type ThrottleLimits,
  ThrottleState,
  validateThrottleLimits,
} from "./_throttle_bucket.ts";
export {
  createThrottleGroup,
  deleteThrottleGroup,
  getThrottleGroup,
  setThrottleGroupLimits,
  ThrottleGroup,
  ThrottleGroupMember,
  type ThrottleGroupOptions,
} from "./_throttle_group.ts";

/** A throttle node's driver instance. */
export class ThrottleFilter implements DriverInstance {
  /** The group whose budget this node draws on. */
  readonly group: ThrottleGroup;
  #member: ThrottleGroupMember;
  #node: BlockNode;
  #child: BlockNode;
  #ownsGroup: boolean;

  /** Joins `group` as `node` over `child` (done by the driver's open). */
  constructor(node: BlockNode, child: BlockNode, group: ThrottleGroup, ownsGroup: boolean) {
    this.group = group;
    this.#node = node;
    this.#child = child;
    this.#ownsGroup = ownsGroup;
    this.#member = group.join(node.name);
  }

  /** Reads once the group's budget admits it. */
  pread(offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
    const w = this.group.intercept(this.#member, buf.length, false);
    if (w === undefined) return this.#child.pread(offset, buf, opts);
    return this.#waited(w, buf.length, false, opts).then(() => this.#child.pread(offset, buf, opts));
  }

  /** Writes once the group's budget admits it. */
  pwrite(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    const w = this.group.intercept(this.#member, data.length, true);
    if (w === undefined) return this.#child.pwrite(offset, data, opts);
    return this.#waited(w, data.length, true, opts).then(() => this.#child.pwrite(offset, data, opts));
  }

  /** Writes zeroes once admitted (counted as a write of `length` bytes, as QEMU). */
  pwriteZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    const w = this.group.intercept(this.#member, length, true);
    if (w === undefined) return this.#child.pwriteZeroes(offset, length, opts);
    return this.#waited(w, length, true, opts).then(() => this.#child.pwriteZeroes(offset, length, opts));
  }

  /** Discards once admitted (counted as a write of `length` bytes, as QEMU). */
  pdiscard(offset: number, length: number, opts: RequestOptions): Promise<void> {
    const w = this.group.intercept(this.#member, length, true);
    if (w === undefined) return this.#child.pdiscard(offset, length, opts);
    return this.#waited(w, length, true, opts).then(() => this.#child.pdiscard(offset, length, opts));
  }

  /** The wait `w`, reported to the node's listeners as a throttle begin/end pair. */
  #waited(w: Promise<void>, bytes: number, write: boolean, opts: RequestOptions): Promise<void> {
    const node = this.#node;
    if (!node.listening) return w;
    const req = opts.req;
    node.emit({ kind: "throttle", phase: "begin", node, time: performance.now(), req, bytes, write });
    return w.finally(() => node.emit({ kind: "throttle", phase: "end", node, time: performance.now(), req, bytes, write }));
  }

  /** Leaves the group (a private group is dropped with it). */
  close(): void {
    this.group.leave(this.#member);
    if (this.#ownsGroup && this.group.size === 0) forgetThrottleGroup(this.group);
  }

  /** The group and its limits, for `info`. */
  info(): Record<string, unknown> {
    return { "throttle-group": this.group.name, limits: this.group.limits };
  }
}

function isClock(v: unknown): v is Clock {
  const c = v as Clock;
  return typeof c === "object" && c !== null && typeof c.now === "function" && typeof c.setTimer === "function" &&
    typeof c.clearTimer === "function";
}

async function openThrottle(ctx: OpenContext): Promise<DriverInstance> {
  const o = ctx.options;
  checkKnownOptions(o, ["throttle-group", "limits", "clock"], "throttle");
  const groupName = optString(o, "throttle-group", "throttle");
  const limits = o.limits;
  if (limits !== undefined && !isPlainObject(limits)) {
    throw new BlockError(
      "EINVAL",
      `Invalid value '${String(limits)}' for option 'limits' of driver 'throttle': expected an object of limits`,
    );
  }
  if (o.clock !== undefined && !isClock(o.clock)) {
    throw new BlockError(
      "EINVAL",
      "Invalid value for option 'clock' of driver 'throttle': expected an object with now(), setTimer() and clearTimer()",
    );
  }
  const clock = o.clock as Clock | undefined;
  const child = await ctx.openChild("file");
  let group: ThrottleGroup;
  let owns = false;
  if (groupName) {
    const existing = getThrottleGroup(groupName);
    if (existing && limits !== undefined) {
      throw new BlockError(
        "EINVAL",
        `Cannot give 'limits' for throttle group '${groupName}': the group exists; change its limits with setThrottleGroupLimits()`,
      );
    }
    if (existing) group = existing;
    else if (limits !== undefined) {
      group = createThrottleGroup(groupName, limits, { clock });
      owns = true;
    } else {
      throw new BlockError("ENOENT", `Throttle group '${groupName}' does not exist: create it with createThrottleGroup() or give 'limits'`);
    }
  } else {
    // A private group, not in the registry.
    group = new ThrottleGroup(`#${ctx.node.name}`, (limits as Record<string, unknown> | undefined) ?? {}, clock);
  }
  return new ThrottleFilter(ctx.node, child!, group, owns);
}

/** The throttle filter driver. */
export const throttleDriver: BlockDriver = {
  name: "throttle",
  kind: "filter",
  open: openThrottle,
};

registerDriver(throttleDriver);
