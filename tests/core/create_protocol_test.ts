import assert from "node:assert/strict";
import { createImage, registerDriver } from "../../mod.ts";
import type { DriverInstance } from "../../mod.ts";

/** A protocol whose objects are made by `createFile` at their size (as rbd's), counting opens. */
function madeProtocol() {
  const made: { name: string; size: number }[] = [];
  const objects = new Map<string, Uint8Array>();
  let opens = 0;
  const reg = registerDriver({
    name: "test-made",
    kind: "protocol",
    protocolPrefix: "test-made",
    options: ["name"],
    parseFilename: (f) => ({ name: f.slice("test-made:".length) }),
    createFile(options, size) {
      const name = String(options.name);
      if (objects.has(name)) return Promise.reject(new Error(`${name} exists`));
      made.push({ name, size });
      objects.set(name, new Uint8Array(size));
      return Promise.resolve();
    },
    open(ctx): Promise<DriverInstance> {
      opens++;
      const name = String(ctx.options.name);
      let data = objects.get(name)!;
      const grow = (len: number) => {
        const next = new Uint8Array(len);
        next.set(data.subarray(0, len));
        data = next;
        objects.set(name, data);
      };
      return Promise.resolve({
        getLength: () => data.length,
        pread: (off: number, buf: Uint8Array) => Promise.resolve(void buf.set(data.subarray(off, off + buf.length))),
        pwrite(off: number, buf: Uint8Array) {
          if (off + buf.length > data.length) grow(off + buf.length);
          data.set(buf, off);
          return Promise.resolve();
        },
        pwriteZeroes: (off: number, len: number) => Promise.resolve(void data.fill(0, off, off + len)),
        truncate: (len: number) => Promise.resolve(grow(len)),
        flush: () => Promise.resolve(),
        close: () => Promise.resolve(),
      });
    },
  });
  return { made, objects, opens: () => opens, [Symbol.dispose]: () => reg[Symbol.dispose]() };
}

Deno.test("createImage of a raw image on a protocol that makes its object at the size opens nothing (qemu's raw_co_create)", async () => {
  using p = madeProtocol();
  await createImage("test-made:disk", "raw", 1 << 20);
  assert.deepEqual(p.made, [{ name: "disk", size: 1 << 20 }]);
  assert.equal(p.opens(), 0, "the new object was opened, though raw writes nothing onto it");
  // Sizes round up to whole sectors as before.
  await createImage("test-made:odd", "raw", 1000);
  assert.deepEqual(p.made[1], { name: "odd", size: 1024 });
  assert.equal(p.opens(), 0);
});

Deno.test("createImage of a preallocated raw image, or another format, on such a protocol still writes through an open node", async () => {
  using p = madeProtocol();
  await createImage("test-made:full", "raw", 65536, { options: { preallocation: "full" } });
  assert.equal(p.opens(), 1);
  await createImage("test-made:q", "qcow2", 1 << 20);
  assert.equal(p.opens(), 2);
  assert.equal(new TextDecoder().decode(p.objects.get("q")!.subarray(0, 3)), "QFI");
});
