/**
 * qcow2 compressed cluster writes (`pwriteCompressed`), checked with
 * qemu-img check and qemu-io reads.
 */

import assert from "node:assert/strict";
import { BlockError } from "../../../mod.ts";
import { skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { assertClean, assertSameAsRaw, Mirror, openQcow2, qemuCreate } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

for (const type of ["zlib", "zstd"]) {
  Deno.test({
    name: `qcow2 pwriteCompressed() writes ${type} clusters qemu reads back, and overwrites them`,
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
        const again = new Uint8Array(4096).fill(0x31);
        await node.pwrite(4096 * 5, again, { compressed: true });
        mirror.write(4096 * 5, again);
        assert.equal((await node.blockStatus(0, 4096)).compressed, true);
      }
      await Deno.writeFile(`${dir.path}/expect.raw`, mirror.data);
      await assertClean(path);
      await assertSameAsRaw(path, `${dir.path}/expect.raw`);
    },
  });
}

Deno.test({
  name: "qcow2 pwriteCompressed() refuses a write that is not one whole cluster",
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
