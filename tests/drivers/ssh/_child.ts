/**
 * Library calls on an ssh node, in a child process (authentication needs
 * the test agent's `SSH_AUTH_SOCK` in the environment, which a test must
 * not set in its own process). `deno run -A _child.ts SCENARIO URL` prints
 * a JSON object of what it saw.
 *
 * @module
 */

import { type BlockError, open } from "../../../mod.ts";

const [scenario, url] = Deno.args;
const out: Record<string, unknown> = {};
const code = async (p: Promise<unknown>) => {
  try {
    await p;
    return "ok";
  } catch (e) {
    return `${(e as BlockError).code}: ${(e as Error).message}`;
  }
};

if (scenario === "io") {
  // Writes from many callers at once (the session takes them one at a time), crossing the 16 KiB read and 128 KiB write chunks.
  const node = await open({ driver: "ssh", filename: url });
  out.length = node.length;
  const pieces = Array.from({ length: 8 }, (_, i) => ({ at: i * 300_000 + 7, data: new Uint8Array(200_000).fill(0x10 + i) }));
  await Promise.all(pieces.map((p) => node.pwrite(p.at, p.data)));
  await node.flush();
  const reads = await Promise.all(pieces.map(async (p) => {
    const back = new Uint8Array(p.data.length);
    await node.pread(p.at, back);
    return back.every((b) => b === p.data[0]);
  }));
  out.readsBack = reads.every(Boolean);
  out.lengthAfterWrites = node.length;
  await node.close();
} else if (scenario === "size") {
  const node = await open({ driver: "ssh", filename: url });
  out.length = node.length;
  await node.truncate(3 << 20);
  out.grown = node.length;
  const tail = new Uint8Array(4096).fill(0xff);
  await node.pread((3 << 20) - 4096, tail);
  out.grownReadsZero = tail.every((b) => b === 0);
  out.shrink = await code(node.truncate(1 << 20));
  out.prealloc = await code(node.truncate(4 << 20, { prealloc: "full" }));
  out.writePastEnd = await code(node.pwrite((3 << 20) - 10, new Uint8Array(20).fill(7)));
  await node.close();
} else if (scenario === "readonly") {
  const node = await open({ driver: "ssh", filename: url }, { readOnly: true });
  out.write = await code(node.pwrite(0, new Uint8Array(512)));
  const b = new Uint8Array(4);
  await node.pread(0, b);
  out.first = Array.from(b);
  await node.close();
}
console.log(JSON.stringify(out));
