/**
 * Reproducers of bugs the fuzzer found (tests/fuzz/repro/, provenance in its
 * README): each image is replayed and must now end as the fix says. The
 * bugs with a generated reproducer have their test next to the code they
 * guard (tests/drivers/qcow2/*: overlap_test, backing_chain_test,
 * compressed_errors_test, fuzz_findings_test, check_limits_test).
 */

import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { BlockError, open } from "../../mod.ts";
import { hasTool, run, tempDir } from "../_helpers/qemu.ts";

const REPRO = new URL("./repro/", import.meta.url).pathname;

async function unpack(name: string, dir: string): Promise<string> {
  const path = `${dir}/img.qcow2`;
  await Deno.writeFile(path, gunzipSync(await Deno.readFile(`${REPRO}/${name}.qcow2.gz`)));
  return path;
}

Deno.test("repro self-backing-truncated: an image naming itself as backing file is refused at once", async () => {
  await using d = await tempDir();
  const path = await unpack("self-backing-truncated", d.path);
  const err = await open(path, { readOnly: true }).then((n) => n.close(), (e) => e);
  assert.ok(err instanceof BlockError && err.code === "EINVAL", String(err));
  assert.match(err.message, /Backing file 'img\.qcow2' creates an infinite loop\./);
});

Deno.test("repro repair-far-refblock: check -r all rebuilds instead of growing a 30 KiB image to 1 TiB", async () => {
  await using d = await tempDir();
  const path = await unpack("repair-far-refblock", d.path);
  const before = (await Deno.stat(path)).size;
  {
    await using node = await open({ driver: "qcow2", file: { driver: "file", filename: path } }, { check: true });
    const r = await node.check({ repair: "all" });
    assert.ok(r.messages.includes("Rebuilding refcount structure"), r.messages.join("\n"));
    assert.equal(r.corruptions, 2); // two L2 entries qemu-img cannot repair either
  }
  assert.equal((await Deno.stat(path)).size, before);
  if (hasTool("qemu-img")) {
    const q = await run("qemu-img", ["check", path]);
    assert.match(q.stdout, /2 errors were found on the image/);
  }
});
