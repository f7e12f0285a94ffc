import assert from "node:assert/strict";

const root = new URL("..", import.meta.url).pathname;

interface DocTag {
  kind: string;
  doc?: string;
}
interface DocSymbol {
  name: string;
  declarations: { kind: string; jsDoc?: { doc?: string; tags?: DocTag[] } }[];
}

/** The symbols `deno doc --json` sees exported from `entry`. */
async function exportsOf(entry: string): Promise<DocSymbol[]> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["doc", "--json", entry], cwd: root, stdout: "piped", stderr: "piped" })
    .output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const doc = JSON.parse(new TextDecoder().decode(out.stdout)) as { nodes: Record<string, { symbols?: DocSymbol[] }> };
  return Object.values(doc.nodes).flatMap((n) => n.symbols ?? []);
}

const examplesOf = (s: DocSymbol) => s.declarations.flatMap((d) => d.jsDoc?.tags ?? []).filter((t) => t.kind === "example");

Deno.test("every function, class and constant mod.ts exports has an @example that imports @blkgraph/blkgraph", async () => {
  const values = (await exportsOf("mod.ts")).filter((s) => s.declarations.some((d) => !["interface", "typeAlias"].includes(d.kind)));
  assert.ok(values.length > 30, `only ${values.length} values exported`);
  const missing = values.filter((s) => !examplesOf(s).some((t) => (t.doc ?? "").includes('from "@blkgraph/blkgraph')));
  assert.deepEqual(missing.map((s) => s.name), []);
});

Deno.test("mod.ts exports the user-facing API only: no driver internals", async () => {
  const names = new Set((await exportsOf("mod.ts")).map((s) => s.name));
  for (const want of ["open", "createImage", "copyImage", "BlockNode", "BlockError", "registerDriver", "optSize", "runCrashExploration"]) {
    assert.ok(names.has(want), `mod.ts lacks ${want}`);
  }
  for (const internal of ["HEADER_FIELDS", "serialiseHeader", "Qcow2Instance", "parseBlkdebugConfig", "serveNbd", "newRequest"]) {
    assert.ok(!names.has(internal), `mod.ts exports ${internal}; it belongs in a subpath module`);
  }
});

Deno.test("every subpath in deno.json's exports resolves to a module with documentation", async () => {
  const cfg = JSON.parse(await Deno.readTextFile(`${root}deno.json`)) as { exports: Record<string, string> };
  for (const [sub, file] of Object.entries(cfg.exports)) {
    const syms = await exportsOf(file);
    assert.ok(syms.length > 0, `${sub} (${file}) exports nothing`);
  }
});
