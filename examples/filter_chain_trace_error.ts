/**
 * Builds qcow2 → blkdebug → throttle → file, traces the metadata events the
 * qcow2 driver raises, and lets blkdebug inject one error: the first L2
 * table update fails with EIO, and the write that caused it reports it.
 *
 *   deno run -A examples/filter_chain_trace_error.ts
 */

import { BlockError, createImage, open } from "../mod.ts";

const dir = await Deno.makeTempDir({ prefix: "blkgraph-example-" });
try {
  const path = `${dir}/disk.qcow2`;
  await createImage(path, "qcow2", 16 << 20);
  const disk = await open({
    driver: "qcow2",
    file: {
      driver: "blkdebug",
      "inject-error": [{ event: "l2_update", errno: "EIO", once: true }],
      image: { driver: "throttle", limits: { "iops-total": 10000 }, file: { driver: "file", filename: path } },
    },
  });
  const seen: string[] = [];
  disk.addListener((e) => {
    if (e.kind === "blkdbg") seen.push(e.event);
  });

  try {
    await disk.pwrite(0, new Uint8Array(4096).fill(1));
    await disk.flush();
    console.log("first write succeeded (unexpected)");
  } catch (e) {
    const err = e as BlockError;
    console.log(`write + flush failed as injected: ${err.code} (${err.strerror})`);
  }
  await disk.pwrite(1 << 20, new Uint8Array(4096).fill(2)); // the rule was "once"
  await disk.flush();
  console.log(`events: ${seen.join(" ")}`);
  await disk.close().catch((e) => console.log(`close: ${(e as Error).message}`));
} finally {
  await Deno.remove(dir, { recursive: true });
}
