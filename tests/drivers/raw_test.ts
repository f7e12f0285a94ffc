import assert from "node:assert/strict";
import { type BlockError, createImage, open } from "../../mod.ts";
import { pattern, run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const MiB = 1 << 20;

/** A raw image of `size` bytes whose byte i is `i & 0xff`. */
async function counting(dir: string, size: number): Promise<string> {
  const path = `${dir}/disk.raw`;
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = i & 0xff;
  await Deno.writeFile(path, bytes);
  return path;
}

function windowed(path: string, offset: number, size?: number, readOnly = false) {
  return open({ driver: "raw", offset, ...(size === undefined ? {} : { size }), file: { driver: "file", filename: path } }, { readOnly });
}

Deno.test("raw with offset and size reads inside its window", async () => {
  await using dir = await tempDir();
  const path = await counting(dir.path, 64 * 1024);
  await using n = await windowed(path, 1000, 8192);
  assert.equal(n.length, 8192);
  const buf = new Uint8Array(16);
  await n.pread(10, buf);
  assert.deepEqual([...buf], Array.from({ length: 16 }, (_, i) => (1010 + i) & 0xff));
});

Deno.test("raw with offset and size writes at the shifted host offset", async () => {
  await using dir = await tempDir();
  const path = await counting(dir.path, 64 * 1024);
  {
    await using n = await windowed(path, 4096, 8192);
    await n.pwrite(0, pattern(512, 0xaa));
  }
  const bytes = await Deno.readFile(path);
  assert.deepEqual(bytes.subarray(4096, 4608), pattern(512, 0xaa));
  assert.equal(bytes[4095], 4095 & 0xff);
});

Deno.test("raw write past the end of its window fails with EIO (as qemu-io's, iotest 171) and leaves the file alone", async () => {
  await using dir = await tempDir();
  const path = await counting(dir.path, 64 * 1024);
  {
    await using n = await windowed(path, 4096, 8192);
    await assert.rejects(
      n.pwrite(8000, pattern(512, 1)),
      (e: BlockError) => e.code === "EIO" && /past the end of the image \(length 8192\)/.test(e.message),
    );
  }
  const bytes = await Deno.readFile(path);
  assert.equal(bytes[4096 + 8000], (4096 + 8000) & 0xff);
});

Deno.test("raw with only offset sees the rest of the file, rounded up to whole sectors", async () => {
  await using dir = await tempDir();
  const path = await counting(dir.path, 10240);
  await using n = await windowed(path, 1024);
  assert.equal(n.length, 9216);
  const buf = new Uint8Array(4);
  await n.pread(9212, buf);
  assert.deepEqual([...buf], [252, 253, 254, 255]);
});

Deno.test({
  name: "a raw image whose file is not whole sectors is a disk of whole sectors with a zero tail, as qemu-io sees it",
  ignore: skipUnless("qemu-io"),
  async fn() {
    await using dir = await tempDir();
    const path = await counting(dir.path, 1234);
    const q = await runOk("qemu-io", ["-f", "raw", "-c", "length", "-c", "read -v 1200 100", path]);
    await using n = await open({ driver: "raw", file: { driver: "file", filename: path } });
    assert.equal(n.length, 1536);
    assert.equal(q.stdout.split("\n")[0], "1.500 KiB");
    const buf = new Uint8Array(100);
    await n.pread(1200, buf);
    assert.deepEqual([...buf], Array.from({ length: 100 }, (_, i) => (1200 + i < 1234 ? (1200 + i) & 0xff : 0)));
    assert.ok(q.stdout.includes("000004d0:  d0 d1 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................"), q.stdout);
  },
});

Deno.test("raw refuses a size that is not a multiple of 512, as QEMU does", async () => {
  await using dir = await tempDir();
  const path = await counting(dir.path, 4096);
  await assert.rejects(windowed(path, 0, 1000), (e: BlockError) => e.code === "EINVAL" && /not multiple of 512/.test(e.message));
});

Deno.test("raw offset past the end of the file fails with EINVAL naming it", async () => {
  await using dir = await tempDir();
  const path = await counting(dir.path, 4096);
  await assert.rejects(windowed(path, 8192), (e: BlockError) => e.code === "EINVAL" && /offset 8192/.test(e.message));
});

Deno.test("raw read-only window past the end of the file fails with EINVAL", async () => {
  await using dir = await tempDir();
  const path = await counting(dir.path, 4096);
  await assert.rejects(windowed(path, 1024, 8192, true), (e: BlockError) => e.code === "EINVAL" && /size/.test(e.message));
});

Deno.test("raw with a window refuses truncate with ENOTSUP", async () => {
  await using dir = await tempDir();
  const path = await counting(dir.path, 8192);
  await using n = await windowed(path, 512, 1024);
  await assert.rejects(n.truncate(4096), (e: BlockError) => e.code === "ENOTSUP");
});

Deno.test("a plain filename of a raw file opens as raw with probed set", async () => {
  await using dir = await tempDir();
  const path = await counting(dir.path, 8192);
  await using n = await open(path);
  assert.equal(n.driver.name, "raw");
  assert.equal(n.probed, true);
  assert.equal(n.file?.driver.name, "file");
});

const QCOW2_MAGIC = new Uint8Array([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);

Deno.test("a probed raw image refuses a sector-0 write that starts with the qcow2 magic (EPERM)", async () => {
  await using dir = await tempDir();
  const path = await counting(dir.path, 8192);
  {
    await using n = await open(path);
    await assert.rejects(n.pwrite(0, QCOW2_MAGIC), (e: BlockError) => e.code === "EPERM" && /driver=raw/.test(e.message));
    await n.pwrite(512, QCOW2_MAGIC);
  }
  assert.equal((await Deno.readFile(path))[0], 0);
});

Deno.test("driver=raw allows a sector-0 write of the qcow2 magic", async () => {
  await using dir = await tempDir();
  const path = await counting(dir.path, 8192);
  {
    await using n = await open({ driver: "raw", file: { driver: "file", filename: path } });
    await n.pwrite(0, QCOW2_MAGIC);
  }
  assert.deepEqual((await Deno.readFile(path)).subarray(0, 8), QCOW2_MAGIC);
});

Deno.test("blockStatus() of raw passes the file's holes through", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/sparse.raw`;
  await createImage(path, "raw", 4 * MiB);
  await using n = await open({ driver: "raw", file: { driver: "file", filename: path } });
  await n.pwrite(2 * MiB, pattern(4096, 1));
  // Like qemu-img create, the first 4 KiB were written when the file was made.
  const first = await n.blockStatus(0, 4 * MiB);
  assert.deepEqual([first.length, first.data], [4096, true]);
  const hole = await n.blockStatus(4096, 4 * MiB - 4096);
  assert.deepEqual([hole.length, hole.data, hole.zero], [2 * MiB - 4096, false, true]);
  const data = await n.blockStatus(2 * MiB, MiB);
  assert.equal(data.data, true);
});

Deno.test("createImage() raw with preallocation=falloc allocates the image", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/falloc.raw`;
  await createImage(path, "raw", 2 * MiB, { options: { preallocation: "falloc" } });
  const st = await Deno.stat(path);
  assert.equal(st.size, 2 * MiB);
  assert.ok((st.blocks ?? 0) * 512 >= 2 * MiB);
});

Deno.test("raw over file reads a pattern qemu-io wrote, byte for byte", { ignore: skipUnless("qemu-io", "qemu-img") }, async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/q.raw`;
  await runOk("qemu-img", ["create", "-f", "raw", path, "4M"]);
  await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0xa5 65536 131072", "-c", "write -P 0x3c 1048071 999", path]);
  await using n = await open({ driver: "raw", file: { driver: "file", filename: path } });
  const buf = new Uint8Array(4 * MiB);
  await n.pread(0, buf);
  const want = new Uint8Array(4 * MiB);
  want.fill(0xa5, 65536, 65536 + 131072);
  want.fill(0x3c, 1048071, 1048071 + 999);
  assert.deepEqual(buf, want);
});

Deno.test("qemu-io verifies a pattern written through raw over file", { ignore: skipUnless("qemu-io") }, async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/b.raw`;
  await createImage(path, "raw", 4 * MiB);
  {
    await using n = await open({ driver: "raw", file: { driver: "file", filename: path } });
    await n.pwrite(12345, pattern(70000, 0x6e));
    await n.pwrite(3 * MiB, pattern(4096, 0x01));
    await n.flush();
  }
  const r = await run("qemu-io", [
    "-f",
    "raw",
    "-c",
    "read -P 0x6e 12345 70000",
    "-c",
    "read -P 0x01 3145728 4096",
    "-c",
    "read -P 0 0 12345",
    "-c",
    "read -P 0 82345 65536",
    path,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /Pattern verification failed/);
  assert.equal(r.stdout.match(/read \d+\/\d+ bytes/g)?.length, 4);
});

Deno.test("raw raises read_aio before each read and write_aio before each write on its file child, as QEMU's raw driver", async () => {
  const spec = (event: string, errno: number) => ({
    driver: "raw",
    file: { driver: "blkdebug", "inject-error": [{ event, errno, once: true }], image: { driver: "memory", size: 65536 } },
  });
  {
    await using n = await open(spec("read_aio", 28));
    await n.pwrite(0, new Uint8Array(512).fill(1)); // no read_aio: the rule stays unarmed
    await assert.rejects(n.pread(0, new Uint8Array(512)), (e: BlockError) => e.code === "ENOSPC");
  }
  {
    await using n = await open(spec("write_aio", 13));
    await n.pread(0, new Uint8Array(512));
    await assert.rejects(n.pwrite(0, new Uint8Array(512)), (e: BlockError) => e.code === "EACCES");
    await n.pwrite(0, new Uint8Array(512)); // once: the rule is gone
  }
});
