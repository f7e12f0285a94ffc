/**
 * qcow2 BLKDBG events and the order in which metadata reaches the image
 * file, seen through a recorder filter under the qcow2 node. The event
 * sequences are blkgraph's, not claimed as QEMU's: blkgraph defers refcount
 * block writes to write-back, so QEMU's refblock_update_part between the
 * first cluster_alloc and l2_alloc_write (seen with a qemu-io blkdebug
 * set-state chain) does not happen here (code-review 4.3.12).
 */

import assert from "node:assert/strict";
import { type BlkdebugEvent, type BlockNode, open } from "../../../mod.ts";
import { getRecorder, type RecordedOp } from "../../../filters/recorder.ts";
import { skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { openQcow2, qemuCreate, qemuIo, qemuOverlay } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

function collect(node: BlockNode): { events: BlkdebugEvent[]; ops: string[] } {
  const out = { events: [] as BlkdebugEvent[], ops: [] as string[] };
  node.addListener((e) => {
    if (e.kind === "blkdbg") {
      out.events.push(e.event);
      out.ops.push(e.req?.op ?? "none");
    }
  });
  return out;
}

Deno.test({
  name:
    "qcow2 first allocating write raises cluster_alloc, l2_alloc_write, l1_update, cluster_alloc, write_aio (blkgraph's order; refcounts deferred)",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/e.qcow2`;
    await qemuCreate(path, "1M");
    await using node = await openQcow2(path);
    const seen = collect(node);
    await node.pwrite(0, new Uint8Array(65536).fill(1));
    // refblock_alloc and refblock_load come with every refcount update (QEMU's alloc_refcount_block; close_errors_test.ts).
    assert.deepEqual(seen.events.filter((e) => e !== "refblock_load" && e !== "refblock_alloc"), [
      "cluster_alloc",
      "l2_alloc_write",
      "l1_update",
      "cluster_alloc",
      "write_aio",
    ]);
    assert.deepEqual(new Set(seen.ops), new Set(["write"]));
  },
});

Deno.test({
  name: "qcow2 partial-cluster write over a backing file raises cow_read and cow_write",
  async fn() {
    await using dir = await tempDir();
    const { top } = await qemuOverlay(dir.path, "1M", ["write -P 0x11 0 1M"]);
    await using node = await openQcow2(top);
    const seen = collect(node);
    await node.pwrite(1000, new Uint8Array(100).fill(2));
    const cow = seen.events.filter((e) => e.startsWith("cow_") || e === "read_backing_aio");
    assert.deepEqual(cow, ["cow_read", "read_backing_aio", "read_backing_aio", "cow_write"]);
  },
});

Deno.test({
  name: "qcow2 reads raise l2_load once, then read_aio or read_backing_aio",
  ignore, // needs qemu-io to write
  async fn() {
    await using dir = await tempDir();
    const { top } = await qemuOverlay(dir.path, "1M", ["write -P 0x11 0 1M"]);
    await qemuIo(top, "write -P 0x22 0 64k");
    await using node = await openQcow2(top, {}, true);
    const seen = collect(node);
    const buf = new Uint8Array(4096);
    await node.pread(0, buf);
    await node.pread(65536, buf);
    await node.pread(4096, buf);
    assert.deepEqual(seen.events, ["l2_load", "read_aio", "read_backing_aio", "read_aio"]);
  },
});

/** Opens qcow2 over a recorder over the file, with extra qcow2 options. */
function openRecorded(path: string, opts: Record<string, unknown> = {}): Promise<BlockNode> {
  return open({ driver: "qcow2", ...opts, file: { driver: "recorder", file: { driver: "file", filename: path } } });
}

/** Index in the log of the first write that starts at `offset`. */
function writeAt(log: RecordedOp[], offset: number): number {
  return log.findIndex((op) => op.op === "write" && op.offset === offset);
}

function flushBetween(log: RecordedOp[], a: number, b: number): boolean {
  return log.slice(a + 1, b).some((op) => op.op === "flush");
}

// Layout of a fresh 64 KiB-cluster image from qemu-img: header, refcount
// table, refcount block, L1; the first L2 table and data come after.
const REFBLOCK = 0x20000;
const L1 = 0x30000;
const L2 = 0x40000;

Deno.test({
  name: "qcow2 ordered write-back: refcount block, flush, L2 table, flush, L1 entry",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/o.qcow2`;
    await qemuCreate(path, "1M");
    await using node = await openRecorded(path);
    await node.pwrite(0, new Uint8Array(4096).fill(1));
    await node.flush();
    const log = getRecorder(node.file!).log;
    const rb = writeAt(log, REFBLOCK);
    const l2 = writeAt(log, L2);
    const l1 = writeAt(log, L1);
    assert.ok(rb >= 0 && l2 > rb && l1 > l2, `order ${rb} ${l2} ${l1}`);
    assert.ok(flushBetween(log, rb, l2), "flush between refcount block and L2 table");
    assert.ok(flushBetween(log, l2, l1), "flush between new L2 table and L1 entry");
  },
});

Deno.test({
  name: "qcow2 x-wrong-order=l2-before-refblock writes the L2 table before the refcount block",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/w.qcow2`;
    await qemuCreate(path, "1M");
    await using node = await openRecorded(path, { "x-wrong-order": "l2-before-refblock" });
    await node.pwrite(0, new Uint8Array(4096).fill(1));
    await node.flush();
    const log = getRecorder(node.file!).log;
    const rb = writeAt(log, REFBLOCK);
    const l2 = writeAt(log, L2);
    assert.ok(l2 >= 0 && rb > l2, `order ${l2} ${rb}`);
    assert.ok(!flushBetween(log, l2, rb), "no flush between them");
  },
});

Deno.test({
  name: "qcow2 guest data is flushed before the L2 entry that exposes it is written",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/d.qcow2`;
    await qemuCreate(path, "1M");
    await using node = await openRecorded(path);
    await node.pwrite(0, new Uint8Array(65536).fill(1));
    await node.flush();
    const log = getRecorder(node.file!).log;
    const data = writeAt(log, 0x50000);
    const l2 = writeAt(log, L2);
    assert.ok(data >= 0 && l2 > data && flushBetween(log, data, l2), `order ${data} ${l2}`);
  },
});

Deno.test({
  name: "qcow2 growing the L1 table raises l1_grow_alloc_table, l1_grow_write_table, l1_grow_activate_table",
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/g.qcow2`;
    await qemuCreate(path, "1M", "cluster_size=4k");
    await using node = await openQcow2(path);
    const seen = collect(node);
    await node.truncate(4 * 2 ** 30);
    assert.deepEqual(seen.events.filter((e) => e.startsWith("l1_grow")), [
      "l1_grow_alloc_table",
      "l1_grow_write_table",
      "l1_grow_activate_table",
    ]);
  },
});
