/**
 * QEMU's JSON dialect (qobject/json-lexer.c): standard JSON plus strings in
 * single quotes (`{'driver': 'qcow2'}`), in which `\'` is an escape and `"`
 * needs none. `json:` filenames are written this way in shell scripts.
 * Errors are BlockErrors naming the position and what was expected; input
 * is bounded by its length (no recursion deeper than the nesting, which is
 * capped).
 *
 * @module
 */

import { BlockError } from "./errors.ts";

/** Deepest nesting accepted (QEMU's parser stops at 1024 too). */
const MAX_DEPTH = 1024;

const ESCAPES: Record<string, string> = { '"': '"', "'": "'", "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

/**
 * Parses JSON text as QEMU does: double- or single-quoted strings.
 *
 * @example
 * ```ts
 * import { parseQemuJson } from "./_qjson.ts";
 * console.log(parseQemuJson("{'driver': 'raw', 'size': 512}")); // { driver: "raw", size: 512 }
 * ```
 */
export function parseQemuJson(text: string): unknown {
  let i = 0;
  const fail = (what: string): never => {
    const near = text.slice(i, i + 20);
    throw new BlockError("EINVAL", `JSON parse error at position ${i}: expected ${what}${near ? ` near '${near}'` : " at the end"}`);
  };
  const ws = () => {
    while (i < text.length && (text[i] === " " || text[i] === "\t" || text[i] === "\n" || text[i] === "\r")) i++;
  };
  const str = (): string => {
    const q = text[i++];
    let out = "";
    while (i < text.length && text[i] !== q) {
      const c = text[i++];
      if (c !== "\\") {
        out += c;
        continue;
      }
      const e = text[i++];
      if (e === "u") {
        const hex = text.slice(i, i + 4);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail("four hex digits after \\u");
        out += String.fromCharCode(parseInt(hex, 16));
        i += 4;
      } else if (e !== undefined && e in ESCAPES) out += ESCAPES[e];
      else {
        i--;
        fail("a valid escape (\\\" \\' \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)");
      }
    }
    if (i >= text.length) fail(`a closing ${q}`);
    i++;
    return out;
  };
  const value = (depth: number): unknown => {
    if (depth > MAX_DEPTH) fail(`at most ${MAX_DEPTH} levels of nesting`);
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const obj: Record<string, unknown> = {};
      ws();
      if (text[i] === "}") {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"' && text[i] !== "'") fail("a property name in quotes");
        const k = str();
        ws();
        if (text[i] !== ":") fail("':'");
        i++;
        obj[k] = value(depth + 1);
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return obj;
        }
        fail("',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const arr: unknown[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return arr;
        }
        fail("',' or ']'");
      }
    }
    if (c === '"' || c === "'") return str();
    const m = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (m) {
      i += m[0].length;
      return Number(m[0]);
    }
    for (const [word, v] of [["true", true], ["false", false], ["null", null]] as const) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    }
    return fail("a value (object, array, string, number, true, false or null)");
  };
  const v = value(0);
  ws();
  if (i < text.length) fail("the end of the input");
  return v;
}
