/**
 * qcow2 compressed cluster writes (`pwriteCompressed`), checked with
 * qemu-img check and qemu-io reads.
 */

import assert from "node:assert/strict";
import { BlockError } from "../../../mod.ts";
import { skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { assertClean, assertSameAsRaw, Mirror, openQcow2, qemuCreate, qemuIo, readAll } from "./_util.ts";
import { run } from "../../_helpers/qemu.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

for (const type of ["zlib", "zstd"]) {
  Deno.test({
    name: `qcow2 pwriteCompressed() writes ${type} clusters qemu reads back, and plain writes overwrite them`,
    ignore,
    async fn() {
      await using dir = await tempDir();
      const path = `${dir.path}/c.qcow2`;
      const size = 1 << 20;
      await qemuCreate(path, size, `cluster_size=4k,compression_type=${type}`);
      const mirror = new Mirror(new Uint8Array(size));
      {
        await using node = await openQcow2(path);
        for (let c = 0; c < 64; c++) {
          const d = new Uint8Array(4096);
          for (let i = 0; i < d.length; i++) d[i] = (c * 7 + (i >> 6)) & 0xff;
          await node.pwrite(c * 4096, d, { compressed: true });
          mirror.write(c * 4096, d);
        }
        // Overwrite some: plain partial writes (copy-on-write from compressed data) and compressed again.
        const d = new Uint8Array(100).fill(0xee);
        await node.pwrite(4096 * 3 + 50, d);
        mirror.write(4096 * 3 + 50, d);
        // Compression never overwrites (QEMU's EIO): the cluster keeps its data; a plain write replaces it.
        const again = new Uint8Array(4096).fill(0x31);
        await assert.rejects(() => node.pwrite(4096 * 5, again, { compressed: true }), (e) => e instanceof BlockError && e.code === "EIO");
        await node.pwrite(4096 * 6, again);
        mirror.write(4096 * 6, again);
        assert.equal((await node.blockStatus(0, 4096)).compressed, true);
      }
      await Deno.writeFile(`${dir.path}/expect.raw`, mirror.data);
      await assertClean(path);
      await assertSameAsRaw(path, `${dir.path}/expect.raw`);
    },
  });
}

Deno.test({
  name: "qcow2 pwriteCompressed() refuses a compressed write that does not start on a cluster boundary",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/e.qcow2`;
    await qemuCreate(path, "1M");
    await using node = await openQcow2(path);
    await assert.rejects(
      () => node.pwrite(512, new Uint8Array(65536), { compressed: true }),
      (e) => e instanceof BlockError && e.code === "EINVAL",
    );
  },
});

/** `qemu-img check --output=json`'s compressed cluster count and the image's bytes as qemu reads them. */
async function qemuView(path: string): Promise<{ compressed: number; bytes: Uint8Array }> {
  const check = JSON.parse((await run("qemu-img", ["check", "--output=json", path])).stdout);
  await run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", path, `${path}.raw`]);
  return { compressed: check["compressed-clusters"], bytes: await Deno.readFile(`${path}.raw`) };
}

Deno.test({
  name: "qcow2 pwriteCompressed() of several clusters compresses each one, up to an image end inside a cluster, as qemu-io's write -c",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const ours = `${dir.path}/ours.qcow2`;
    const theirs = `${dir.path}/theirs.qcow2`;
    const size = 10 * 4096 + 2048;
    for (const p of [ours, theirs]) await qemuCreate(p, size, "cluster_size=4k");
    await qemuIo(theirs, "write -c -P 7 4096 12288", "write -c -P 9 36864 6144");
    {
      await using node = await openQcow2(ours);
      await node.pwrite(4096, new Uint8Array(12288).fill(7), { compressed: true });
      await node.pwrite(36864, new Uint8Array(6144).fill(9), { compressed: true });
    }
    await assertClean(ours);
    const [a, b] = [await qemuView(ours), await qemuView(theirs)];
    assert.equal(b.compressed, 5);
    assert.equal(a.compressed, b.compressed);
    assert.deepEqual(a.bytes, b.bytes);
  },
});

Deno.test({
  name:
    "qcow2 pwriteCompressed() refuses with EIO a cluster that has a host cluster (data, compressed, preallocated), as QEMU's, and keeps it",
  ignore,
  async fn() {
    await using dir = await tempDir();
    for (
      const [what, o, setup] of [
        ["data", "cluster_size=4k", "write -P 1 8192 4096"],
        ["compressed", "cluster_size=4k", "write -c -P 1 8192 4096"],
        ["preallocated", "cluster_size=4k,preallocation=metadata", ""],
      ]
    ) {
      const ours = `${dir.path}/${what}.ours.qcow2`;
      const theirs = `${dir.path}/${what}.theirs.qcow2`;
      for (const p of [ours, theirs]) {
        await qemuCreate(p, "64k", o);
        if (setup) await qemuIo(p, setup);
      }
      const real = await run("qemu-io", ["-c", "write -c -P 2 8192 4096", theirs]);
      assert.match(real.stdout, /write failed: Input\/output error/, what);
      await using node = await openQcow2(ours);
      await assert.rejects(
        () => node.pwrite(8192, new Uint8Array(4096).fill(2), { compressed: true }),
        (e) => e instanceof BlockError && e.code === "EIO",
        what,
      );
      // An unallocated cluster next to it still takes a compressed write.
      await node.pwrite(16384, new Uint8Array(4096).fill(3), { compressed: what !== "preallocated" });
      const got = await readAll(node);
      assert.equal(got[8192], setup ? 1 : 0, what);
      assert.equal(got[16384], 3, what);
    }
  },
});
