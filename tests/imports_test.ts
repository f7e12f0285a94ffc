import assert from "node:assert/strict";
import { findImportCycles } from "./_helpers/import_cycles.ts";

Deno.test("the modules reachable from mod.ts, cli/main.ts and bench/run.ts import each other without cycles", async () => {
  const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  assert.deepEqual(await findImportCycles(root), []);
});

Deno.test("findImportCycles() reports a cycle it is given", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/a.ts`, 'import type { B } from "./b.ts";\nexport type A = B | 1;\n');
    await Deno.writeTextFile(`${dir}/b.ts`, 'import type { A } from "./a.ts";\nexport type B = A | 2;\n');
    assert.deepEqual(await findImportCycles(dir, ["a.ts"]), [["a.ts", "b.ts"]]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("no test changes the process's cwd or environment: --parallel test files share one process, its cwd and its env", async () => {
  const root = new URL("..", import.meta.url).pathname;
  const offenders: string[] = [];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(dir)) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory && e.name !== "node_modules" && !e.name.startsWith(".")) await walk(p);
      else if (e.isFile && e.name.endsWith(".ts") && /\bDeno\.(chdir|env\.set|env\.delete)\(/.test(await Deno.readTextFile(p))) {
        offenders.push(p.slice(root.length));
      }
    }
  };
  await walk(`${root}tests`);
  assert.deepEqual(
    offenders,
    [],
    "run that part in a child process (tests/cli/_in_dir.ts for the drop-ins, `env:` of Deno.Command for variables)",
  );
});
