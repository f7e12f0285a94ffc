/**
 * Graph specs in QEMU's three spellings: a blockdev object, the dotted key
 * string (`driver=raw,file.driver=file,file.filename=a.img`) and `json:{...}`
 * filenames. All three normalise to one nested options object.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { Options } from "./options.ts";

/**
 * Parses QEMU's dotted key=value syntax into a nested object. Commas inside a
 * value are written `,,`. A bare first item (no `=`) is taken as
 * `implied` (for example a filename), as QEMU's `-drive` does.
 *
 * @example
 * ```ts
 * import { parseDotted } from "@blkgraph/blkgraph";
 * console.log(parseDotted("driver=raw,file.driver=file,file.filename=a.img"));
 * // { driver: "raw", file: { driver: "file", filename: "a.img" } }
 * ```
 */
export function parseDotted(text: string, implied?: string): Options {
  const flat: Record<string, string> = {};
  let i = 0;
  let first = true;
  while (i <= text.length) {
    let item = "";
    while (i < text.length) {
      const c = text[i];
      if (c === ",") {
        if (text[i + 1] === ",") {
          item += ",";
          i += 2;
          continue;
        }
        break;
      }
      item += c;
      i++;
    }
    i++;
    if (item === "" && i > text.length) break;
    const eq = item.indexOf("=");
    if (eq < 0) {
      if (first && implied) {
        flat[implied] = item;
      } else {
        throw new BlockError("EINVAL", `Invalid option string '${text}': item '${item}' has no '=' (expected key=value)`);
      }
    } else {
      const key = item.slice(0, eq);
      if (key === "") throw new BlockError("EINVAL", `Invalid option string '${text}': empty key in '${item}'`);
      if (key in flat) throw new BlockError("EINVAL", `Invalid option string '${text}': key '${key}' is given twice`);
      flat[key] = item.slice(eq + 1);
    }
    first = false;
  }
  return unflatten(flat);
}

/**
 * Turns `{"file.driver": "file"}` into `{file: {driver: "file"}}`, merging
 * with nested objects already present. Numeric keys make arrays
 * (`inject-error.0.event`).
 */
export function unflatten(input: Record<string, unknown>): Options {
  const out: Options = {};
  for (const [key, value] of Object.entries(input)) {
    const v = isPlainObject(value) ? unflatten(value) : value;
    const parts = key.split(".");
    let obj: Record<string, unknown> = out;
    for (let p = 0; p < parts.length - 1; p++) {
      const part = parts[p];
      const cur = obj[part];
      if (cur === undefined) obj[part] = {};
      else if (!isPlainObject(cur)) {
        throw new BlockError("EINVAL", `Invalid options: '${parts.slice(0, p + 1).join(".")}' is both a value and an object`);
      }
      obj = obj[part] as Record<string, unknown>;
    }
    const last = parts[parts.length - 1];
    const prev = obj[last];
    if (isPlainObject(prev) && isPlainObject(v)) {
      Object.assign(prev, v);
    } else {
      obj[last] = v;
    }
  }
  return arrayify(out) as Options;
}

/** True for `{}`-style objects (not arrays, nodes or other class instances). */
export function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== "object") return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function arrayify(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(arrayify);
  if (!isPlainObject(v)) return v;
  const obj = v;
  const keys = Object.keys(obj);
  for (const k of keys) obj[k] = arrayify(obj[k]);
  if (keys.length && keys.every((k, i) => k === String(i))) return keys.map((k) => obj[k]);
  return obj;
}

/**
 * Parses a `json:{...}` filename into options (flattened keys allowed).
 *
 * @example
 * ```ts
 * import { parseJsonFilename } from "@blkgraph/blkgraph";
 * console.log(parseJsonFilename('json:{"driver":"qcow2","file.filename":"a.qcow2"}'));
 * ```
 */
export function parseJsonFilename(text: string): Options {
  const body = text.slice("json:".length);
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch (e) {
    throw new BlockError("EINVAL", `Invalid json: filename '${text}': ${(e as Error).message}`, { cause: e });
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new BlockError("EINVAL", `Invalid json: filename '${text}': expected a JSON object`);
  }
  return unflatten(parsed as Record<string, unknown>);
}

/** A graph spec: an options object, a `json:` filename, dotted options, or a filename. */
export type BlockSpec = string | Options;

/** Tells whether a string is in the dotted key=value syntax rather than a filename. */
export function looksDotted(text: string): boolean {
  return /^[a-zA-Z][\w.-]*=/.test(text) && /(^|,)(driver|file\.[\w.-]+|filename)=/.test(text);
}

/**
 * Normalises any spec spelling into a nested options object. A plain
 * filename becomes `{filename}` (the opener probes its format).
 */
export function normaliseSpec(spec: BlockSpec): Options {
  if (typeof spec !== "string") {
    if (spec === null || typeof spec !== "object" || Array.isArray(spec)) {
      throw new BlockError("EINVAL", `Invalid block spec: expected an object, a json: filename, key=value options or a filename`);
    }
    return unflatten({ ...spec });
  }
  if (spec === "") throw new BlockError("EINVAL", "Invalid block spec: empty filename");
  if (spec.startsWith("json:")) return parseJsonFilename(spec);
  if (looksDotted(spec)) return parseDotted(spec);
  return { filename: spec };
}
