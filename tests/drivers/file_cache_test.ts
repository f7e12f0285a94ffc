import assert from "node:assert/strict";
import { pattern } from "../_helpers/qemu.ts";
import { allocated, MiB, openFile, withFile } from "./_file_helpers.ts";

Deno.test("cache=unsafe makes flush a no-op on a file node", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path, {}, "unsafe");
    await n.pwrite(0, pattern(4096, 1));
    await n.flush();
    assert.equal(n.stats.flushes, 0);
    assert.equal(n.stats.flushesSkipped, 1);
  });
});

Deno.test("cache=writeback flushes once per batch of writes", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path);
    await n.pwrite(0, pattern(4096, 1));
    await n.pwrite(4096, pattern(4096, 1));
    await n.flush();
    await n.flush();
    assert.equal(n.stats.flushes, 1);
  });
});

Deno.test("cache=none opens with O_DIRECT and a probed request alignment", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path, {}, "none");
    const info = await n.info();
    assert.equal(info.direct, true);
    assert.ok([512, 1024, 2048, 4096].includes(n.limits.requestAlignment), `alignment ${n.limits.requestAlignment}`);
  });
});

Deno.test("cache=none round-trips unaligned requests through aligned bounce buffers", async () => {
  await withFile(MiB, async (path) => {
    {
      await using n = await openFile(path, {}, "none");
      await n.pwrite(100, pattern(10000, 0x42));
      const buf = new Uint8Array(10002);
      await n.pread(99, buf);
      assert.equal(buf[0], 0);
      assert.deepEqual(buf.subarray(1, 10001), pattern(10000, 0x42));
      assert.equal(buf[10001], 0);
    }
    const bytes = await Deno.readFile(path);
    assert.deepEqual(bytes.subarray(100, 10100), pattern(10000, 0x42));
  });
});

Deno.test("cache=none reads zeros past the end of an unaligned file", async () => {
  await withFile(0, async (path) => {
    await Deno.writeFile(path, pattern(1000, 0x17));
    await using n = await openFile(path, {}, "none");
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    const buf = new Uint8Array(4096).fill(0xee);
    await n.pread(0, buf);
    assert.deepEqual(buf.subarray(0, 1000), pattern(1000, 0x17));
    assert.deepEqual(buf.subarray(1000), new Uint8Array(3096));
  });
});

Deno.test("cache=none truncate() with prealloc full to an unaligned size writes zeros", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path, {}, "none");
    await n.truncate(MiB + 100, { prealloc: "full" });
    assert.equal((await Deno.stat(path)).size, MiB + 100);
    assert.ok(await allocated(path) >= MiB);
  });
});

Deno.test("cache=directsync writes each request through to the disk", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path, {}, "directsync");
    await n.pwrite(0, pattern(4096, 1));
    await n.pwrite(8192, pattern(4096, 1));
    assert.equal(n.stats.flushes, 2);
  });
});
