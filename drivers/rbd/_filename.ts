/**
 * QEMU's `rbd:` filename form:
 *
 *     rbd:pool/[namespace/]image[@snapshot][:key=value[:key=value…]]
 *
 * `conf=FILE` names the Ceph config to read, `id=USER` the client to
 * authenticate as; any other key is a Ceph option passed to
 * `rados_conf_set` in order (QEMU keeps them as a JSON list under
 * `=keyvalue-pairs`, and so does this parser, so `json:` filenames QEMU
 * wrote open here too). A backslash escapes the next character (`\:`, `\@`,
 * `\/`, `\=`).
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";

/** Options a `rbd:` filename stands for (QEMU's BlockdevOptionsRbd keys). */
export interface RbdLocation {
  /** Pool name. */
  pool: string;
  /** RADOS namespace ("" for the default one). */
  namespace: string;
  /** Image name. */
  image: string;
  /** Snapshot to open (read-only). */
  snapshot?: string;
  /** Ceph config file. */
  conf?: string;
  /** Ceph user (the client name without `client.`). */
  user?: string;
  /** Further Ceph options as a JSON list `["key1","value1",…]`. */
  "=keyvalue-pairs"?: string;
}

/** Index of the first unescaped `delim` in `s`, or -1. */
function findUnescaped(s: string, delim: string): number {
  for (let i = 0; i < s.length; i++) {
    if (s[i] === delim) return i;
    if (s[i] === "\\" && i + 1 < s.length) i++;
  }
  return -1;
}

/** Splits at the first unescaped `delim`: [before, after] (after undefined when absent). */
function nextToken(s: string, delim: string): [string, string | undefined] {
  const at = findUnescaped(s, delim);
  return at < 0 ? [s, undefined] : [s.slice(0, at), s.slice(at + 1)];
}

/** Drops the backslash of every escape (`\x` → `x`; a trailing `\` stays). */
export function unescapeRbd(s: string): string {
  let out = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "\\" && i + 1 < s.length) i++;
    out += s[i];
  }
  return out;
}

/**
 * Escapes what the filename form treats specially (`\`, `:`, `@`, `/`, `=`).
 *
 * @example
 * ```ts
 * import { escapeRbd, parseRbdFilename } from "@blkgraph/blkgraph/drivers/rbd";
 * const name = `rbd:rbd/${escapeRbd("vm:1")}:conf=${escapeRbd("/etc/ceph/ceph.conf")}`;
 * console.log(name); // rbd:rbd/vm\:1:conf=\/etc\/ceph\/ceph.conf
 * console.log(parseRbdFilename(name).image); // vm:1
 * ```
 */
export function escapeRbd(s: string): string {
  return s.replace(/[\\:@/=]/g, (c) => "\\" + c);
}

function invalid(filename: string, why: string): never {
  throw new BlockError("EINVAL", `Invalid rbd filename '${filename}': ${why}`);
}

/**
 * Parses `rbd:pool/[namespace/]image[@snap][:key=value…]` into driver
 * options, as QEMU's `qemu_rbd_parse_filename` does.
 *
 * @example
 * ```ts
 * import { parseRbdFilename } from "@blkgraph/blkgraph/drivers/rbd";
 * const o = parseRbdFilename("rbd:rbd/disk@snap1:conf=/etc/ceph/ceph.conf:id=admin:rbd_cache=false");
 * console.log(o.pool, o.image, o.snapshot, o.conf, o.user); // rbd disk snap1 /etc/ceph/ceph.conf admin
 * console.log(o["=keyvalue-pairs"]); // ["rbd_cache","false"]
 * ```
 */
export function parseRbdFilename(filename: string): RbdLocation {
  if (!filename.startsWith("rbd:")) invalid(filename, "it must start with 'rbd:'");
  let rest: string | undefined = filename.slice(4);
  const [poolTok, afterPool] = nextToken(rest, "/");
  if (afterPool === undefined) invalid(filename, "the pool name is required (rbd:pool/image)");
  const pool = unescapeRbd(poolTok);
  if (!pool) invalid(filename, "the pool name is empty");
  rest = afterPool;
  let imageTok: string;
  let snapshot: string | undefined;
  if (findUnescaped(rest, "@") >= 0) {
    [imageTok, rest] = nextToken(rest, "@");
    let snapTok: string;
    [snapTok, rest] = nextToken(rest!, ":");
    snapshot = unescapeRbd(snapTok);
    if (!snapshot) invalid(filename, "the snapshot name after '@' is empty");
  } else {
    [imageTok, rest] = nextToken(rest, ":");
  }
  let namespace = "";
  if (findUnescaped(imageTok, "/") >= 0) {
    const [nsTok, img] = nextToken(imageTok, "/");
    namespace = unescapeRbd(nsTok);
    imageTok = img!;
  }
  const image = unescapeRbd(imageTok);
  if (!image) invalid(filename, "the image name is empty");
  const out: RbdLocation = { pool, namespace, image };
  if (snapshot !== undefined) out.snapshot = snapshot;
  const pairs: string[] = [];
  while (rest !== undefined) {
    let nameTok: string;
    [nameTok, rest] = nextToken(rest, "=");
    const name = unescapeRbd(nameTok);
    if (rest === undefined) invalid(filename, `Ceph option '${name}' has no value`);
    if (!name) invalid(filename, "a Ceph option name is empty");
    let valueTok: string;
    [valueTok, rest] = nextToken(rest, ":");
    const value = unescapeRbd(valueTok);
    if (name === "conf") out.conf = value;
    else if (name === "id") out.user = value;
    else pairs.push(name, value);
  }
  if (pairs.length) out["=keyvalue-pairs"] = JSON.stringify(pairs);
  return out;
}

/** Reads `=keyvalue-pairs` back into [key, value] pairs; bad JSON is a clear EINVAL. */
export function keyValuePairs(json: unknown): [string, string][] {
  if (json === undefined || json === null) return [];
  let list: unknown;
  try {
    list = typeof json === "string" ? JSON.parse(json) : json;
  } catch {
    throw new BlockError("EINVAL", `Invalid value '${String(json)}' for option '=keyvalue-pairs' of driver 'rbd': expected a JSON list`);
  }
  if (!Array.isArray(list) || list.length % 2 !== 0 || !list.every((v) => typeof v === "string")) {
    throw new BlockError(
      "EINVAL",
      `Invalid value '${JSON.stringify(list)}' for option '=keyvalue-pairs' of driver 'rbd': expected a list of key and value strings`,
    );
  }
  const out: [string, string][] = [];
  for (let i = 0; i < list.length; i += 2) out.push([list[i], list[i + 1]]);
  return out;
}
