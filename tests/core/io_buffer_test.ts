import assert from "node:assert/strict";
import { copyImage, createImage, ioBuffer, open, registerDriver } from "../../mod.ts";
import { isAligned } from "../../core/_io_buffer.ts";
import { tempDir } from "../_helpers/qemu.ts";

/** Alignment of every buffer the `test-align-probe` driver was asked to read into, in order. */
const probed: boolean[] = [];
registerDriver({
  name: "test-align-probe",
  kind: "protocol",
  open(ctx) {
    const data = new Uint8Array(Number(ctx.options.size ?? 1 << 20));
    for (let i = 0; i < data.length; i += 4096) data[i] = (i >> 12) | 1;
    return Promise.resolve({
      getLength: () => data.length,
      pread: (o: number, b: Uint8Array) => {
        probed.push(isAligned(b, 4096)!);
        b.set(data.subarray(o, o + b.length));
      },
      pwrite: (o: number, d: Uint8Array) => void data.set(d, o),
    });
  },
});

Deno.test("ioBuffer() starts buffers of a page or more at a page, smaller ones at a cache line", () => {
  for (const n of [4096, 65536, 2 << 20, 4 << 20]) {
    for (let i = 0; i < 4; i++) {
      const b = ioBuffer(n);
      assert.equal(b.length, n);
      assert.equal(isAligned(b, 4096), true, `${n} bytes`);
    }
  }
  for (const n of [1, 16, 100, 4095]) {
    const b = ioBuffer(n);
    assert.equal(b.length, n);
    assert.equal(isAligned(b, 64), true, `${n} bytes`);
  }
});

Deno.test("ioBuffer() with an offset aligns the byte at that offset, so a header can precede an aligned payload", () => {
  for (const offset of [16, 28, 100]) {
    const b = ioBuffer(offset + 4096, { offset });
    assert.equal(b.length, offset + 4096);
    assert.equal(isAligned(b.subarray(offset), 4096), true, `offset ${offset}`);
  }
});

Deno.test("ioBuffer() returns zeroed bytes that do not overlap another buffer's", () => {
  const a = ioBuffer(8192);
  const b = ioBuffer(8192);
  assert.ok(a.every((x) => x === 0) && b.every((x) => x === 0));
  a.fill(1);
  assert.ok(b.every((x) => x === 0));
});

for (
  const [name, opts] of [
    ["in order", {}],
    ["with parallel workers (-W -m 4)", { parallel: 4 }],
    ["compressing", { compress: true }],
  ] as const
) {
  Deno.test(`copyImage() ${name} reads the source into page-aligned buffers (the kernel's copy into a misaligned one is ~3x slower)`, async () => {
    await using d = await tempDir();
    const size = 4 << 20;
    await createImage(`${d.path}/o.qcow2`, "qcow2", size);
    await using src = await open({ driver: "test-align-probe", size });
    await using dst = await open(`${d.path}/o.qcow2`);
    probed.length = 0;
    await copyImage(src, dst, { ...opts, chunkSize: 1 << 20 });
    assert.ok(probed.length > 0);
    assert.deepEqual(probed.filter((a) => !a).length, 0, `${probed.length} reads`);
    const back = new Uint8Array(size);
    await dst.pread(0, back);
    for (let i = 0; i < size; i += 4096) assert.equal(back[i], ((i >> 12) | 1) & 255);
  });
}

Deno.test("an unaligned read through a node with a request alignment reads the child into a page-aligned bounce buffer", async () => {
  await using img = await open({ driver: "blkdebug", align: 4096, image: { driver: "test-align-probe", size: 1 << 20 } });
  probed.length = 0;
  const buf = new Uint8Array(300);
  await img.pread(4096 * 3 + 100, buf);
  assert.deepEqual(probed, [true]);
  assert.equal(buf[0], 0);
  const head = new Uint8Array(1);
  await img.pread(4096 * 3, head);
  assert.equal(head[0], 3);
  probed.length = 0;
  // The write's read-modify-write reads its head and tail into the bounce buffer too.
  await img.pwrite(4096 * 5 + 10, new Uint8Array(100).fill(7));
  assert.deepEqual(probed, [true]);
});
