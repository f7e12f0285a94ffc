/**
 * Secrets as QEMU names them: `--object secret,id=sec0,data=…|file=…
 * [,format=raw|base64]`. A driver option such as `key-secret=sec0` or
 * `encrypt.key-secret=sec0` names a secret by id; the driver asks for its
 * bytes with {@linkcode getSecret}, uses them and zeroes its copy.
 *
 * Secrets live in a process-wide table (QEMU's object tree). Their bytes are
 * never logged, traced or printed: errors name the secret's id only.
 *
 * @module
 */

import { BlockError } from "./errors.ts";

/** How a secret's `data` or file content is encoded. */
export type SecretFormat = "raw" | "base64";

/** Properties of a secret object. */
export interface SecretOptions {
  /** The secret inline. */
  data?: string;
  /** A file holding the secret (read once, when the secret is defined). */
  file?: string;
  /** Encoding of `data` or the file's content (default raw). */
  format?: SecretFormat;
}

const secrets = new Map<string, Uint8Array>();

/**
 * Defines the secret `id` (replacing none: an id is defined once, as QEMU's
 * object ids are unique).
 *
 * @example
 * ```ts
 * import { defineSecret, getSecret, removeSecret } from "@blkgraph/blkgraph";
 * defineSecret("sec-doc", { data: "c2VjcmV0", format: "base64" });
 * const key = getSecret("sec-doc");
 * console.log(new TextDecoder().decode(key)); // secret
 * key.fill(0);
 * removeSecret("sec-doc");
 * ```
 */
export function defineSecret(id: string, opts: SecretOptions): void {
  if (!/^[A-Za-z][A-Za-z0-9_.-]*$/.test(id)) {
    throw new BlockError(
      "EINVAL",
      `Invalid secret id '${id}': it must start with a letter and hold only letters, digits, '-', '.' and '_'`,
    );
  }
  if (secrets.has(id)) throw new BlockError("EEXIST", `Duplicate secret id '${id}': a secret with that id is already defined`);
  if ((opts.data === undefined) === (opts.file === undefined)) {
    throw new BlockError("EINVAL", `Invalid secret '${id}': give exactly one of 'data' and 'file'`);
  }
  const format = opts.format ?? "raw";
  if (format !== "raw" && format !== "base64") {
    throw new BlockError("EINVAL", `Invalid value '${String(format)}' for option 'format' of secret '${id}': expected raw or base64`);
  }
  let raw: Uint8Array;
  if (opts.data !== undefined) {
    raw = new TextEncoder().encode(opts.data);
  } else {
    try {
      raw = Deno.readFileSync(opts.file!);
    } catch (e) {
      throw new BlockError("ENOENT", `Cannot read secret '${id}' from file '${opts.file}': ${(e as Error).message}`);
    }
  }
  if (format === "base64") {
    const text = new TextDecoder().decode(raw).trim();
    raw.fill(0);
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
      throw new BlockError("EINVAL", `Invalid secret '${id}': its value is not valid base64`);
    }
    const bin = atob(text);
    raw = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) raw[i] = bin.charCodeAt(i);
  }
  secrets.set(id, raw);
}

/**
 * A copy of the secret `id`'s bytes; zero it (`fill(0)`) when done. An
 * unknown id is a clear EINVAL naming the option that referred to it.
 *
 * @example
 * ```ts
 * import { defineSecret, getSecret, removeSecret } from "@blkgraph/blkgraph";
 * defineSecret("example-key", { data: "hunter2" });
 * const key = getSecret("example-key");
 * console.log(new TextDecoder().decode(key)); // hunter2
 * key.fill(0);
 * removeSecret("example-key");
 * ```
 */
export function getSecret(id: string, option = "key-secret"): Uint8Array {
  const s = secrets.get(id);
  if (!s) {
    throw new BlockError("EINVAL", `No secret with id '${id}' found (named by option '${option}')`, {
      qemuMessage: `No secret with id '${id}'`,
    });
  }
  return s.slice();
}

/**
 * Whether a secret `id` is defined.
 *
 * @example
 * ```ts
 * import { defineSecret, hasSecret, removeSecret } from "@blkgraph/blkgraph";
 * defineSecret("example-has", { data: "x" });
 * console.log(hasSecret("example-has")); // true
 * removeSecret("example-has");
 * ```
 */
export function hasSecret(id: string): boolean {
  return secrets.has(id);
}

/**
 * Forgets the secret `id`, zeroing its bytes.
 *
 * @example
 * ```ts
 * import { defineSecret, hasSecret, removeSecret } from "@blkgraph/blkgraph";
 * defineSecret("example-rm", { data: "x" });
 * removeSecret("example-rm");
 * console.log(hasSecret("example-rm")); // false
 * ```
 */
export function removeSecret(id: string): void {
  secrets.get(id)?.fill(0);
  secrets.delete(id);
}

/**
 * Parses and applies a QEMU `--object` argument and returns the new
 * object's id. Only `secret` objects are known; any other type is refused
 * naming it.
 *
 * @example
 * ```ts
 * import { defineObject, getSecret, removeSecret } from "@blkgraph/blkgraph";
 * defineObject("secret,id=sec-obj,data=abc");
 * console.log(getSecret("sec-obj").length); // 3
 * removeSecret("sec-obj");
 * ```
 */
export function defineObject(arg: string): string {
  const props = parseKeyValues(arg);
  const type = props.get("qom-type") ?? firstKey(arg);
  if (type !== "secret") {
    throw new BlockError("EINVAL", `Invalid object type '${type}': only 'secret' objects are supported`);
  }
  const id = props.get("id");
  if (!id) throw new BlockError("EINVAL", `Invalid object '${type}': parameter 'id' is missing`);
  for (const k of props.keys()) {
    if (!["qom-type", "id", "data", "file", "format"].includes(k)) {
      throw new BlockError("EINVAL", `Invalid parameter '${k}' for object '${id}' (secret)`);
    }
  }
  defineSecret(id, { data: props.get("data"), file: props.get("file"), format: props.get("format") as SecretFormat | undefined });
  return id;
}

function firstKey(arg: string): string {
  const first = arg.split(",")[0];
  return first.includes("=") ? "" : first;
}

/** QEMU's key=value list: `,,` escapes a comma; a leading bare word is the type. */
function parseKeyValues(arg: string): Map<string, string> {
  const out = new Map<string, string>();
  const parts: string[] = [];
  let cur = "";
  for (let i = 0; i < arg.length; i++) {
    if (arg[i] === ",") {
      if (arg[i + 1] === ",") {
        cur += ",";
        i++;
        continue;
      }
      parts.push(cur);
      cur = "";
    } else cur += arg[i];
  }
  parts.push(cur);
  parts.forEach((p, i) => {
    const eq = p.indexOf("=");
    if (eq < 0) {
      if (i === 0) out.set("qom-type", p);
      else throw new BlockError("EINVAL", `Invalid object parameter '${p}': expected key=value`);
    } else out.set(p.slice(0, eq), p.slice(eq + 1));
  });
  return out;
}
