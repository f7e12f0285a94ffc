/**
 * The JSDoc examples say what they print: every `console.log(…); // X`
 * line of a ```ts example in the library's modules must print X
 * (`deno test --doc` only checks that the examples run). An expectation may
 * add a note after a colon, a dash or in parentheses:
 * `// 4096 (one cluster)`, `// EINVAL: Unknown option …`.
 */

import assert from "node:assert/strict";

const root = new URL("..", import.meta.url);
const exportsMap = (JSON.parse(await Deno.readTextFile(new URL("deno.json", root))) as { exports: Record<string, string> }).exports;

/** Every library module (what `deno test --doc` runs). */
async function modules(): Promise<string[]> {
  const out = ["mod.ts"];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(new URL(dir, root))) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else if (e.name.endsWith(".ts")) out.push(p);
    }
  };
  for (const d of ["core", "drivers", "filters", "cli"]) await walk(d);
  return out.sort();
}

/** The ```ts examples of a module's JSDoc (not `ts ignore` ones), comment stars removed. */
function examples(src: string): string[] {
  const out: string[] = [];
  for (const m of src.matchAll(/^\s*\* ```ts\s*\n((?:\s*\*.*\n)*?)\s*\* ```/gm)) {
    out.push(m[1].split("\n").map((l) => l.replace(/^\s*\* ?/, "")).join("\n"));
  }
  return out;
}

/** Rewrites the package's own specifier and relative imports to file URLs, so the example runs from a temp dir. */
function resolveImports(code: string, module: URL): string {
  return code.replace(/from "([^"]+)"/g, (all, spec: string) => {
    if (spec === "@blkgraph/blkgraph" || spec.startsWith("@blkgraph/blkgraph/")) {
      const sub = "." + spec.slice("@blkgraph/blkgraph".length);
      const file = exportsMap[sub];
      return file ? `from "${new URL(file, root).href}"` : all;
    }
    if (spec.startsWith(".")) return `from "${new URL(spec, module).href}"`;
    return all;
  });
}

/** Without whitespace and quotes; an expectation's written `\n` counts as the newline it stands for. */
const norm = (s: string) => s.replaceAll("\\n", "\n").replace(/\s+/g, "").replace(/["'`]/g, "");

/**
 * Whether a printed line meets its `// expectation`: the same text, or the
 * text followed by a note; `...` or `…` in the expectation stands for any
 * text (a temporary path).
 */
function meets(printed: string, expected: string): boolean {
  const p = norm(printed);
  const e = norm(expected);
  if (e === p || [":", "(", "—", "-", ";", ","].some((sep) => e.startsWith(p + sep))) return true;
  if (!/\.\.\.|…/.test(e)) return false;
  const pattern = e.split(/\.\.\.|…/).map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join(".*");
  return new RegExp(`^${pattern}$`).test(p);
}

Deno.test("every console.log in a library example prints what its comment says", async () => {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-doc-expected-" });
  const wrong: string[] = [];
  let checked = 0;
  try {
    for (const path of await modules()) {
      const module = new URL(path, root);
      const src = await Deno.readTextFile(module);
      let n = 0;
      for (const ex of examples(src)) {
        n++;
        let count = 0;
        const body = ex.replace(/^(\s*)console\.log\((.*)\);\s*\/\/\s*(.+)$/gm, (_all, ind: string, args: string, exp: string) => {
          count++;
          return `${ind}__check([${args}], ${JSON.stringify(exp.trim())});`;
        });
        if (count === 0) continue;
        const file = `${dir}/${path.replaceAll("/", "_")}-${n}.ts`;
        await Deno.writeTextFile(file, resolveImports(body, module));
        const results: [string, string][] = [];
        (globalThis as { __check?: unknown }).__check = (args: unknown[], exp: string) =>
          results.push([args.map((a) => (typeof a === "string" ? a : Deno.inspect(a, { depth: 4 }))).join(" "), exp]);
        await import(new URL(`file://${file}`).href);
        assert.equal(results.length, count, `${path} example ${n}: not every checked line ran`);
        for (const [got, exp] of results) {
          checked++;
          if (!meets(got, exp)) wrong.push(`${path} example ${n}: printed ${JSON.stringify(got)}, says ${JSON.stringify(exp)}`);
        }
      }
    }
  } finally {
    delete (globalThis as { __check?: unknown }).__check;
    await Deno.remove(dir, { recursive: true });
  }
  assert.ok(checked > 50, `only ${checked} lines checked`);
  console.log(`${checked} example lines checked`);
  assert.deepEqual(wrong, []);
});
