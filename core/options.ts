/**
 * Reading driver options: typed getters that accept QEMU's spellings
 * (`on`/`off`, size suffixes) and name the option and value when they fail,
 * and a check that rejects unknown keys.
 *
 * @module
 */

import { BlockError } from "./errors.ts";

/** Options as a driver receives them. */
export type Options = Record<string, unknown>;

function bad(driver: string, key: string, value: unknown, expected: string): never {
  throw new BlockError("EINVAL", `Invalid value '${String(value)}' for option '${key}' of driver '${driver}': expected ${expected}`);
}

/**
 * Reads a string option.
 *
 * @example
 * ```ts
 * import { optString } from "@blkgraph/blkgraph";
 * console.log(optString({ filename: "disk.img" }, "filename", "file")); // disk.img
 * ```
 */
export function optString(opts: Options, key: string, driver: string): string | undefined {
  const v = opts[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return bad(driver, key, JSON.stringify(v), "a string");
}

/**
 * Reads a boolean option (`true`/`false`, `on`/`off`, `yes`/`no`, `1`/`0`).
 *
 * @example
 * ```ts
 * import { optBool } from "@blkgraph/blkgraph";
 * console.log(optBool({ "lazy-refcounts": "on" }, "lazy-refcounts", "qcow2")); // true
 * ```
 */
export function optBool(opts: Options, key: string, driver: string): boolean | undefined {
  const v = opts[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v === "boolean") return v;
  const s = String(v).toLowerCase();
  if (["on", "true", "yes", "1"].includes(s)) return true;
  if (["off", "false", "no", "0"].includes(s)) return false;
  return bad(driver, key, v, "on or off");
}

/**
 * Reads a non-negative integer option.
 *
 * @example
 * ```ts
 * import { optInt } from "@blkgraph/blkgraph";
 * console.log(optInt({ align: "4096" }, "align", "blkdebug")); // 4096
 * ```
 */
export function optInt(opts: Options, key: string, driver: string): number | undefined {
  const v = opts[key];
  if (v === undefined || v === null) return undefined;
  const n = typeof v === "number" ? v : typeof v === "string" && /^\s*\d+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < 0) return bad(driver, key, v, "a non-negative integer");
  return n;
}

/**
 * Reads a non-negative number option (may be fractional).
 *
 * @example
 * ```ts
 * import { optNumber } from "@blkgraph/blkgraph";
 * console.log(optNumber({ "throttling.iops-total": "2.5" }, "throttling.iops-total", "throttle")); // 2.5
 * ```
 */
export function optNumber(opts: Options, key: string, driver: string): number | undefined {
  const v = opts[key];
  if (v === undefined || v === null) return undefined;
  const n = typeof v === "number" ? v : typeof v === "string" && v.trim() !== "" ? Number(v) : NaN;
  if (!Number.isFinite(n) || n < 0) return bad(driver, key, v, "a non-negative number");
  return n;
}

/**
 * Reads a size option: bytes, or a number with a k/M/G/T/P/E suffix (powers of 1024).
 *
 * @example
 * ```ts
 * import { optSize } from "@blkgraph/blkgraph";
 * console.log(optSize({ size: "1M" }, "size", "memory")); // 1048576
 * ```
 */
export function optSize(opts: Options, key: string, driver: string): number | undefined {
  const v = opts[key];
  if (v === undefined || v === null) return undefined;
  const n = parseSize(v);
  if (n === undefined) return bad(driver, key, v, "a size such as 65536, 64k, 1M or 10G");
  return n;
}

const SUFFIX: Record<string, number> = { "": 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/**
 * Parses a size with an optional binary suffix, as qemu-img does
 * (`512`, `64k`, `1.5M`, `10G`, and hexadecimal `0x10000`, without a
 * fraction). Returns undefined when it is not a size.
 *
 * @example
 * ```ts
 * import { parseSize } from "@blkgraph/blkgraph";
 * console.log(parseSize("64k")); // 65536
 * ```
 */
export function parseSize(value: unknown, defaultSuffix = ""): number | undefined {
  if (typeof value === "number") return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (typeof value !== "string") return undefined;
  // Hexadecimal, as QEMU 7.2's qemu_strtosz takes it: no fraction; a suffix still multiplies (QEMU warns that it is deprecated).
  const hex = /^\s*0x([0-9a-f]+)\s*([kmgtpe]?)\s*$/i.exec(value);
  if (hex) {
    const n = parseInt(hex[1], 16) * SUFFIX[(hex[2] || defaultSuffix).toLowerCase()];
    return Number.isSafeInteger(n) ? n : undefined;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)(?:i?b)?\s*$/i.exec(value);
  if (!m) return undefined;
  const unit = SUFFIX[(m[2] || defaultSuffix).toLowerCase()];
  const n = Number(m[1]) * unit;
  if (!Number.isSafeInteger(Math.round(n)) || Math.round(n) !== n && unit === 1) return undefined;
  return Math.round(n);
}

/**
 * The AIO modes of QEMU's `aio` option and of qemu-img/qemu-io `-i`
 * (`bdrv_parse_aio`): the `file` driver's option, `open()`'s graph-wide mode.
 *
 * @example
 * ```ts
 * import { AIO_MODES } from "@blkgraph/blkgraph";
 * console.log(AIO_MODES.includes("io_uring")); // true
 * ```
 */
export const AIO_MODES: readonly ["threads", "native", "io_uring"] = ["threads", "native", "io_uring"];

/**
 * Whether `mode` is one of {@linkcode AIO_MODES}.
 *
 * @example
 * ```ts
 * import { isAioMode } from "@blkgraph/blkgraph";
 * console.log(isAioMode("threads"), isAioMode("posix")); // true false
 * ```
 */
export function isAioMode(mode: string): mode is (typeof AIO_MODES)[number] {
  return (AIO_MODES as readonly string[]).includes(mode);
}

/**
 * Reads an option that must be one of `choices`.
 *
 * @example
 * ```ts
 * import { optEnum } from "@blkgraph/blkgraph";
 * console.log(optEnum({ aio: "threads" }, "aio", "file", ["threads", "native", "io_uring"])); // threads
 * ```
 */
export function optEnum<T extends string>(opts: Options, key: string, driver: string, choices: readonly T[]): T | undefined {
  const v = optString(opts, key, driver);
  if (v === undefined) return undefined;
  if (!(choices as readonly string[]).includes(v)) return bad(driver, key, v, `one of ${choices.join(", ")}`);
  return v as T;
}

/**
 * Throws if `opts` has a key that is not in `known`.
 *
 * @example
 * ```ts
 * import { BlockError, checkKnownOptions } from "@blkgraph/blkgraph";
 * try {
 *   checkKnownOptions({ size: 1, colour: "red" }, ["size"], "memory");
 * } catch (e) {
 *   console.log((e as BlockError).code); // EINVAL: Unknown option 'colour' for driver 'memory'
 * }
 * ```
 */
export function checkKnownOptions(opts: Options, known: readonly string[], driver: string): void {
  for (const key of Object.keys(opts)) {
    if (!known.includes(key)) {
      throw new BlockError("EINVAL", `Unknown option '${key}' for driver '${driver}' (known options: ${known.join(", ") || "none"})`);
    }
  }
}

/** QEMU's PreallocMode names: every mode a `preallocation` option can name. */
const PREALLOC_MODES = ["off", "metadata", "falloc", "full"] as const;

/** What a protocol can preallocate, for {@linkcode checkPreallocation}. */
export interface PreallocationSupport {
  /** The protocol driver's name. */
  readonly driver: string;
  /** The modes it can do (`off` first). */
  readonly allowed: readonly string[];
  /** QEMU's line refusing a mode it cannot do. */
  readonly unsupported: (mode: string) => string;
}

/**
 * A protocol's check of the `preallocation` a format hands down at create
 * (QEMU's protocol drivers parse it themselves): a name that is not a mode
 * at all is EINVAL ("invalid parameter value: foo"), a mode the protocol
 * cannot do ENOTSUP in its words (`unsupported` gives QEMU's line for it).
 * Returns the mode (default `off`).
 *
 * @example
 * ```ts
 * import { BlockError, checkPreallocation } from "@blkgraph/blkgraph";
 * try {
 *   const nbd = { driver: "nbd", allowed: ["off"], unsupported: (m: string) => `Unsupported preallocation mode '${m}'` };
 *   checkPreallocation({ preallocation: "full" }, nbd);
 * } catch (e) {
 *   console.log((e as BlockError).code, (e as BlockError).qemuMessage); // ENOTSUP Unsupported preallocation mode 'full'
 * }
 * ```
 */
export function checkPreallocation(opts: Options, protocol: PreallocationSupport): string {
  const { driver, allowed, unsupported } = protocol;
  const v = opts.preallocation === undefined ? "off" : String(opts.preallocation);
  const expected = `expected ${allowed.length > 1 ? `${allowed.slice(0, -1).join(", ")} or ${allowed.at(-1)}` : allowed[0]}`;
  if (!(PREALLOC_MODES as readonly string[]).includes(v)) {
    throw new BlockError("EINVAL", `Invalid value '${v}' for option 'preallocation' of protocol '${driver}': ${expected}`, {
      qemuMessage: `invalid parameter value: ${v}`,
    });
  }
  if (!allowed.includes(v)) {
    throw new BlockError("ENOTSUP", `Cannot create with preallocation '${v}' on protocol '${driver}': ${expected}`, {
      qemuMessage: unsupported(v),
    });
  }
  return v;
}
