import assert from "node:assert/strict";

// What each entry point evaluates before its first line runs: the modules it
// reaches through static imports (not `import()`, not `import type`), from
// `deno info --json`. Start-up time grows with this graph, so a verb's module
// or a heavy node-compat polyfill must be loaded when it is used, not here.

const ROOT = new URL("../..", import.meta.url);

interface InfoModule {
  specifier: string;
  dependencies?: { code?: { specifier?: string }; isDynamic?: boolean }[];
}

/** Every module `entry` (relative to the repository) imports statically, as paths relative to the repository or `node:` names. */
async function staticGraph(entry: string): Promise<Set<string>> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["info", "--json", new URL(entry, ROOT).pathname], stdout: "piped" })
    .output();
  assert.ok(out.success, `deno info ${entry} failed`);
  const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { roots: string[]; modules: InfoModule[] };
  const bySpecifier = new Map(info.modules.map((m) => [m.specifier, m]));
  const seen = new Set<string>();
  const visit = (spec: string) => {
    if (seen.has(spec)) return;
    seen.add(spec);
    for (const d of bySpecifier.get(spec)?.dependencies ?? []) {
      if (!d.isDynamic && d.code?.specifier) visit(d.code.specifier);
    }
  };
  visit(info.roots[0]);
  return new Set([...seen].map((s) => s.replace(ROOT.href, "")));
}

/** The verb modules: the files the dispatcher's table in cli/_verbs.ts imports. */
async function verbModules(): Promise<string[]> {
  const table = await Deno.readTextFile(new URL("cli/_verbs.ts", ROOT));
  return [...table.matchAll(/^ {2}lazyVerb\(.*import\("\.\/([a-z_]+\.ts)"\)/gm)].map((m) => `cli/${m[1]}`);
}

Deno.test("the verb table in cli/_verbs.ts names all twenty verb modules", async () => {
  assert.equal((await verbModules()).length, 20);
});

for (const entry of ["cli/main.ts", "cli/qemu-img.ts"]) {
  Deno.test(`${entry} imports no verb's module at start-up`, async () => {
    const graph = await staticGraph(entry);
    assert.deepEqual((await verbModules()).filter((m) => graph.has(m)), []);
  });
}

Deno.test("cli/qemu-io.ts imports, of the verb modules, only cli/io.ts (and cli/info.ts, whose dump its `info` command prints)", async () => {
  const graph = await staticGraph("cli/qemu-io.ts");
  assert.deepEqual((await verbModules()).filter((m) => graph.has(m)), ["cli/info.ts", "cli/io.ts"]);
});

// The node-compat polyfills that cost a start-up the most (each 5-20 ms):
// crypto for LUKS, tls and stream for NBD's STARTTLS, zlib for compressed
// clusters, worker_threads for the cipher pool. They load when an image
// needs them. (node:util's parseArgs, which every verb uses, and
// node:async_hooks, which is light, stay.)
const HEAVY_POLYFILLS = ["node:crypto", "node:tls", "node:stream", "node:zlib", "node:worker_threads", "node:fs"];

for (const entry of ["mod.ts", "cli/main.ts", "cli/qemu-img.ts", "cli/qemu-io.ts"]) {
  Deno.test(`${entry} loads none of ${HEAVY_POLYFILLS.join(", ")} at start-up`, async () => {
    const graph = await staticGraph(entry);
    assert.deepEqual(HEAVY_POLYFILLS.filter((m) => graph.has(m)), []);
  });
}

// The command lines register drivers through _drivers.ts, not mod.ts: the
// same drivers, without the library's exports (the crash explorer's runner,
// oracles and log reader, ~50 KB of modules).
Deno.test("cli/main.ts registers the same drivers as mod.ts", async () => {
  const names = async (entry: string) => {
    const code = `import ${JSON.stringify(new URL(entry, ROOT).href)};
      import { driverNames } from ${JSON.stringify(new URL("core/registry.ts", ROOT).href)};
      console.log(JSON.stringify(driverNames()));`;
    const out = await new Deno.Command(Deno.execPath(), { args: ["eval", code], stdout: "piped" }).output();
    assert.ok(out.success, `deno eval of ${entry} failed`);
    return JSON.parse(new TextDecoder().decode(out.stdout)) as string[];
  };
  const lib = await names("mod.ts");
  assert.ok(lib.includes("qcow2") && lib.includes("x-crash-capture"), lib.join(", "));
  assert.deepEqual(await names("cli/main.ts"), lib);
});

for (const entry of ["cli/qemu-img.ts", "cli/qemu-io.ts"]) {
  Deno.test(`${entry} does not load the crash explorer at start-up`, async () => {
    const graph = await staticGraph(entry);
    assert.deepEqual(["filters/crash/explorer.ts", "filters/crash/oracles.ts", "mod.ts"].filter((m) => graph.has(m)), []);
  });
}
