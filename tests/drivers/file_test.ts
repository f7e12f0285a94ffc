import assert from "node:assert/strict";
import { type BlockError, open } from "../../mod.ts";
import { hasTool, pattern, run, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { allocated, isCode, MiB, openFile, withFile } from "./_file_helpers.ts";

Deno.test("file node uses FFI positional I/O and OFD locks when --allow-ffi is granted", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path);
    assert.deepEqual(await n.info(), { backend: "ffi", locking: "ofd", direct: false, aio: "sync", requestAlignment: 1 });
  });
});

Deno.test("file node round-trips patterns at scattered offsets", async () => {
  await withFile(4 * MiB, async (path) => {
    await using n = await openFile(path);
    const offsets = [0, 6000, 20003, 65537, 3 * MiB + 17];
    for (const [i, o] of offsets.entries()) await n.pwrite(o, pattern(5000, 0x10 + i));
    for (const [i, o] of offsets.entries()) {
      const buf = new Uint8Array(5000);
      await n.pread(o, buf);
      assert.deepEqual(buf, pattern(5000, 0x10 + i), `offset ${o}`);
    }
  });
});

Deno.test("file node data is in the host file", async () => {
  await withFile(MiB, async (path) => {
    {
      await using n = await openFile(path);
      await n.pwrite(8192, pattern(4096, 0xc3));
    }
    const bytes = await Deno.readFile(path);
    assert.deepEqual(bytes.subarray(8192, 8192 + 4096), pattern(4096, 0xc3));
  });
});

Deno.test("pread() and pwrite() past the end of the file node you hold fail with EIO, as in qemu-io", async () => {
  await withFile(4096, async (path) => {
    await using n = await openFile(path);
    await assert.rejects(n.pread(4096, new Uint8Array(512)), (e: BlockError) => e.code === "EIO" && /past the end/.test(e.message));
    await assert.rejects(n.pwrite(4096, new Uint8Array(512)), (e: BlockError) => e.code === "EIO");
    await assert.rejects(n.pwriteZeroes(4000, 512), (e: BlockError) => e.code === "EIO");
    assert.equal((await Deno.stat(path)).size, 4096);
    await n.close();
    if (hasTool("qemu-io")) {
      const r = await run("qemu-io", ["-c", "read 4096 512", "-c", "write 4096 512", `json:{"driver":"file","filename":"${path}"}`]);
      assert.equal(r.stdout, "read failed: Input/output error\nwrite failed: Input/output error\n");
    }
  });
});

Deno.test("pread() past the end of a file reads zeros", async () => {
  await withFile(4096, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwrite(0, pattern(4096, 0xff));
    const buf = new Uint8Array(8192).fill(0xee);
    await n.pread(2048, buf);
    assert.deepEqual(buf.subarray(0, 2048), pattern(2048, 0xff));
    assert.deepEqual(buf.subarray(2048), new Uint8Array(6144));
  });
});

Deno.test("pwrite() past the end grows the file", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwrite(MiB, pattern(100, 1));
    assert.equal(n.length, MiB + 100);
    assert.equal((await Deno.stat(path)).size, MiB + 100);
  });
});

Deno.test("truncate() shrinks and grows the file", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path);
    await n.pwrite(0, pattern(8192, 0x77));
    await n.truncate(4096);
    assert.equal((await Deno.stat(path)).size, 4096);
    await n.truncate(8192);
    assert.equal(n.length, 8192);
    const buf = new Uint8Array(8192);
    await n.pread(0, buf);
    assert.deepEqual(buf.subarray(4096), new Uint8Array(4096), "grown part reads zeros");
  });
});

Deno.test("truncate() with prealloc falloc allocates the grown part", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    await n.truncate(4 * MiB, { prealloc: "falloc" });
    assert.equal((await Deno.stat(path)).size, 4 * MiB);
    assert.ok(await allocated(path) >= 4 * MiB);
  });
});

Deno.test("truncate() with prealloc full writes zeros over the grown part", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    await n.truncate(2 * MiB + 100, { prealloc: "full" });
    assert.equal((await Deno.stat(path)).size, 2 * MiB + 100);
    assert.ok(await allocated(path) >= 2 * MiB);
  });
});

Deno.test("truncate() with prealloc metadata fails with ENOTSUP", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    await assert.rejects(n.truncate(MiB, { prealloc: "metadata" }), (e: BlockError) => e.code === "ENOTSUP" && /metadata/.test(e.message));
  });
});

Deno.test("pwriteZeroes() with mayUnmap punches a hole that reads zeros", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwrite(0, pattern(4 * MiB, 0x5a));
    await n.flush();
    const before = await allocated(path);
    await n.pwriteZeroes(MiB, 2 * MiB, { mayUnmap: true });
    assert.ok(await allocated(path) <= before - 2 * MiB, "blocks were freed");
    const buf = new Uint8Array(2 * MiB);
    await n.pread(MiB, buf);
    assert.deepEqual(buf, new Uint8Array(2 * MiB));
    assert.equal(n.length, 4 * MiB);
  });
});

Deno.test("pwriteZeroes() without mayUnmap zeroes the range and keeps it allocated", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwrite(0, pattern(MiB, 0x5a));
    await n.pwriteZeroes(4096, 8192);
    const buf = new Uint8Array(16384);
    await n.pread(0, buf);
    assert.deepEqual(buf.subarray(0, 4096), pattern(4096, 0x5a));
    assert.deepEqual(buf.subarray(4096, 12288), new Uint8Array(8192));
    assert.deepEqual(buf.subarray(12288), pattern(4096, 0x5a));
    assert.equal((await n.blockStatus(4096, 8192)).data, true);
  });
});

Deno.test("pwriteZeroes() past the end grows the file", async () => {
  await withFile(4096, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwriteZeroes(4096, MiB, { mayUnmap: true });
    assert.equal(n.length, MiB + 4096);
    assert.equal((await Deno.stat(path)).size, MiB + 4096);
  });
});

Deno.test("pdiscard() punches a hole", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwrite(0, pattern(2 * MiB, 0x11));
    await n.pdiscard(0, MiB);
    const st = await n.blockStatus(0, 2 * MiB);
    assert.deepEqual([st.length, st.data, st.zero], [MiB, false, true]);
  });
});

Deno.test("blockStatus() reports data and holes from SEEK_DATA/SEEK_HOLE", async () => {
  await withFile(4 * MiB, async (path) => {
    await using n = await openFile(path);
    await n.pwrite(MiB, pattern(MiB, 1));
    const hole = await n.blockStatus(0, 4 * MiB);
    assert.deepEqual([hole.offset, hole.length, hole.data, hole.zero], [0, MiB, false, true]);
    const data = await n.blockStatus(MiB, 3 * MiB);
    assert.deepEqual([data.offset, data.length, data.data, data.zero], [MiB, MiB, true, false]);
    const tail = await n.blockStatus(2 * MiB, 2 * MiB);
    assert.deepEqual([tail.length, tail.data], [2 * MiB, false]);
  });
});

Deno.test("blockStatus() agrees with qemu-img map", { ignore: skipUnless("qemu-img") }, async () => {
  await withFile(8 * MiB, async (path) => {
    const ours: { start: number; length: number; data: boolean }[] = [];
    {
      await using n = await openFile(path);
      for (const o of [0, 3 * MiB, 7 * MiB]) await n.pwrite(o, pattern(MiB / 2, 9));
      for (let o = 0; o < n.length;) {
        const st = await n.blockStatus(o, n.length - o);
        const last = ours.at(-1);
        if (last && last.data === st.data) last.length += st.length;
        else ours.push({ start: o, length: st.length, data: st.data });
        o += st.length;
      }
    }
    const r = await run("qemu-img", ["map", "--output=json", "-f", "raw", path]);
    const theirs = (JSON.parse(r.stdout) as { start: number; length: number; data: boolean }[])
      .map(({ start, length, data }) => ({ start, length, data }));
    assert.deepEqual(ours, theirs);
  });
});

Deno.test("opening a missing file fails with ENOENT naming it", async () => {
  await using dir = await tempDir();
  await assert.rejects(
    openFile(`${dir.path}/nope.img`),
    (e: BlockError) => e.code === "ENOENT" && e.message.includes("nope.img") && /No such file/.test(e.message),
  );
});

Deno.test("opening a directory fails with EINVAL", async () => {
  await using dir = await tempDir();
  await assert.rejects(openFile(dir.path), (e: BlockError) => e.code === "EINVAL" && /directory/.test(e.message));
});

Deno.test("create=on creates a missing file", async () => {
  await using dir = await tempDir();
  await using n = await openFile(`${dir.path}/new.img`, { create: true });
  assert.equal(n.length, 0);
  assert.ok((await Deno.stat(`${dir.path}/new.img`)).isFile);
});

Deno.test("a read-only node of a read-only file reads and refuses writes with EROFS", async () => {
  await withFile(MiB, async (path) => {
    await Deno.chmod(path, 0o444);
    await using n = await open({ driver: "file", filename: path, "read-only": true });
    await n.pread(0, new Uint8Array(512));
    await assert.rejects(n.pwrite(0, pattern(512, 1)), isCode("EROFS"));
  });
});
