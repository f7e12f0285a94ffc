// qcow2 metadata write errors as QEMU's blkdebug and qcow2 produce them (iotest 026 samples these): close() writes back
// the L2 table cache and then the refcount block cache whatever the first did, and throws a CacheFlushError naming each
// cache that failed; refblock_alloc/refblock_load arm a rule on every refcount update (QEMU's alloc_refcount_block), cached
// block or not; a failed write still counts as a write for the next flush; saved VM state is flushed under writethrough.

import assert from "node:assert/strict";
import { type BlkdebugEvent, BlockError, type BlockNode, CacheFlushError, createImage, open } from "../../../mod.ts";
import { checkExitCode, checkQcow2 } from "../../../drivers/qcow2/check.ts";
import { tempDir } from "../../_helpers/qemu.ts";

interface Rule {
  event: BlkdebugEvent;
  code?: "EIO" | "ENOSPC";
  once: boolean;
  sector?: number;
}

async function image(dir: string, size = 1 << 30): Promise<string> {
  const path = `${dir}/t.qcow2`;
  await createImage(path, "qcow2", size, { options: { cluster_size: 1024 } });
  return path;
}

function openOver(path: string, rule: Rule, cache?: string): Promise<BlockNode> {
  return open({
    driver: "qcow2",
    file: {
      driver: "blkdebug",
      "inject-error": [{
        event: rule.event,
        errno: rule.code ?? "EIO",
        once: rule.once,
        ...(rule.sector === undefined ? {} : { sector: rule.sector }),
      }],
      image: { driver: "file", filename: path },
    },
  }, cache ? { cache } : {});
}

/** Errors and leaks of blkgraph's check (the qemu-img oracle is in the iotests); corruption must be 0. */
async function corruptions(path: string): Promise<number> {
  await using file = await open({ driver: "file", filename: path }, { readOnly: true });
  const r = await checkQcow2(file, {});
  assert.notEqual(checkExitCode(r), 2, r.messages.join("\n"));
  return r.corruptions;
}

const rejection = (p: Promise<unknown>) => p.then(() => undefined, (e) => e);

Deno.test("qcow2 close() with an l2_update rule left on: CacheFlushError names the L2 table and the refcount block cache, QEMU's lines", async () => {
  await using d = await tempDir();
  const path = await image(d.path);
  const node = await openOver(path, { event: "l2_update", once: false });
  await node.pwrite(0, new Uint8Array(128 << 10).fill(1));
  const err = await rejection(node.close());
  assert.ok(err instanceof CacheFlushError, String(err));
  assert.deepEqual(err.failures.map((f) => [f.cache, f.error.code]), [["L2 table", "EIO"], ["refcount block", "EIO"]]);
  assert.deepEqual(err.qemuLines, [
    "Failed to flush the L2 table cache: Input/output error",
    "Failed to flush the refcount block cache: Input/output error",
  ]);
  assert.equal(err.code, "EIO");
  assert.equal(await corruptions(path), 0);
});

Deno.test("qcow2 close(): after the L2 table cache failed, the refcount block cache is still written back (leaks, no corruption)", async () => {
  await using d = await tempDir();
  const path = await image(d.path);
  // Only the writes of the new L2 table fail (after header, reftable, refblock and 64 L1 clusters it is cluster 67).
  const node = await openOver(path, { event: "l2_update", code: "ENOSPC", once: false, sector: 67 * 2 });
  await node.pwrite(0, new Uint8Array(128 << 10).fill(1));
  const err = await rejection(node.close());
  assert.ok(err instanceof CacheFlushError, String(err));
  assert.deepEqual(err.failures.map((f) => [f.cache, f.error.code]), [["L2 table", "ENOSPC"]]);
  // The refcount blocks reached the disk in the second step: the allocated clusters are counted, nothing points at them.
  await using file = await open({ driver: "file", filename: path }, { readOnly: true });
  const r = await checkQcow2(file, {});
  assert.equal(r.corruptions, 0, r.messages.join("\n"));
  assert.ok(r.leaks > 0, r.messages.join("\n"));
});

Deno.test("qcow2 refblock_alloc is raised on every refcount update, its block cached or not: a once rule fails the write's flush", async () => {
  await using d = await tempDir();
  const path = await image(d.path);
  await using node = await openOver(path, { event: "refblock_alloc", once: true }, "writethrough");
  const events: BlkdebugEvent[] = [];
  node.addListener((e) => {
    if (e.kind === "blkdbg") events.push(e.event);
  });
  const err = await rejection(node.pwrite(0, new Uint8Array(128 << 10).fill(1)));
  assert.ok(err instanceof BlockError && err.code === "EIO", String(err));
  assert.ok(events.includes("refblock_alloc"), events.join(" "));
  // The refcount block of a fresh image exists: alloc_refcount_block loads it (QEMU's load_refcount_block raises refblock_load).
  assert.equal(events[events.indexOf("refblock_alloc") + 1], "refblock_load", events.join(" "));
});

Deno.test("qcow2 saveVmstate() under cache=writethrough flushes before it completes: an l2_update rule fails it", async () => {
  await using d = await tempDir();
  const path = await image(d.path);
  {
    await using node = await open({ driver: "qcow2", file: { driver: "file", filename: path } });
    await node.saveVmstate(0, new Uint8Array(512)); // the vmstate's L2 table exists from now on
  }
  const node = await openOver(path, { event: "l2_update", once: true }, "writethrough");
  const err = await rejection(node.saveVmstate(0, new Uint8Array(128 << 10).fill(3)));
  assert.ok(err instanceof BlockError && err.code === "EIO", String(err));
  await node.close();
  assert.equal(await corruptions(path), 0);
});

Deno.test("a write that failed counts as a write: the next flush of the node below reaches blkdebug (QEMU's write_gen)", async () => {
  await using node = await open({
    driver: "raw",
    file: {
      driver: "blkdebug",
      "inject-error": [{ event: "l2_update", errno: "EIO", once: false }],
      image: { driver: "memory", size: 65536 },
    },
  });
  await node.event("l2_update");
  const werr = await rejection(node.pwrite(0, new Uint8Array(512)));
  assert.ok(werr instanceof BlockError && werr.code === "EIO", String(werr));
  const ferr = await rejection(node.flush());
  assert.ok(ferr instanceof BlockError && ferr.code === "EIO", `flush after a failed write: ${ferr}`);
});
