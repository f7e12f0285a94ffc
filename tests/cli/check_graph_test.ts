/**
 * `check` runs on the graph the user names: a filter between the qcow2 node
 * and its file sees the check's reads and the repair's writes.
 */

import assert from "node:assert/strict";
import { counts } from "../_helpers/test_drivers.ts";
import { createImage, open } from "../../mod.ts";
import { tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

/** A qcow2 image with data whose cluster 0 has refcount 2 (one leaked reference). */
async function leakyImage(path: string): Promise<void> {
  await createImage(path, "qcow2", 4 << 20);
  {
    await using n = await open(path);
    await n.pwrite(0, new Uint8Array(65536).fill(9));
  }
  const f = await Deno.open(path, { read: true, write: true });
  try {
    const head = new Uint8Array(64);
    await f.read(head);
    const reftable = Number(new DataView(head.buffer).getBigUint64(48));
    const entry = new Uint8Array(8);
    await f.seek(reftable, Deno.SeekMode.Start);
    await f.read(entry);
    const block = Number(new DataView(entry.buffer).getBigUint64(0) & ~0x1ffn);
    await f.seek(block, Deno.SeekMode.Start);
    await f.write(new Uint8Array([0, 2]));
  } finally {
    f.close();
  }
}

Deno.test("check -r leaks on a json: graph goes through the filter below the qcow2 node", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/leak.qcow2`;
  await leakyImage(path);
  const spec = `json:${
    JSON.stringify({ driver: "qcow2", file: { driver: "test-count", tag: "chk-r", file: { driver: "file", filename: path } } })
  }`;
  const r = await cli(["check", "-r", "leaks", spec]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /The following inconsistencies were found and repaired:\n\n {4}1 leaked clusters/);
  const c = counts.get("chk-r")!;
  assert.ok(c.reads > 0, "the check read through the filter");
  assert.ok(c.writes > 0, "the repair wrote through the filter");
  const again = await cli(["check", path]);
  assert.equal(again.code, 0, again.stdout);
});

Deno.test("check of a dotted spec reads through its filter and reports the leak", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/leak.qcow2`;
  await leakyImage(path);
  const r = await cli(["check", `driver=qcow2,file.driver=test-count,file.tag=chk-ro,file.file.driver=file,file.file.filename=${path}`]);
  assert.equal(r.code, 3, r.stdout + r.stderr);
  assert.match(r.stderr, /Leaked cluster 0 refcount=2 reference=1/);
  assert.equal(counts.get("chk-ro")!.writes, 0, "a check without -r writes nothing");
  assert.ok(counts.get("chk-ro")!.reads > 0);
});

Deno.test("check of a raw image says the format does not support checks (exit 63)", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/x.raw`;
  await createImage(path, "raw", 1 << 20);
  const r = await cli(["check", "-f", "raw", path]);
  assert.deepEqual([r.code, r.stderr], [63, "blkgraph: This image format does not support checks\n"]);
});
