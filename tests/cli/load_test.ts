import assert from "node:assert/strict";
import { tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

Deno.test("--load MODULE registers a driver of the user's own before the verb runs", async () => {
  await using dir = await tempDir();
  const mod = `${dir.path}/zeros driver.ts`;
  const modUrl = new URL("../../mod.ts", import.meta.url).href;
  await Deno.writeTextFile(
    mod,
    `import { registerDriver } from "${modUrl}";
registerDriver({ name: "load-test-sevens", kind: "protocol", open: () => Promise.resolve({ getLength: () => 4096, pread: (_o, b) => void b.fill(7) }) });
`,
  );
  const r = await cli(["--load", mod, "io", "-r", "-c", "read -P 7 0 4096", "driver=load-test-sevens"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /read 4096\/4096 bytes at offset 0/);
});

Deno.test("--load of a module that does not exist fails naming it", async () => {
  const r = await cli(["--load", "/nonexistent/x.ts", "info", "x"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /Could not load module '\/nonexistent\/x.ts'/);
});
