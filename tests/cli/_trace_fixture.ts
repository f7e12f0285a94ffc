/**
 * A real trace for the report tests: qcow2 → blkdebug → throttle → file,
 * made with our own createImage, with concurrent writes (lanes), flushes,
 * a read, throttle waits (on a fake clock, so they happen every run) and an
 * injected ENOSPC.
 *
 * @module
 */

import { createFakeClock } from "../../filters/throttle.ts";
import { createImage, open, traceTo } from "../../mod.ts";

/** Writes the image and its trace into `dir`; returns their paths. */
export async function makeTrace(dir: string): Promise<{ image: string; trace: string }> {
  const image = `${dir}/t.qcow2`;
  const trace = `${dir}/trace.json`;
  await createImage(image, "qcow2", 16 << 20);
  const clock = createFakeClock();
  const disk = await open({
    driver: "qcow2",
    file: {
      driver: "blkdebug",
      "inject-error": [{ event: "l2_update", errno: "ENOSPC", once: true, immediately: true }],
      image: { driver: "throttle", limits: { "iops-total": 50 }, clock, file: { driver: "file", filename: image } },
    },
  });
  let json = "";
  const tracer = traceTo(disk, (t) => void (json += t));
  let done = false;
  const ticking = (async () => {
    while (!done) await clock.advance(5);
  })();
  try {
    await disk.pwrite(0, new Uint8Array(65536).fill(1));
    await disk.flush().catch(() => {}); // the first L2 update fails (ENOSPC, once)
    await Promise.all([1, 2, 3, 4].map((i) => disk.pwrite(i << 20, new Uint8Array(4096).fill(i))));
    await disk.flush();
    await disk.pread(0, new Uint8Array(65536));
    await disk.pwrite(8 << 20, new Uint8Array(512).fill(9));
  } finally {
    tracer.stop();
    await disk.close().catch(() => {}); // writes metadata back through the throttle: keep the clock going
    done = true;
    await ticking;
  }
  await Deno.writeTextFile(trace, json);
  return { image, trace };
}
