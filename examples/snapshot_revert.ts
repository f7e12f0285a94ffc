/**
 * Internal snapshots of a qcow2 image: take one, overwrite the data, read
 * the snapshot through a read-only view (`snapshot.name`), revert to it,
 * delete it, and check the image stays clean.
 *
 *   deno run -A examples/snapshot_revert.ts
 */

import { createImage, open } from "../mod.ts";

const dir = await Deno.makeTempDir({ prefix: "blkgraph-example-" });
try {
  const path = `${dir}/disk.qcow2`;
  await createImage(path, "qcow2", 1 << 20);
  const spec = { driver: "qcow2", file: { driver: "file", filename: path } };
  const first = new Uint8Array(4096);
  {
    await using disk = await open(spec);
    await disk.pwrite(0, new Uint8Array(4096).fill(0x11));
    await disk.snapshots.create({ id: "", name: "before", vmStateSize: 0, dateSec: Date.now() / 1000 | 0, dateNsec: 0, vmClockNsec: 0 });
    await disk.pwrite(0, new Uint8Array(4096).fill(0x22)); // copies the shared cluster
    console.log("snapshots:", (await disk.snapshots.list()).map((s) => `${s.id}:${s.name}`).join(", "));
  }
  {
    // A read-only view of the image as it was when the snapshot was taken.
    await using view = await open({ ...spec, snapshot: { name: "before" } }, { readOnly: true });
    await view.pread(0, first);
    console.log("snapshot reads 0x" + first[0].toString(16));
  }
  await using disk = await open(spec);
  await disk.snapshots.goto("before");
  const now = new Uint8Array(4096);
  await disk.pread(0, now);
  console.log("after revert: 0x" + now[0].toString(16));
  await disk.snapshots.delete("before");
  const r = await disk.check();
  console.log(`check: ${r.corruptions} corruptions, ${r.leaks} leaks`);
} finally {
  await Deno.remove(dir, { recursive: true });
}
