import assert from "node:assert/strict";
import { copyImage, createImage, type NodeEvent, open } from "../../mod.ts";
import { tempDir } from "../_helpers/qemu.ts";

Deno.test("copyImage() skips a hole of many chunks with one block-status request and copies the data around it", async () => {
  await using d = await tempDir();
  const size = 1 << 30;
  await createImage(`${d.path}/s.qcow2`, "qcow2", size);
  await using src = await open(`${d.path}/s.qcow2`);
  const head = new Uint8Array(65536).fill(1);
  const tail = new Uint8Array(65536).fill(2);
  await src.pwrite(0, head);
  await src.pwrite(size - 65536, tail);
  await using dst = await open({ driver: "memory", size });
  const statusCalls: number[] = [];
  src.addListener((e: NodeEvent) => {
    if (e.kind === "request" && e.phase === "begin" && e.op === "block-status") statusCalls.push(e.offset);
  });
  await copyImage(src, dst);
  // qcow2 reports at most one L2 table's span (512 MiB with 64 KiB clusters) per answer: a few calls, not one per 2 MiB chunk (512).
  assert.ok(statusCalls.length <= 8, `${statusCalls.length} block-status requests`);
  const a = new Uint8Array(65536);
  await dst.pread(0, a);
  assert.deepEqual(a, head);
  await dst.pread(size - 65536, a);
  assert.deepEqual(a, tail);
  await dst.pread(size / 2, a);
  assert.ok(a.every((b) => b === 0));
});

Deno.test("copyImage() compressing reads into the buffers of completed compressed writes: a copy allocates about a window of clusters", async () => {
  await using d = await tempDir();
  const cs = 65536;
  const clusters = 64;
  await createImage(`${d.path}/o.qcow2`, "qcow2", clusters * cs);
  await using src = await open({ driver: "memory", size: clusters * cs });
  for (let c = 0; c < clusters; c++) await src.pwrite(c * cs, new Uint8Array(cs).fill(c + 1));
  await using dst = await open(`${d.path}/o.qcow2`);
  const buffers = new Set<ArrayBufferLike>();
  const pwrite = dst.pwrite.bind(dst);
  dst.pwrite = (offset, data, opts) => {
    if (opts?.compressed) buffers.add(data.buffer);
    return pwrite(offset, data, opts);
  };
  await copyImage(src, dst, { compress: true, compressWindow: 4 });
  // The window, the one being read, and those whose completion has not been seen yet.
  assert.ok(buffers.size <= 4 + 2, `${buffers.size} buffers for ${clusters} compressed writes`);
  const back = new Uint8Array(cs);
  await dst.pread(63 * cs, back);
  assert.ok(back.every((b) => b === 64));
});

Deno.test("copyImage() asks block status once for a long data extent, not once per 2 MiB chunk", async () => {
  await using d = await tempDir();
  const size = 64 << 20;
  await createImage(`${d.path}/full.qcow2`, "qcow2", size);
  await using src = await open(`${d.path}/full.qcow2`);
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i += 4096) data[i] = (i >> 12) % 251 + 1;
  await src.pwrite(0, data);
  await using dst = await open({ driver: "memory", size });
  const statusCalls: number[] = [];
  src.addListener((e: NodeEvent) => {
    if (e.kind === "request" && e.phase === "begin" && e.op === "block-status") statusCalls.push(e.offset);
  });
  await copyImage(src, dst);
  // One data extent (contiguous on the host, one L2 table): the first answer covers all 32 chunks.
  assert.deepEqual(statusCalls, [0]);
  const back = new Uint8Array(size);
  await dst.pread(0, back);
  assert.deepEqual(back, data);
});

Deno.test("copyImage() with parallel requests asks block status once per extent and copies every chunk", async () => {
  await using d = await tempDir();
  const size = 32 << 20;
  await createImage(`${d.path}/p.qcow2`, "qcow2", size);
  await using src = await open(`${d.path}/p.qcow2`);
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i += 512) data[i] = (i >> 9) % 253 + 1;
  await src.pwrite(0, data.subarray(0, 8 << 20));
  await src.pwrite(16 << 20, data.subarray(16 << 20));
  data.fill(0, 8 << 20, 16 << 20);
  await using dst = await open({ driver: "memory", size });
  const statusCalls: number[] = [];
  src.addListener((e: NodeEvent) => {
    if (e.kind === "request" && e.phase === "begin" && e.op === "block-status") statusCalls.push(e.offset);
  });
  await copyImage(src, dst, { parallel: 4 });
  // Data, hole, data: three answers, though four workers claimed chunks before the first came back.
  assert.deepEqual(statusCalls, [0, 8 << 20, 16 << 20]);
  const back = new Uint8Array(size);
  await dst.pread(0, back);
  assert.deepEqual(back, data);
});
