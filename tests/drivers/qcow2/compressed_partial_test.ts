/**
 * A compressed write of many clusters that fails on one of them (a cluster already allocated: EIO), as QEMU's
 * qcow2_co_pwritev_compressed_part runs it: one task per cluster, at most 8 (QCOW2_MAX_WORKERS) in flight, no new task once one has
 * failed, and the write returns only when every task it started has ended, so the clusters written beside the failed one are there
 * when the error arrives (opfuzz case 625). Cross-checked with qemu-io where it is installed.
 */

import assert from "node:assert/strict";
import { BlockError, createImage, open } from "../../../mod.ts";
import { hasTool, run, tempDir } from "../../_helpers/qemu.ts";

const CS = 65536;

/** A 2 MiB image (64 KiB clusters) with guest cluster 0 allocated. */
async function imageWithCluster0(path: string): Promise<void> {
  await createImage(path, "qcow2", 2 << 20, { options: { cluster_size: CS } });
  await using node = await open({ driver: "qcow2", file: { driver: "file", filename: path } });
  await node.pwrite(0, new Uint8Array(512).fill(6));
}

/** `length` bytes of `node` at `offset`. */
async function read(node: { pread(offset: number, buf: Uint8Array): Promise<void> }, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await node.pread(offset, buf);
  return buf;
}

/** The first offset where `a` and `b` differ, or -1 (a whole-buffer deepEqual diff of megabytes takes minutes to print). */
function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const i = a.findIndex((v, k) => v !== b[k]);
  return i === -1 && a.length !== b.length ? Math.min(a.length, b.length) : i;
}

/** Which of guest clusters 1..n-1 read as pattern `pat` throughout. */
async function clustersWith(path: string, n: number, pat: number): Promise<number[]> {
  await using node = await open({ driver: "qcow2", file: { driver: "file", filename: path } }, { readOnly: true });
  const got: number[] = [];
  for (let c = 1; c < n; c++) if ((await read(node, c * CS, CS)).every((b) => b === pat)) got.push(c);
  return got;
}

Deno.test("qcow2 compressed write that fails on its first cluster has written the next one when it fails, and a write after it keeps it", async () => {
  await using d = await tempDir();
  // 2 MiB clusters, the second one random: it takes longer to compress than the first one takes to fail.
  const big = 2 << 20;
  const data = new Uint8Array(2 * big);
  for (let at = big; at < data.length; at += 65536) crypto.getRandomValues(data.subarray(at, at + 65536));
  const want = data.slice(big);
  want.fill(10, 512, 1024);
  const paths = [`${d.path}/a.qcow2`, `${d.path}/ref.qcow2`];
  for (const p of paths) {
    await createImage(p, "qcow2", 2 * big, { options: { cluster_size: big } });
    await using node = await open({ driver: "qcow2", file: { driver: "file", filename: p } });
    await node.pwrite(0, new Uint8Array(512).fill(6));
  }
  {
    await using node = await open({ driver: "qcow2", file: { driver: "file", filename: paths[0] } });
    await assert.rejects(node.pwrite(0, data, { compressed: true }), (e) => e instanceof BlockError && e.code === "EIO");
    await node.pwrite(big + 512, new Uint8Array(512).fill(10));
  }
  {
    await using node = await open({ driver: "qcow2", file: { driver: "file", filename: paths[0] } }, { readOnly: true });
    assert.equal(firstDiff(await read(node, big, big), want), -1);
  }
  if (hasTool("qemu-io")) {
    await Deno.writeFile(`${d.path}/data`, data);
    const r = await run("qemu-io", [
      "-f",
      "qcow2",
      "-c",
      `write -c -s ${d.path}/data 0 ${2 * big}`,
      "-c",
      `write -P 10 ${big + 512} 512`,
      paths[1],
    ]);
    assert.match(r.stdout + r.stderr, /write failed: Input\/output error/);
    const c = await run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", paths[1], paths[0]]);
    assert.equal(c.code, 0, c.stdout + c.stderr);
  }
});

Deno.test("qcow2 compressed write of 16 clusters that fails on the first writes clusters 1 to 8 only, as QEMU's 8-task pool", async () => {
  await using d = await tempDir();
  const path = `${d.path}/a.qcow2`;
  await imageWithCluster0(path);
  {
    await using node = await open({ driver: "qcow2", file: { driver: "file", filename: path } });
    await assert.rejects(
      node.pwrite(0, new Uint8Array(16 * CS).fill(8), { compressed: true }),
      (e) => e instanceof BlockError && e.code === "EIO",
    );
  }
  assert.deepEqual(await clustersWith(path, 16, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
  if (hasTool("qemu-io")) {
    const ref = `${d.path}/ref.qcow2`;
    await imageWithCluster0(ref);
    await run("qemu-io", ["-f", "qcow2", "-c", `write -c -P 8 0 ${16 * CS}`, ref]);
    // QEMU checks for a failed task before waiting for a free slot, so the task after the first 8 starts whichever task
    // ended first. Cluster 0's (it fails once compressed) ends first on an idle machine, giving exactly 1..8; under
    // load another task may end first and QEMU goes on (1..15 seen once in a full parallel test run). What QEMU always
    // does: the clusters it writes are 1..k in order, k >= 8.
    const got = await clustersWith(ref, 16, 8);
    assert.ok(got.length >= 8 && got.every((c, i) => c === i + 1), `qemu-io wrote clusters ${got}`);
  }
});
