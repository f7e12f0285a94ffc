/**
 * The `overlap-check` option of qcow2 nodes (QEMU's names and defaults): the
 * structure bits (`QCOW2_OL_*`), the templates, the per-structure option
 * names and the parser that turns a node's options into the mask the
 * checks of `_overlap.ts` (which re-exports all of this) compare against.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";

/** QCOW2_OL_MAIN_HEADER: the first cluster. */
export const OL_MAIN_HEADER = 1 << 0;
/** QCOW2_OL_ACTIVE_L1. */
export const OL_ACTIVE_L1 = 1 << 1;
/** QCOW2_OL_ACTIVE_L2. */
export const OL_ACTIVE_L2 = 1 << 2;
/** QCOW2_OL_REFCOUNT_TABLE. */
export const OL_REFCOUNT_TABLE = 1 << 3;
/** QCOW2_OL_REFCOUNT_BLOCK. */
export const OL_REFCOUNT_BLOCK = 1 << 4;
/** QCOW2_OL_SNAPSHOT_TABLE. */
export const OL_SNAPSHOT_TABLE = 1 << 5;
/** QCOW2_OL_INACTIVE_L1: the snapshots' L1 tables. */
export const OL_INACTIVE_L1 = 1 << 6;
/** QCOW2_OL_INACTIVE_L2: the L2 tables the snapshots' L1 tables point at. */
export const OL_INACTIVE_L2 = 1 << 7;
/** QCOW2_OL_BITMAP_DIRECTORY. */
export const OL_BITMAP_DIRECTORY = 1 << 8;

/** QCOW2_OL_CONSTANT: structures whose place is known without reading tables. */
export const OL_CONSTANT = OL_MAIN_HEADER | OL_ACTIVE_L1 | OL_REFCOUNT_TABLE | OL_SNAPSHOT_TABLE | OL_BITMAP_DIRECTORY;
/** QCOW2_OL_CACHED: also what the in-memory tables name (the default). */
export const OL_CACHED = OL_CONSTANT | OL_ACTIVE_L2 | OL_REFCOUNT_BLOCK | OL_INACTIVE_L1;
/** QCOW2_OL_ALL: also the snapshots' L2 tables (read from the file). */
export const OL_ALL = OL_CACHED | OL_INACTIVE_L2;

/** The templates of the `overlap-check` option. */
export const OVERLAP_TEMPLATES: Readonly<Record<string, number>> = { none: 0, constant: OL_CONSTANT, cached: OL_CACHED, all: OL_ALL };

/** Per-structure option names (`overlap-check.<name>`), by bit number. */
export const OVERLAP_OPTION_NAMES: readonly string[] = [
  "main-header",
  "active-l1",
  "active-l2",
  "refcount-table",
  "refcount-block",
  "snapshot-table",
  "inactive-l1",
  "inactive-l2",
  "bitmap-directory",
];

/** QEMU's metadata_ol_names, by bit number (its messages say these). */
export const OVERLAP_NAMES: readonly string[] = [
  "qcow2_header",
  "active L1 table",
  "active L2 table",
  "refcount table",
  "refcount block",
  "snapshot table",
  "inactive L1 table",
  "inactive L2 table",
  "bitmap directory",
];

/** The qcow2 options this module reads. */
export const OVERLAP_OPTIONS: readonly string[] = ["overlap-check"];

function invalidValue(value: unknown): BlockError {
  return new BlockError(
    "EINVAL",
    `Unsupported value '${String(value)}' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all`,
  );
}

function boolValue(key: string, v: unknown): boolean {
  if (typeof v === "boolean") return v;
  const s = String(v).toLowerCase();
  if (["on", "true", "yes", "1"].includes(s)) return true;
  if (["off", "false", "no", "0"].includes(s)) return false;
  throw new BlockError("EINVAL", `Invalid value '${String(v)}' for qcow2 option 'overlap-check.${key}': expected on or off`);
}

/**
 * The overlap-check mask from a qcow2 node's options: `overlap-check` is a
 * template name, or an object with `template` and per-structure booleans
 * (QEMU's dotted `overlap-check.template=all,overlap-check.main-header=off`).
 *
 * @example
 * ```ts
 * import { OL_CACHED, parseOverlapOptions } from "./_overlap_options.ts";
 * console.log(parseOverlapOptions({}) === OL_CACHED); // true
 * console.log(parseOverlapOptions({ "overlap-check": { template: "none", "active-l1": "on" } })); // 2
 * ```
 */
export function parseOverlapOptions(options: Record<string, unknown>): number {
  const v = options["overlap-check"];
  if (v === undefined || v === null) return OL_CACHED;
  if (typeof v === "string") {
    const t = OVERLAP_TEMPLATES[v];
    if (t === undefined || !Object.hasOwn(OVERLAP_TEMPLATES, v)) throw invalidValue(v);
    return t;
  }
  if (typeof v !== "object" || Array.isArray(v)) throw invalidValue(JSON.stringify(v));
  const o = v as Record<string, unknown>;
  let mask = OL_CACHED;
  for (const key of Object.keys(o)) {
    if (key !== "template" && !OVERLAP_OPTION_NAMES.includes(key)) {
      throw new BlockError(
        "EINVAL",
        `Unknown option 'overlap-check.${key}' for driver 'qcow2' (known: template, ${OVERLAP_OPTION_NAMES.join(", ")})`,
      );
    }
  }
  if (o.template !== undefined) {
    const t = String(o.template);
    if (!Object.hasOwn(OVERLAP_TEMPLATES, t)) throw invalidValue(t);
    mask = OVERLAP_TEMPLATES[t];
  }
  OVERLAP_OPTION_NAMES.forEach((name, bit) => {
    if (o[name] === undefined) return;
    mask = boolValue(name, o[name]) ? mask | (1 << bit) : mask & ~(1 << bit);
  });
  return mask;
}
