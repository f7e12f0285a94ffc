/**
 * The metadata overlap checks on the qcow2 driver's own metadata writers
 * (snapshots), as QEMU's qcow2_pre_write_overlap_check guards them: on an
 * image whose refcounts say a live L2 table is free, the next allocation
 * hands that cluster out, and the write into it is refused (EIO, the
 * corrupt bit) instead of overwriting the table. Where qemu-img is
 * installed it runs the same operation on a copy and prints the same line.
 */

import assert from "node:assert/strict";
import { CorruptImageError, createImage, open } from "../../../mod.ts";
import { hasTool, run, tempDir } from "../../_helpers/qemu.ts";

const LINE =
  "qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with active L2 table); further corruption events will be suppressed";

/** A 1 MiB image (64 KiB clusters) with guest cluster 0 written; then the refcount of its L2 table is set to 0. */
async function imageWithFreeL2(path: string): Promise<void> {
  await createImage(path, "qcow2", 1 << 20);
  {
    await using img = await open({ driver: "qcow2", file: { driver: "file", filename: path } });
    await img.pwrite(0, new Uint8Array(65536).fill(1));
  }
  const b = await Deno.readFile(path);
  const v = new DataView(b.buffer);
  const l1 = Number(v.getBigUint64(40));
  const l2 = Number(v.getBigUint64(l1) & 0x00fffffffffffe00n);
  const rb = Number(v.getBigUint64(Number(v.getBigUint64(48))));
  v.setUint16(rb + (l2 / 65536) * 2, 0); // 16-bit refcounts
  await Deno.writeFile(path, b);
}

Deno.test("snapshotCreate() refuses to write its L1 copy over an active L2 table the refcounts call free (overlap check), as qemu-img snapshot -c", async () => {
  await using d = await tempDir();
  const path = `${d.path}/a.qcow2`;
  await imageWithFreeL2(path);
  const copy = `${d.path}/q.qcow2`;
  await Deno.copyFile(path, copy);
  {
    await using img = await open({ driver: "qcow2", file: { driver: "file", filename: path } });
    await assert.rejects(
      () => img.snapshots.create({ id: "", name: "s1", dateSec: 0, dateNsec: 0, vmClockNsec: 0, vmStateSize: 0 }),
      (e) => e instanceof CorruptImageError && e.code === "EIO" && e.message === LINE,
    );
  }
  // The L2 table still maps guest cluster 0 (read-only: the image is marked corrupt).
  {
    await using img = await open({ driver: "qcow2", file: { driver: "file", filename: path } }, { readOnly: true });
    const buf = new Uint8Array(65536);
    await img.pread(0, buf);
    assert.ok(buf.every((x) => x === 1));
    assert.deepStrictEqual(await img.snapshots.list(), []);
  }
  if (hasTool("qemu-img")) {
    const r = await run("qemu-img", ["snapshot", "-c", "s1", copy]);
    assert.notEqual(r.code, 0);
    assert.ok(r.stderr.split("\n").includes(LINE), r.stderr);
  } else {
    console.log("SKIP: the qemu-img comparison (qemu-img not installed)");
  }
});
