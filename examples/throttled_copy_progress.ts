/**
 * Copies 2 MiB into an image through a throttle filter limited to 8 MiB/s,
 * printing progress as it goes (about a quarter of a second).
 *
 *   deno run -A examples/throttled_copy_progress.ts
 */

import { createImage, open } from "../mod.ts";

const dir = await Deno.makeTempDir({ prefix: "blkgraph-example-" });
try {
  const path = `${dir}/target.raw`;
  const size = 2 << 20;
  await createImage(path, "raw", size);
  const src = await open({ driver: "memory", size });
  await src.pwrite(0, new Uint8Array(size).fill(0x5a));
  const dst = await open({
    driver: "raw",
    file: { driver: "throttle", limits: { "bps-total": 8 << 20 }, file: { driver: "file", filename: path } },
  });

  const chunk = new Uint8Array(256 * 1024);
  const t0 = performance.now();
  for (let off = 0; off < size; off += chunk.length) {
    await src.pread(off, chunk);
    await dst.pwrite(off, chunk);
    const pct = ((off + chunk.length) / size) * 100;
    console.log(`    (${pct.toFixed(2)}/100%) after ${(performance.now() - t0).toFixed(0)} ms`);
  }
  await dst.flush();
  const secs = (performance.now() - t0) / 1000;
  console.log(`copied ${size} bytes in ${secs.toFixed(2)} s (${(size / secs / 2 ** 20).toFixed(1)} MiB/s)`);
  await src.close();
  await dst.close();
} finally {
  await Deno.remove(dir, { recursive: true });
}
