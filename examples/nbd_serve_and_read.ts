/**
 * Serves a qcow2 image over NBD on a Unix socket and reads it back through
 * blkgraph's own NBD client: the URL opens an `nbd` protocol node with a
 * probed format on top, like `qemu-img info nbd+unix:///?socket=...`.
 * Any NBD client (qemu-img, nbdinfo, nbdcopy, nbdfuse) could connect too.
 *
 *   deno run -A examples/nbd_serve_and_read.ts
 */

import { createImage, open } from "../mod.ts";
import { serveNbd } from "../drivers/nbd/mod.ts";

const dir = await Deno.makeTempDir({ prefix: "blkgraph-example-" });
try {
  await createImage(`${dir}/disk.qcow2`, "qcow2", 16 << 20);
  const disk = await open(`${dir}/disk.qcow2`);
  await disk.pwrite(1 << 20, new Uint8Array(65536).fill(0x5a));

  // Export the qcow2 node; the server owns it from now on and closes it.
  const server = await serveNbd(disk, { socket: `${dir}/nbd.sock`, name: "disk", description: "example disk", closeNode: true });
  console.log(`serving ${server.uri}`);

  const remote = await open(server.uri);
  const buf = new Uint8Array(65536);
  await remote.pread(1 << 20, buf);
  console.log(`read back ${buf.length} bytes at 1 MiB: all 0x5a = ${buf.every((b) => b === 0x5a)}`);

  // Block status travels as the base:allocation metadata context.
  for (let off = 0; off < remote.length;) {
    const st = await remote.blockStatus(off, remote.length - off);
    console.log(`  ${off}+${st.length}: ${st.data ? "data" : "hole"}${st.zero ? ", zero" : ""}`);
    off += st.length;
  }

  await remote.pwrite(0, new TextEncoder().encode("written over NBD"));
  await remote.close();
  await server.close(); // flushes and closes the qcow2 node

  // The write reached the image file.
  await using again = await open(`${dir}/disk.qcow2`, { readOnly: true });
  const head = new Uint8Array(16);
  await again.pread(0, head);
  console.log(`image now starts with: ${new TextDecoder().decode(head)}`);
} finally {
  await Deno.remove(dir, { recursive: true });
}
