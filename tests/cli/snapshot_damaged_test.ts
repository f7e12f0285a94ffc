/**
 * Internal snapshots of damaged qcow2 images, against qemu-img 7.2 on a copy
 * of the same image (iotest 080): a snapshot that would share a cluster
 * without a refcount block is refused before anything changes (the image is
 * left as it was, not dirty); a snapshot whose L1 table is invalid leaves
 * the image usable, and only what uses that table fails, in QEMU's words.
 */

import assert from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

async function poke(path: string, offset: number, bytes: number[]): Promise<void> {
  using f = await Deno.open(path, { write: true });
  await f.seek(offset, Deno.SeekMode.Start);
  await f.write(new Uint8Array(bytes));
}

/** qemu-img's and our exit code and stderr for `ARGS` on two copies of `path`; the copies are `path.q` and `path.o`. */
async function both(path: string, args: (f: string) => string[], tool = "qemu-img"): Promise<[unknown[], unknown[]]> {
  await Deno.copyFile(path, `${path}.q`);
  await Deno.copyFile(path, `${path}.o`);
  const q = await run(tool, args(`${path}.q`));
  const o = await cli([...(tool === "qemu-io" ? ["io"] : []), ...args(`${path}.o`)]);
  const norm = (s: string, f: string) => s.replaceAll(f, "IMG").replace(/^blkgraph( io)?:/gm, tool + ":");
  return [[q.code, norm(q.stderr, `${path}.q`)], [o.code, norm(o.stderr, `${path}.o`)]];
}

Deno.test({
  name:
    "snapshot -c sharing a cluster without a refcount block fails as qemu-img's (EFBIG past any table, else EAGAIN) and changes nothing",
  ignore,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/t.qcow2`;
    for (
      const [entry, errno] of [[[0xbf, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], "-27 (File too large)"], [
        [0x80, 0, 0, 0xff, 0xff, 0xff, 0, 0],
        "-11 (Resource temporarily unavailable)",
      ]] as const
    ) {
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "64M"]);
      await runOk("qemu-io", ["-c", "write 0 512", path]);
      await poke(path, 0x40000, [...entry]);
      const [q, o] = await both(path, (f) => ["snapshot", "-c", "test", f]);
      assert.deepEqual(o, q);
      assert.deepEqual(q, [1, `qemu-img: Could not create snapshot 'test': ${errno}\n`]);
      // Not a byte changed (no dirty bit left for the next open to "repair").
      assert.deepEqual(await Deno.readFile(`${path}.o`), await Deno.readFile(path));
    }
  },
});
