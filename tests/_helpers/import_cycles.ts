/**
 * Finds import cycles among the project's modules (type-only imports
 * included), from `deno info --json` of each entry point. Run as
 * `deno task lint:cycles`; `tests/imports_test.ts` runs it too.
 *
 * @module
 */

interface InfoModule {
  specifier: string;
  dependencies?: { code?: { specifier?: string }; type?: { specifier?: string } }[];
}

/** The project's entry points: the library, the CLI, the benchmarks. */
export const ENTRY_POINTS = ["mod.ts", "cli/main.ts", "bench/run.ts"];

/** Import cycles (each a list of files, relative to `root`) reachable from `entries`. */
export async function findImportCycles(root: string, entries: string[] = ENTRY_POINTS): Promise<string[][]> {
  const graph = new Map<string, Set<string>>();
  for (const entry of entries) {
    const out = await new Deno.Command(Deno.execPath(), { args: ["info", "--json", entry], cwd: root, stdout: "piped", stderr: "piped" })
      .output();
    if (!out.success) throw new Error(`deno info ${entry} failed: ${new TextDecoder().decode(out.stderr)}`);
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: InfoModule[] };
    for (const m of info.modules) {
      if (!m.specifier.startsWith("file://")) continue;
      const edges = graph.get(m.specifier) ?? new Set<string>();
      for (const d of m.dependencies ?? []) {
        for (const s of [d.code?.specifier, d.type?.specifier]) if (s?.startsWith("file://")) edges.add(s);
      }
      graph.set(m.specifier, edges);
    }
  }
  // Tarjan's strongly connected components.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  let next = 0;
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) cycles.push(scc.map((s) => s.replace(new URL(`file://${root}/`).href, "")).sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return cycles;
}

if (import.meta.main) {
  const cycles = await findImportCycles(Deno.cwd());
  for (const c of cycles) console.error(`import cycle: ${c.join(" <-> ")}`);
  if (cycles.length) Deno.exit(1);
  console.log(`no import cycles from ${ENTRY_POINTS.join(", ")}`);
}
