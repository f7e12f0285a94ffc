/**
 * An incremental backup over NBD with a persistent dirty bitmap: a full
 * backup, then writes that the bitmap `inc0` records, then an export of the
 * image with that bitmap (`qemu:dirty-bitmap:inc0`, qemu-nbd's -B) from which
 * a client copies only the dirty extents into the backup, which ends up equal
 * to the source.
 *
 *   deno run -A examples/incremental_backup_nbd.ts
 */

import { createImage, open } from "../mod.ts";
import { serveNbd } from "../drivers/nbd/mod.ts";

const MiB = 1 << 20;
const dir = await Deno.makeTempDir({ prefix: "blkgraph-example-" });
try {
  await createImage(`${dir}/disk.qcow2`, "qcow2", 16 * MiB);
  await createImage(`${dir}/backup.raw`, "raw", 16 * MiB);
  await using backup = await open(`${dir}/backup.raw`, { format: "raw" });
  {
    await using disk = await open(`${dir}/disk.qcow2`);
    await disk.pwrite(0, new Uint8Array(4 * MiB).fill(0x11));
    // Full backup, and from that point on the bitmap records what changes.
    await disk.bitmaps.add("inc0");
    const buf = new Uint8Array(MiB);
    for (let off = 0; off < disk.length; off += MiB) {
      await disk.pread(off, buf);
      await backup.pwrite(off, buf);
    }
    await disk.pwrite(MiB + 512, new Uint8Array(3000).fill(0x22));
    await disk.pwriteZeroes(8 * MiB, 2 * MiB);
    await disk.pwrite(15 * MiB, new Uint8Array(4096).fill(0x33));
  } // closing stores the bitmap in the image

  const disk = await open(`${dir}/disk.qcow2`, { readOnly: true });
  const server = await serveNbd(disk, { socket: `${dir}/nbd.sock`, bitmaps: ["inc0"], closeNode: true });
  const remote = await open(
    { driver: "nbd", server: { type: "unix", path: `${dir}/nbd.sock` }, "x-dirty-bitmap": "qemu:dirty-bitmap:inc0" },
    { readOnly: true },
  );
  let copied = 0;
  for await (const e of remote.bitmaps.dirtyRanges("inc0")) {
    const buf = new Uint8Array(e.length);
    await remote.pread(e.offset, buf);
    await backup.pwrite(e.offset, buf);
    copied += e.length;
  }
  console.log(`copied ${copied} of ${remote.length} bytes`);

  const a = new Uint8Array(remote.length);
  const b = new Uint8Array(remote.length);
  await remote.pread(0, a);
  await backup.pread(0, b);
  console.log(`backup equals the source: ${a.every((x, i) => x === b[i])}`);
  await remote.close();
  await server.close();
} finally {
  await Deno.remove(dir, { recursive: true });
}
