/**
 * Converts a raw image into a compressed qcow2 image, cluster by cluster:
 * zero clusters are skipped, the others are written compressed. Prints the
 * sizes and verifies the copy.
 *
 *   deno run -A examples/convert_raw_to_compressed.ts
 */

import { createImage, open } from "../mod.ts";

const dir = await Deno.makeTempDir({ prefix: "blkgraph-example-" });
try {
  const size = 4 << 20;
  const text = new TextEncoder().encode("blkgraph compresses this line nicely. ");
  const raw = new Uint8Array(size);
  for (let i = 0; i < size / 2; i++) raw[i] = text[i % text.length]; // second half stays zero
  await Deno.writeFile(`${dir}/in.raw`, raw);

  await createImage(`${dir}/out.qcow2`, "qcow2", size);
  const src = await open({ driver: "raw", file: { driver: "file", filename: `${dir}/in.raw` } }, { readOnly: true });
  const dst = await open(`${dir}/out.qcow2`);

  const cluster = new Uint8Array(65536);
  let written = 0;
  for (let off = 0; off < size; off += cluster.length) {
    await src.pread(off, cluster);
    if (cluster.every((b) => b === 0)) continue;
    await dst.pwrite(off, cluster, { compressed: true }); // one whole cluster, compressed
    written++;
  }
  await dst.flush();
  const check = new Uint8Array(size);
  await dst.pread(0, check);
  console.log(`copy identical: ${check.every((b, i) => b === raw[i])}; ${written} clusters written`);
  await src.close();
  await dst.close();
  console.log(`raw ${size} bytes -> qcow2 ${(await Deno.stat(`${dir}/out.qcow2`)).size} bytes`);
} finally {
  await Deno.remove(dir, { recursive: true });
}
