/**
 * The incremental backup loop, end to end: a full backup when the bitmap is
 * created, writes (by blkgraph and by qemu-io), an export of the image with
 * `-B bitmap`, a client that copies only the dirty extents
 * (`qemu:dirty-bitmap:` block status) into the backup, and a restored image
 * equal to the source — once against `blkgraph nbd -B`, once against
 * `qemu-nbd -B` on the same image, with the same dirty extents copied.
 */
import assert from "node:assert/strict";
import { open } from "../../../mod.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { blkgraphNbd, qemuNbd, sockPath } from "./_helpers.ts";

const MiB = 1 << 20;

/** Copies the dirty extents of `bitmap` from the export on `sock` into the raw file `backup`; returns the extents copied. */
async function incremental(sock: string, bitmap: string, backup: string): Promise<{ extents: string[]; bytes: number; read: number }> {
  await using remote = await open(
    { driver: "nbd", server: { type: "unix", path: sock }, "x-dirty-bitmap": `qemu:dirty-bitmap:${bitmap}` },
    { readOnly: true },
  );
  await using dst = await open({ driver: "raw", file: { driver: "file", filename: backup } });
  const extents: string[] = [];
  let bytes = 0;
  for await (const e of remote.bitmaps.dirtyRanges(bitmap)) {
    for (let at = e.offset; at < e.offset + e.length; at += 4 * MiB) {
      const buf = new Uint8Array(Math.min(4 * MiB, e.offset + e.length - at));
      await remote.pread(at, buf);
      await dst.pwrite(at, buf);
    }
    extents.push(`${e.offset}+${e.length}`);
    bytes += e.length;
  }
  return { extents, bytes, read: remote.stats.bytesRead };
}

Deno.test({
  name:
    "incremental backup over NBD: only the dirty extents are copied and the restored image equals the source (blkgraph nbd -B and qemu-nbd -B)",
  ignore: skipUnless("qemu-img", "qemu-io", "qemu-nbd"),
  async fn() {
    await using dir = await tempDir("blkgraph-incr-");
    const src = `${dir.path}/src.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", src, "64M"]);
    await runOk("qemu-io", ["-c", "write -P 0x11 0 8M", "-c", "write -P 0x12 40M 1M", src]);
    // Full backup, and the bitmap that records what changes after it.
    await runOk("qemu-img", ["bitmap", "--add", src, "inc0"]);
    await runOk("qemu-img", ["convert", "-O", "raw", src, `${dir.path}/full.raw`]);
    // Changes by blkgraph (write, zero-write, discard) and by QEMU.
    {
      await using img = await open(src);
      await img.pwrite(3 * MiB + 100, new Uint8Array(5000).fill(0x21));
      await img.pwriteZeroes(40 * MiB, 512 * 1024);
      await img.pdiscard(7 * MiB, MiB);
      await img.pwrite(63 * MiB, new Uint8Array(MiB).fill(0x22));
    }
    await runOk("qemu-io", ["-c", "write -P 0x23 20M 64k", "-c", "write -z 5M 4k", src]);

    const results = [];
    for (const [tag, start] of [["blkgraph", blkgraphNbd], ["qemu-nbd", qemuNbd]] as const) {
      const backup = `${dir.path}/backup-${tag}.raw`;
      await Deno.copyFile(`${dir.path}/full.raw`, backup);
      const server = await start(sockPath(dir.path, tag[0]), ["-r", "-t", "-f", "qcow2", "-B", "inc0"], src);
      try {
        results.push(await incremental(server.sock, "inc0", backup));
      } finally {
        await server.stop();
      }
      const cmp = await run("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", src, backup]);
      assert.equal(cmp.code, 0, `${tag}: ${cmp.stdout}${cmp.stderr}`);
    }
    assert.deepEqual(results[0], results[1]);
    assert.deepEqual(results[0].extents, [
      "3145728+65536",
      "5242880+65536",
      "7340032+1048576",
      "20971520+65536",
      "41943040+524288",
      "66060288+1048576",
    ]);
    // Only the dirty extents travelled: 2.7 MiB of a 64 MiB image.
    assert.equal(results[0].read, results[0].bytes);
    assert.equal(results[0].bytes, 2818048);
  },
});
