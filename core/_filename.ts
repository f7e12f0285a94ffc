/**
 * A node's refreshed filename (QEMU's bdrv_refresh_filename): the name a
 * user could open to get this very graph back. A protocol node keeps the
 * filename it was opened with, or builds one (`nbd://host:port/export`,
 * `null-co://`, `blkdebug:CONF:IMAGE`) through its driver's
 * `exactFilename`; a format node takes its primary child's name when that
 * child is a protocol node and no strong option (one that changes what the
 * guest sees: raw's `offset`, qcow2's `encrypt.key-secret`) was given. Any
 * other node is named by `json:{...}` of its strong options and its
 * children's, in QEMU's key order (its QDict's hash buckets), so the text
 * is the one qemu-img prints.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { BlockNode } from "./node.ts";

/** A node's refreshed names. */
export interface RefreshedFilename {
  /** The plain name that reopens the graph, when there is one (QEMU's exact_filename). */
  exact?: string;
  /** The strong options of the node and its children (QEMU's full_open_options). */
  full: Record<string, unknown>;
  /** `exact`, or `json:` and `full` as JSON. */
  filename: string;
}

/** QEMU's QDict hash (tdb_hash), which decides the order qobject_to_json prints keys in. */
function tdbHash(name: string): number {
  const bytes = new TextEncoder().encode(name);
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) value = (value + ((bytes[i] << ((i * 5) % 24)) >>> 0)) >>> 0;
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

const QDICT_BUCKETS = 512;

/** The keys of `d` in the order a QDict built by inserting them in this order iterates them. */
function qdictOrder(d: Record<string, unknown>): string[] {
  const keys = Object.keys(d);
  const pos = new Map(keys.map((k, i) => [k, i]));
  // Bucket by bucket; inside a bucket the newest entry comes first (QLIST_INSERT_HEAD).
  return keys.sort((a, b) => (tdbHash(a) % QDICT_BUCKETS) - (tdbHash(b) % QDICT_BUCKETS) || pos.get(b)! - pos.get(a)!);
}

/** JSON as QEMU's qobject_to_json writes it: `{"k": v, ...}` with its key order. */
export function qobjectJson(v: unknown): string {
  if (v === null || typeof v !== "object") return JSON.stringify(v ?? null);
  if (Array.isArray(v)) return `[${v.map(qobjectJson).join(", ")}]`;
  const d = v as Record<string, unknown>;
  return `{${qdictOrder(d).map((k) => `${JSON.stringify(k)}: ${qobjectJson(d[k])}`).join(", ")}}`;
}

/** Options copied into every node's full options, but not counted as strong (QEMU's global_options). */
const GLOBAL_OPTIONS = ["driver", "filename"];

/** The node's strong options, in QEMU's order: `driver`, `filename`, then the driver's list; whether any driver one was set. */
function strongOptions(node: BlockNode): { opts: Record<string, unknown>; found: boolean } {
  const opts: Record<string, unknown> = { driver: node.driver.name };
  const given = flatten(node.options);
  if (given.filename !== undefined) opts.filename = given.filename;
  let found = false;
  for (const name of node.driver.strongOptions ?? []) {
    for (const [k, v] of Object.entries(given)) {
      if (GLOBAL_OPTIONS.includes(k) || v === undefined) continue;
      if (name.endsWith(".") ? k.startsWith(name) : k === name) {
        opts[k] = v;
        found = true;
      }
    }
  }
  return { opts, found };
}

/**
 * Nested options as QEMU keeps them (qdict_flatten): flat, with dotted keys
 * (`encrypt.key-secret`); a list's items are numbered (`set-state.0.event`).
 */
function flatten(
  o: Readonly<Record<string, unknown>> | readonly unknown[],
  prefix = "",
  out: Record<string, unknown> = {},
): Record<string, unknown> {
  for (const [k, v] of Object.entries(o)) {
    if (Array.isArray(v) || (v !== null && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype)) {
      flatten(v as Record<string, unknown>, `${prefix}${k}.`, out);
    } else out[`${prefix}${k}`] = v;
  }
  return out;
}

/**
 * Refreshes `node`'s filename as QEMU's bdrv_refresh_filename does (see the
 * module documentation).
 *
 * @example
 * ```ts
 * import { open } from "../mod.ts";
 * import { refreshFilename } from "./_filename.ts";
 * await using a = await open({ driver: "raw", file: { driver: "null-co" } });
 * console.log(refreshFilename(a).filename); // null-co://
 * await using b = await open({ driver: "raw", offset: 512, file: { driver: "null-co" } });
 * console.log(refreshFilename(b).filename); // json:{"offset": 512, "driver": "raw", "file": {"driver": "null-co"}}
 * ```
 */
export function refreshFilename(node: BlockNode): RefreshedFilename {
  const children = new Map<string, RefreshedFilename>();
  for (const [role, child] of node.children) {
    // The backing file the image names itself is not part of the name (QEMU skips a backing child not overridden).
    if (role === "backing") continue;
    children.set(role, refreshFilename(child));
  }
  const { opts, found } = strongOptions(node);
  for (const [role, r] of children) {
    // Children of a list key (quorum's `children.0`, `children.1`) go back into that list, in order (quorum_gather_child_options).
    const item = /^(.+)\.(\d+)$/.exec(role);
    if (item && node.driver.childKeys?.includes(item[1])) ((opts[item[1]] ??= []) as unknown[])[Number(item[2])] = r.full;
    else opts[role] = r.full;
  }
  const drv = node.driver;
  let exact: string | undefined;
  if (drv.exactFilename) {
    exact = drv.exactFilename({ options: node.options, full: opts, child: (role) => children.get(role)?.exact });
  } else if (node.children.size === 0) {
    // A protocol node keeps the filename it was opened with.
    exact = typeof node.options.filename === "string" ? node.options.filename : undefined;
  } else {
    const role = drv.primaryChildRole ?? "file";
    const primary = node.children.get(role);
    const r = children.get(role);
    if (primary && r?.exact && opensAsProtocol(primary) && drv.kind !== "filter" && !found) exact = r.exact;
  }
  return { exact, full: opts, filename: exact ?? `json:${qobjectJson(opts)}` };
}

/**
 * The directory relative names in `node` are resolved against (QEMU's
 * bdrv_dirname): the driver's own rule (quorum has none: its children may
 * lie in different directories), else its primary child's, else the
 * directory part of its exact filename, with a trailing `/` (`""` for a
 * bare name, which resolves against the working directory). A node with
 * neither fails with EINVAL, "Cannot generate a base directory for
 * DRIVER nodes".
 *
 * @example
 * ```ts
 * import { open } from "../mod.ts";
 * import { nodeDirname } from "./_filename.ts";
 * await using img = await open({ driver: "raw", file: { driver: "null-co" } });
 * console.log(nodeDirname(img)); // null-co://
 * await using q = await open({ driver: "quorum", "vote-threshold": 1, children: [{ driver: "null-co" }] });
 * try {
 *   nodeDirname(q);
 * } catch (e) {
 *   console.log((e as Error).message); // Cannot generate a base directory for quorum nodes
 * }
 * ```
 */
export function nodeDirname(node: BlockNode): string {
  const drv = node.driver;
  if (drv.dirname) return drv.dirname(node);
  const child = node.primaryChild;
  if (child) return nodeDirname(child);
  const exact = refreshFilename(node).exact;
  if (exact !== undefined) return dirPart(exact);
  throw new BlockError("EINVAL", `Cannot generate a base directory for ${drv.name} nodes`, { node: node.name });
}

/**
 * `name` made absolute against `node`'s directory (QEMU's
 * bdrv_make_absolute_filename): a protocol name or an absolute path as is.
 */
export function absoluteFilename(node: BlockNode, name: string): string {
  // QEMU's path_has_protocol: a `:` before any `/`.
  if (name.startsWith("/") || /^[^/]*:/.test(name)) return name;
  return nodeDirname(node) + name;
}

/**
 * The directory part of a filename with its trailing `/`, and never less
 * than its protocol prefix, when it has one (QEMU's path_combine(name, "")).
 */
function dirPart(name: string): string {
  const proto = /^[^/]*:/.exec(name);
  return name.slice(0, Math.max(proto ? proto[0].length : 0, name.lastIndexOf("/") + 1));
}

/** The node was opened as a protocol (QEMU's bdrv_file_open): a protocol driver, or a filter that parses a filename prefix (blkdebug). */
function opensAsProtocol(node: BlockNode): boolean {
  return node.driver.kind === "protocol" || node.driver.protocolPrefix !== undefined;
}
