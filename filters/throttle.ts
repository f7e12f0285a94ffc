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
 * import { open } from "@blkgraph/blkgraph";
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
import type { FilterCall, RequestInfo } from "../core/types.ts";
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
export class ThrottleInstance implements DriverInstance {
  /** The group whose budget this node draws on. */
  readonly group: ThrottleGroup;
  #member: ThrottleGroupMember;
  #node: BlockNode;
  #ownsGroup: boolean;

  /** Joins `group` as `node` (done by the driver's open, after its child is open). */
  constructor(node: BlockNode, group: ThrottleGroup, ownsGroup: boolean) {
    this.group = group;
    this.#node = node;
    this.#ownsGroup = ownsGroup;
    this.#member = group.join(node.name);
  }

  /**
   * Reads, writes, write-zeroes and discards wait until the group's budget
   * admits them (write-zeroes and discards count as writes of their length,
   * as in QEMU); flush, block status and truncate are not throttled.
   */
  intercept<T>(call: FilterCall, next: () => Promise<T>): Promise<T> {
    if (call.op === "flush" || call.op === "block-status" || call.op === "truncate") return next();
    const write = call.op !== "read";
    const w = this.group.intercept(this.#member, call.length, write);
    if (w === undefined) return next();
    return this.#waited(w, call.length, write, call.req).then(next);
  }

  /** The wait `w`, reported to the node's listeners as a throttle begin/end pair. */
  #waited(w: Promise<void>, bytes: number, write: boolean, req: RequestInfo | undefined): Promise<void> {
    const node = this.#node;
    if (!node.listening) return w;
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

/** The throttle filter's options. */
const THROTTLE_OPTIONS: readonly string[] = ["throttle-group", "limits", "clock"];

async function openThrottle(ctx: OpenContext): Promise<DriverInstance> {
  const o = ctx.options;
  checkKnownOptions(o, THROTTLE_OPTIONS, "throttle");
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
  await ctx.openChild("file");
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
  return new ThrottleInstance(ctx.node, group, owns);
}

/** The throttle filter driver. */
export const throttleDriver: BlockDriver = {
  name: "throttle",
  kind: "filter",
  options: THROTTLE_OPTIONS,
  // QEMU's: the group; a private group's limits change what the guest sees as much.
  strongOptions: ["throttle-group", "limits"],
  open: openThrottle,
};

registerDriver(throttleDriver);
