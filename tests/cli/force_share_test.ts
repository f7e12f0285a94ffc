import assert from "node:assert/strict";
import { createImage, open } from "../../mod.ts";
import { tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

Deno.test("info refuses an image another user writes, and -U reads it anyway (as qemu-img)", async () => {
  await using d = await tempDir();
  const path = `${d.path}/busy.raw`;
  await createImage(path, "raw", 1 << 20);
  await using _writer = await open({ driver: "raw", file: { driver: "file", filename: path } });
  const plain = await cli(["info", "-f", "raw", path]);
  assert.equal(plain.code, 1);
  assert.match(plain.stderr, /Failed to get shared "write" lock/);
  const shared = await cli(["info", "-U", "-f", "raw", path]);
  assert.equal(shared.code, 0, shared.stderr);
  assert.match(shared.stdout, /virtual size: 1 MiB/);
});
