/**
 * blkdebug rules: parsing QEMU's ini-style config file (`[inject-error]`
 * and `[set-state]` sections) and the inline `inject-error` / `set-state`
 * option lists into validated {@linkcode BlkdebugRule}s.
 *
 * @module
 */

import { BlockError, type ErrnoCode, errnoCode } from "../core/errors.ts";
import { BLKDBG_EVENTS, type BlkdebugEvent, isBlkdebugEvent } from "../core/events.ts";
import { optSize, optString } from "../core/options.ts";
import { isPlainObject } from "../core/spec.ts";
import type { BlockLimits } from "../core/types.ts";

/** The request types an inject-error rule can match (QEMU's BlkdebugIOType). */
export const BLKDEBUG_IO_TYPES = ["read", "write", "write-zeroes", "discard", "flush", "block-status"] as const;

/** One request type an inject-error rule matches. */
export type BlkdebugIoType = typeof BLKDEBUG_IO_TYPES[number];

/** Bit for each I/O type in {@linkcode InjectErrorRule.iotypeMask}. */
export const IOTYPE_BIT: Readonly<Record<BlkdebugIoType, number>> = {
  read: 1,
  write: 2,
  "write-zeroes": 4,
  discard: 8,
  flush: 16,
  "block-status": 32,
};

/** QEMU's default: every type except block-status. */
export const DEFAULT_IOTYPE_MASK = 1 | 2 | 4 | 8 | 16;

/** An `[inject-error]` rule: arms an error for the next matching requests. */
export interface InjectErrorRule {
  /** Rule kind. */
  readonly action: "inject-error";
  /** The event that arms the rule. */
  readonly event: BlkdebugEvent;
  /** State the rule applies in (0 = any state). */
  readonly state: number;
  /** The error code requests fail with. */
  readonly code: ErrnoCode;
  /** Byte offset a request must cover (sector × 512), or -1 for any. */
  readonly offset: number;
  /** Remove the rule after its first failure. */
  readonly once: boolean;
  /** Fail without yielding to the event loop first. */
  readonly immediately: boolean;
  /** Request types the rule matches (bits of {@linkcode IOTYPE_BIT}). */
  readonly iotypeMask: number;
}

/** A `[set-state]` rule: moves the state machine to `newState`. */
export interface SetStateRule {
  /** Rule kind. */
  readonly action: "set-state";
  /** The event that fires the rule. */
  readonly event: BlkdebugEvent;
  /** State the rule applies in (0 = any state). */
  readonly state: number;
  /** The state to switch to. */
  readonly newState: number;
}

/** A rule from the config file or the inline options. */
export type BlkdebugRule = InjectErrorRule | SetStateRule;

/** Maps QEMU's older dotted spellings (`l1_grow.alloc_table`) to the event names (`l1_grow_alloc_table`). */
export function normaliseEventName(name: string): string {
  if (isBlkdebugEvent(name)) return name;
  const alt = name.replaceAll(".", "_");
  return isBlkdebugEvent(alt) ? alt : name;
}

const INJECT_KEYS = ["event", "state", "errno", "sector", "once", "immediately", "iotype"];
const SET_STATE_KEYS = ["event", "state", "new_state"];

function invalid(where: string, message: string): never {
  throw new BlockError("EINVAL", `Invalid blkdebug rule (${where}): ${message}`);
}

function intValue(where: string, key: string, v: unknown, min: number): number {
  const n = typeof v === "number" ? v : typeof v === "string" && /^\s*-?\d+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min) invalid(where, `'${key}' must be an integer >= ${min}, got '${String(v)}'`);
  return n;
}

function boolValue(where: string, key: string, v: unknown): boolean {
  if (typeof v === "boolean") return v;
  const s = String(v).toLowerCase();
  if (["on", "true", "yes", "1"].includes(s)) return true;
  if (["off", "false", "no", "0"].includes(s)) return false;
  return invalid(where, `'${key}' must be on or off, got '${String(v)}'`);
}

/**
 * Validates one rule given as key/value pairs (`section` is `inject-error`
 * or `set-state`); `where` names its origin in error messages.
 *
 * @example
 * ```ts
 * import { parseRule } from "./_blkdebug_config.ts";
 * const rule = parseRule("inject-error", { event: "l2_update", errno: "ENOSPC", once: "on" }, "inline");
 * console.log(rule.action); // "inject-error"
 * ```
 */
export function parseRule(section: "inject-error" | "set-state", fields: Record<string, unknown>, where: string): BlkdebugRule {
  const known = section === "inject-error" ? INJECT_KEYS : SET_STATE_KEYS;
  for (const k of Object.keys(fields)) {
    if (!known.includes(k)) invalid(where, `unknown key '${k}' in [${section}] (known keys: ${known.join(", ")})`);
  }
  const ev = fields.event;
  if (ev === undefined || ev === null || ev === "") invalid(where, `missing 'event' in [${section}]`);
  const evName = normaliseEventName(String(ev));
  if (!isBlkdebugEvent(evName)) {
    invalid(where, `unknown event '${evName}' (known events: ${BLKDBG_EVENTS.join(", ")})`);
  }
  const state = fields.state === undefined ? 0 : intValue(where, "state", fields.state, 0);
  if (section === "set-state") {
    const newState = fields.new_state === undefined ? 0 : intValue(where, "new_state", fields.new_state, 0);
    return { action: "set-state", event: evName, state, newState };
  }
  let code: ErrnoCode = "EIO";
  if (fields.errno !== undefined) {
    const raw = fields.errno;
    const found = typeof raw === "number" || typeof raw === "string" ? errnoCode(raw) : undefined;
    if (!found) invalid(where, `unknown errno '${String(raw)}' (give a number such as 5 or a name such as EIO or ENOSPC)`);
    code = found;
  }
  const sector = fields.sector === undefined ? -1 : intValue(where, "sector", fields.sector, -1);
  let iotypeMask = DEFAULT_IOTYPE_MASK;
  if (fields.iotype !== undefined) {
    const t = String(fields.iotype);
    if (!(t in IOTYPE_BIT)) invalid(where, `unknown iotype '${t}' (known types: ${BLKDEBUG_IO_TYPES.join(", ")})`);
    iotypeMask = IOTYPE_BIT[t as BlkdebugIoType];
  }
  return {
    action: "inject-error",
    event: evName,
    state,
    code,
    offset: sector === -1 ? -1 : sector * 512,
    once: fields.once === undefined ? false : boolValue(where, "once", fields.once),
    immediately: fields.immediately === undefined ? false : boolValue(where, "immediately", fields.immediately),
    iotypeMask,
  };
}

/**
 * Parses the text of a QEMU blkdebug config file: `[inject-error]` and
 * `[set-state]` sections of `key = "value"` lines (bare values are accepted
 * too), `#` comment lines and blank lines.
 *
 * @example
 * ```ts
 * import { parseBlkdebugConfig } from "@blkgraph/blkgraph/filters/blkdebug";
 * const rules = parseBlkdebugConfig('[inject-error]\nevent = "l2_load"\nerrno = "28"\n');
 * console.log(rules.length); // 1
 * ```
 */
export function parseBlkdebugConfig(text: string, filename = "config"): BlkdebugRule[] {
  const rules: BlkdebugRule[] = [];
  let section: "inject-error" | "set-state" | undefined;
  let fields: Record<string, unknown> = {};
  let sectionLine = 0;
  const finish = () => {
    if (section) rules.push(parseRule(section, fields, `${filename} line ${sectionLine}`));
  };
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    const lineNo = i + 1;
    if (line === "" || line.startsWith("#")) continue;
    const head = /^\[\s*([^\]\s"]+)(?:\s+"[^"]*")?\s*\]$/.exec(line);
    if (head) {
      finish();
      const name = head[1];
      if (name !== "inject-error" && name !== "set-state") {
        invalid(`${filename} line ${lineNo}`, `unknown section [${name}] (expected [inject-error] or [set-state])`);
      }
      section = name;
      fields = {};
      sectionLine = lineNo;
      continue;
    }
    const kv = /^([A-Za-z0-9_-]+)\s*=\s*(.*)$/.exec(line);
    if (!kv) invalid(`${filename} line ${lineNo}`, `cannot parse '${line}' (expected key = "value" or [section])`);
    if (!section) invalid(`${filename} line ${lineNo}`, `'${kv[1]}' appears before any [inject-error] or [set-state] section`);
    let value = kv[2].trim();
    if (value.startsWith('"')) {
      const end = value.indexOf('"', 1);
      if (end < 0) invalid(`${filename} line ${lineNo}`, `unterminated quoted value in '${line}'`);
      value = value.slice(1, end);
    } else {
      const hash = value.indexOf("#");
      if (hash >= 0) value = value.slice(0, hash).trim();
    }
    if (kv[1] in fields) invalid(`${filename} line ${lineNo}`, `key '${kv[1]}' is given twice in one section`);
    fields[kv[1]] = value;
  }
  finish();
  return rules;
}

/**
 * Parses an inline rule list (`inject-error` or `set-state` option): an
 * array of objects, a single object, or a JSON string of either.
 */
export function parseInlineRules(section: "inject-error" | "set-state", value: unknown): BlkdebugRule[] {
  if (value === undefined || value === null) return [];
  let v = value;
  if (typeof v === "string") {
    try {
      v = JSON.parse(v);
    } catch {
      invalid(`option '${section}'`, `expected a list of rule objects, got '${value}'`);
    }
  }
  const list = Array.isArray(v) ? v : [v];
  return list.map((item, i) => {
    if (!isPlainObject(item)) invalid(`option '${section}.${i}'`, `expected an object with 'event', got ${JSON.stringify(item)}`);
    return parseRule(section, item, `option '${section}.${i}'`);
  });
}

const LIMIT_KEYS: readonly [string, keyof BlockLimits][] = [
  ["max-transfer", "maxTransfer"],
  ["opt-write-zero", "optWriteZero"],
  ["max-write-zero", "maxWriteZero"],
  ["opt-discard", "optDiscard"],
  ["max-discard", "maxDiscard"],
];

/** Option keys the blkdebug driver accepts (besides its child). */
export const BLKDEBUG_OPTIONS: readonly string[] = [
  "config",
  "inject-error",
  "set-state",
  "align",
  ...LIMIT_KEYS.map(([k]) => k),
  "take-child-perms",
  "share-child-perms",
  "x-image",
];

const INT_MAX = 2 ** 31 - 1;

/** Reads the rules of a blkdebug node: its config file, then the inline lists. */
export async function readBlkdebugRules(o: Record<string, unknown>): Promise<BlkdebugRule[]> {
  const rules: BlkdebugRule[] = [];
  const config = optString(o, "config", "blkdebug");
  if (config) {
    let text: string;
    try {
      text = await Deno.readTextFile(config);
    } catch (e) {
      throw new BlockError("ENOENT", `Could not read blkdebug config file '${config}': ${(e as Error).message}`, { cause: e });
    }
    rules.push(...parseBlkdebugConfig(text, config));
  }
  rules.push(...parseInlineRules("inject-error", o["inject-error"]));
  rules.push(...parseInlineRules("set-state", o["set-state"]));
  return rules;
}

/** Reads and checks the `align` option (0 = none), as QEMU: a power of two below 2^31. */
export function readBlkdebugAlign(o: Record<string, unknown>): number {
  const align = optSize(o, "align", "blkdebug") ?? 0;
  if (align && (align >= INT_MAX || (align & (align - 1)) !== 0)) {
    throw new BlockError(
      "EINVAL",
      `Invalid option 'align' of driver 'blkdebug': cannot meet constraints with align ${align} (must be a power of two)`,
    );
  }
  return align;
}

/** Builds the node's limits from the size options; each must be a multiple of the alignment in force. */
export function readBlkdebugLimits(o: Record<string, unknown>, reqAlign: number): Partial<BlockLimits> {
  const limits: Partial<BlockLimits> = { requestAlignment: reqAlign };
  for (const [key, field] of LIMIT_KEYS) {
    const v = optSize(o, key, "blkdebug") ?? 0;
    const base = field === "maxWriteZero"
      ? Math.max(limits.optWriteZero ?? 0, reqAlign)
      : field === "maxDiscard"
      ? Math.max(limits.optDiscard ?? 0, reqAlign)
      : reqAlign;
    if (v && (v >= INT_MAX || v % base !== 0)) {
      throw new BlockError(
        "EINVAL",
        `Invalid option '${key}' of driver 'blkdebug': cannot meet constraints with ${key} ${v} (must be a multiple of ${base})`,
      );
    }
    limits[field] = v;
  }
  return limits;
}

/** QEMU's blkdebug_refresh_filename: `blkdebug:CONFIG:IMAGE` when nothing but the config file and the image was given. */
export function blkdebugExactFilename(
  { options, full, child }: {
    options: Record<string, unknown>;
    full: Record<string, unknown>;
    child: (role: string) => string | undefined;
  },
): string | undefined {
  const image = child("image");
  if (image === undefined || !Object.keys(full).every((k) => ["config", "image", "x-image", "driver"].includes(k))) return undefined;
  return `blkdebug:${options.config ?? ""}:${image}`;
}

/** Parses `blkdebug:CONFIG:IMAGE` (CONFIG may be empty) into the driver's options. */
export function parseBlkdebugFilename(filename: string): Record<string, unknown> {
  const rest = filename.slice("blkdebug:".length);
  const colon = rest.indexOf(":");
  if (!filename.startsWith("blkdebug:") || colon < 0) {
    throw new BlockError(
      "EINVAL",
      `Invalid blkdebug filename '${filename}': blkdebug requires both config file and image path (blkdebug:CONFIG:IMAGE)`,
    );
  }
  const config = rest.slice(0, colon);
  const out: Record<string, unknown> = { image: { filename: rest.slice(colon + 1) } };
  if (config) out.config = config;
  return out;
}
