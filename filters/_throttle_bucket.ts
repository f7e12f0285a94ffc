/**
 * Throttle limits and leaky buckets, as QEMU's util/throttle.c: six buckets
 * (bps and iops; total, read, write), each with an average rate, an optional
 * burst rate (`-max`) held for `-max-length` seconds, and a level that
 * leaks at the average rate. A request is admitted when its buckets are not
 * over their limit, then accounted — so a large request passes and the next
 * one waits.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import { parseSize } from "../core/options.ts";

/** Largest rate QEMU accepts (THROTTLE_VALUE_MAX). */
export const THROTTLE_VALUE_MAX = 1e15;

const NS = 1e9;

/** Bucket order: bps-total, bps-read, bps-write, iops-total, iops-read, iops-write. */
export const BUCKET_NAMES = ["bps-total", "bps-read", "bps-write", "iops-total", "iops-read", "iops-write"] as const;

/** Throttle limits with QEMU's `throttle-group` property names. */
export interface ThrottleLimits {
  /** Bytes per second, reads and writes together. */
  "bps-total"?: number;
  /** Burst bytes per second, reads and writes together. */
  "bps-total-max"?: number;
  /** Seconds the `bps-total-max` burst may last. */
  "bps-total-max-length"?: number;
  /** Bytes per second read. */
  "bps-read"?: number;
  /** Burst bytes per second read. */
  "bps-read-max"?: number;
  /** Seconds the `bps-read-max` burst may last. */
  "bps-read-max-length"?: number;
  /** Bytes per second written. */
  "bps-write"?: number;
  /** Burst bytes per second written. */
  "bps-write-max"?: number;
  /** Seconds the `bps-write-max` burst may last. */
  "bps-write-max-length"?: number;
  /** Operations per second, reads and writes together. */
  "iops-total"?: number;
  /** Burst operations per second, reads and writes together. */
  "iops-total-max"?: number;
  /** Seconds the `iops-total-max` burst may last. */
  "iops-total-max-length"?: number;
  /** Read operations per second. */
  "iops-read"?: number;
  /** Burst read operations per second. */
  "iops-read-max"?: number;
  /** Seconds the `iops-read-max` burst may last. */
  "iops-read-max-length"?: number;
  /** Write operations per second. */
  "iops-write"?: number;
  /** Burst write operations per second. */
  "iops-write-max"?: number;
  /** Seconds the `iops-write-max` burst may last. */
  "iops-write-max-length"?: number;
  /** A request larger than this counts as size / iops-size operations. */
  "iops-size"?: number;
}

/** One leaky bucket. */
export interface LeakyBucket {
  /** Average rate (units per second); 0 = unlimited. */
  avg: number;
  /** Burst rate (units per second); 0 = none. */
  max: number;
  /** Seconds a burst at `max` may last. */
  burstLength: number;
  /** Units in the bucket. */
  level: number;
  /** Units in the burst bucket (when `burstLength` > 1). */
  burstLevel: number;
}

const KNOWN_KEYS: readonly string[] = [
  ...BUCKET_NAMES.flatMap((b) => [b, `${b}-max`, `${b}-max-length`]),
  "iops-size",
];

function invalid(message: string): never {
  throw new BlockError("EINVAL", `Invalid throttle limits: ${message}`);
}

function num(key: string, v: unknown): number | undefined {
  if (v === undefined || v === null || v === "") return undefined;
  const n = typeof v === "number" ? v : typeof v === "string" && /^\s*-\d+\s*$/.test(v) ? Number(v) : parseSize(v);
  if (n === undefined || !Number.isFinite(n) || !Number.isInteger(n)) invalid(`'${key}' must be an integer, got '${String(v)}'`);
  return n;
}

/**
 * Checks limits as QEMU's `throttle_is_valid` does and returns them with
 * numbers (strings from dotted specs are converted).
 *
 * @example
 * ```ts
 * import { validateThrottleLimits } from "@blkgraph/blkgraph/filters/throttle";
 * console.log(validateThrottleLimits({ "bps-total": "1048576" })); // { "bps-total": 1048576 }
 * ```
 */
export function validateThrottleLimits(input: Record<string, unknown>): ThrottleLimits {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(input)) {
    if (!KNOWN_KEYS.includes(k)) invalid(`unknown limit '${k}' (known limits: ${KNOWN_KEYS.join(", ")})`);
    const n = num(k, v);
    if (n !== undefined) out[k] = n;
  }
  const has = (k: string) => (out[k] ?? 0) > 0;
  for (const kind of ["bps", "iops"]) {
    for (const suffix of ["", "-max"]) {
      if (has(`${kind}-total${suffix}`) && (has(`${kind}-read${suffix}`) || has(`${kind}-write${suffix}`))) {
        invalid(
          `bps/iops/max total values and read/write values cannot be used at the same time ('${kind}-total${suffix}' with '${kind}-read${suffix}'/'${kind}-write${suffix}')`,
        );
      }
    }
  }
  if (has("iops-size") && !has("iops-total") && !has("iops-read") && !has("iops-write")) {
    invalid("iops size requires an iops value to be set ('iops-size' without 'iops-total', 'iops-read' or 'iops-write')");
  }
  if ((out["iops-size"] ?? 0) < 0) invalid(`'iops-size' must not be negative, got ${out["iops-size"]}`);
  for (const b of BUCKET_NAMES) {
    const avg = out[b] ?? 0;
    const max = out[`${b}-max`] ?? 0;
    const len = out[`${b}-max-length`] ?? 1;
    for (const [k, v] of [[b, avg], [`${b}-max`, max]] as const) {
      if (v < 0 || v > THROTTLE_VALUE_MAX) invalid(`bps/iops/max values must be within [0, ${THROTTLE_VALUE_MAX}] ('${k}' is ${v})`);
    }
    if (len < 1) invalid(`the burst length cannot be 0 ('${b}-max-length' is ${len}; it must be >= 1)`);
    if (len > 1 && !max) invalid(`burst length set without burst rate ('${b}-max-length' without '${b}-max')`);
    if (max && len > THROTTLE_VALUE_MAX / max) {
      invalid(`burst length too high for this burst rate ('${b}-max-length' ${len} with '${b}-max' ${max})`);
    }
    if (max && !avg) invalid(`bps_max/iops_max require corresponding bps/iops values ('${b}-max' without '${b}')`);
    if (max && max < avg) invalid(`bps_max/iops_max cannot be lower than bps/iops ('${b}-max' ${max} must be >= '${b}' ${avg})`);
  }
  return out as ThrottleLimits;
}

/** The six buckets and the operation size of one throttle state. */
export class ThrottleState {
  /** Buckets in {@linkcode BUCKET_NAMES} order. */
  readonly buckets: LeakyBucket[];
  /** `iops-size` (0 = every request is one operation). */
  readonly opSize: number;
  /** Some bucket has a limit. */
  readonly enabled: boolean;
  #previousLeak: number;

  /** Builds empty buckets for validated `limits`, leaking from `nowNs`. */
  constructor(limits: ThrottleLimits, nowNs: number) {
    const l = limits as Record<string, number | undefined>;
    this.buckets = BUCKET_NAMES.map((b) => ({
      avg: l[b] ?? 0,
      max: l[`${b}-max`] ?? 0,
      burstLength: l[`${b}-max-length`] ?? 1,
      level: 0,
      burstLevel: 0,
    }));
    this.opSize = l["iops-size"] ?? 0;
    this.enabled = this.buckets.some((b) => b.avg > 0);
    this.#previousLeak = nowNs;
  }

  /** Leaks every bucket for the time since the last leak. */
  leak(nowNs: number): void {
    const delta = nowNs - this.#previousLeak;
    this.#previousLeak = nowNs;
    if (delta <= 0) return;
    for (const b of this.buckets) {
      b.level = Math.max(b.level - (b.avg * delta) / NS, 0);
      if (b.burstLength > 1) b.burstLevel = Math.max(b.burstLevel - (b.max * delta) / NS, 0);
    }
  }

  /** Nanoseconds a request in direction `write` must wait (0 = may go now); leaks first. */
  computeWait(write: boolean, nowNs: number): number {
    this.leak(nowNs);
    const b = this.buckets;
    return Math.max(bucketWait(b[0]), bucketWait(b[3]), bucketWait(b[write ? 2 : 1]), bucketWait(b[write ? 5 : 4]));
  }

  /** Accounts an admitted request of `bytes` bytes. */
  account(write: boolean, bytes: number): void {
    const units = this.opSize && bytes > this.opSize ? bytes / this.opSize : 1;
    fill(this.buckets[0], bytes);
    fill(this.buckets[write ? 2 : 1], bytes);
    fill(this.buckets[3], units);
    fill(this.buckets[write ? 5 : 4], units);
  }
}

function fill(b: LeakyBucket, n: number): void {
  b.level += n;
  if (b.burstLength > 1) b.burstLevel += n;
}

/** QEMU's throttle_compute_wait for one bucket, in nanoseconds. */
export function bucketWait(b: LeakyBucket): number {
  if (!b.avg) return 0;
  let size: number;
  let burstSize: number;
  if (!b.max) {
    // Without a burst limit, still allow short bursts of a tenth of a second.
    size = b.avg / 10;
    burstSize = 0;
  } else {
    size = b.max * b.burstLength;
    burstSize = b.max / 10;
  }
  let extra = b.level - size;
  if (extra > 0) return Math.trunc((extra * NS) / b.avg);
  if (b.burstLength > 1) {
    extra = b.burstLevel - burstSize;
    if (extra > 0) return Math.trunc((extra * NS) / b.max);
  }
  return 0;
}
