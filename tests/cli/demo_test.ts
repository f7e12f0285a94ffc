import { ok } from "node:assert/strict";
import { cli } from "./_run.ts";

Deno.test("demo shows events and flushes per metadata mode, then a clean check", async () => {
  const r = await cli(["demo"]);
  ok(r.code === 0, r.stderr);
  ok(/ordered +metadata-sync/.test(r.stdout), r.stdout);
  ok(/l2_update +\d+ +\d+/.test(r.stdout), r.stdout);
  ok(/flushes to disk +\d+ +\d+/.test(r.stdout), r.stdout);
  ok(r.stdout.includes("No errors were found on the image."), r.stdout);
  ok(r.stdout.includes("file format: qcow2"), r.stdout);
});
