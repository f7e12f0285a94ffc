/**
 * Creates a qcow2 image, writes two patterns (one straddling a cluster
 * boundary), reads them back and prints what `qemu-img info` would show.
 *
 *   deno run -A examples/create_write_image.ts
 */

import { createImage, open } from "../mod.ts";

const dir = await Deno.makeTempDir({ prefix: "blkgraph-example-" });
try {
  const path = `${dir}/disk.qcow2`;
  await createImage(path, "qcow2", 64 << 20);

  const disk = await open(path);
  await disk.pwrite(0, new Uint8Array(4096).fill(0xab));
  await disk.pwrite(65536 - 512, new Uint8Array(1024).fill(0xcd)); // crosses a 64 KiB cluster
  await disk.flush();

  const back = new Uint8Array(1024);
  await disk.pread(65536 - 512, back);
  console.log(`read back 0x${back[0].toString(16)} .. 0x${back[1023].toString(16)}`);

  let allocated = 0;
  for (let off = 0; off < disk.length;) {
    const st = await disk.blockStatus(off, disk.length - off);
    if (st.allocated) allocated += st.length;
    off += st.length;
  }
  console.log(`format ${disk.driver.name}, virtual size ${disk.length}, allocated ${allocated} bytes`);
  console.log(JSON.stringify(await disk.info(), null, 2));
  await disk.close();
} finally {
  await Deno.remove(dir, { recursive: true });
}
