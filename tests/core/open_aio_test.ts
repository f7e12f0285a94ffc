/**
 * `open()`'s `aio` (qemu-img bench's and qemu-io's `-i`, QEMU's
 * BDRV_O_NATIVE_AIO / BDRV_O_IO_URING open flags): the AIO mode of every
 * node whose driver takes an `aio` option, children and backing files
 * included, unless the node's own options set one.
 */

import assert from "node:assert/strict";
import { type BlockNode, createImage, open } from "../../mod.ts";
import { run, skipUnless, tempDir } from "../_helpers/qemu.ts";

const CLI = new URL("../../cli/main.ts", import.meta.url).pathname;

/** The `file` nodes of a graph, top first. */
function fileNodes(n: BlockNode): BlockNode[] {
  const out = n.driver.name === "file" ? [n] : [];
  for (const c of n.children.values()) out.push(...fileNodes(c));
  return out;
}

const aioOf = async (n: BlockNode) => (await n.info()).aio;

Deno.test("open() with aio sets the aio of every file node, a qcow2 image's and its backing file's", async () => {
  await using d = await tempDir();
  await createImage(`${d.path}/base.qcow2`, "qcow2", 1 << 20);
  await createImage(`${d.path}/top.qcow2`, "qcow2", 1 << 20, { options: { backing_file: `${d.path}/base.qcow2`, backing_fmt: "qcow2" } });
  await using img = await open(`${d.path}/top.qcow2`, { aio: "threads" });
  const files = fileNodes(img);
  assert.equal(files.length, 2);
  for (const f of files) assert.equal(await aioOf(f), "threads", f.name);
  await img.pwrite(0, new Uint8Array(4096).fill(3));
  const back = new Uint8Array(4096);
  await img.pread(0, back);
  assert.ok(back.every((b) => b === 3));
});

Deno.test("open() without aio keeps the file node's own default (one synchronous call per buffered request)", async () => {
  await using d = await tempDir();
  await createImage(`${d.path}/a.raw`, "raw", 1 << 20);
  await using img = await open(`${d.path}/a.raw`, { format: "raw" });
  assert.equal(await aioOf(fileNodes(img)[0]), "sync");
});

Deno.test("a node's own aio option wins over open()'s", async () => {
  await using d = await tempDir();
  await createImage(`${d.path}/a.raw`, "raw", 1 << 20);
  await using img = await open({ driver: "raw", file: { driver: "file", filename: `${d.path}/a.raw`, aio: "threads" } }, {
    aio: "io_uring",
  });
  assert.equal(await aioOf(fileNodes(img)[0]), "threads");
});

Deno.test("open() with aio leaves drivers without an aio option alone", async () => {
  await using m = await open({ driver: "memory", size: 65536 }, { aio: "threads" });
  assert.equal(m.length, 65536);
});

Deno.test("open() refuses an unknown aio mode, naming it", async () => {
  await assert.rejects(open({ driver: "memory", size: 65536 }, { aio: "posix" }), /Invalid aio option: posix/);
});

Deno.test({
  name: "aio=native needs cache.direct, as QEMU's: qemu-io -k and a file node's aio=native fail with QEMU's message",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const img = `${d.path}/a.qcow2`;
    await createImage(img, "qcow2", 1 << 20);
    const msg = "aio=native was specified, but it requires cache.direct=on, which was not specified.";
    const q = await run("qemu-io", ["-k", "-c", "quit", img]);
    assert.equal(q.code, 1);
    assert.ok(q.stderr.includes(msg), q.stderr);
    const o = await run(Deno.execPath(), ["run", "-A", CLI, "io", "-k", "-c", "quit", img]);
    assert.equal(o.code, 1);
    assert.ok(o.stderr.includes(msg), o.stderr);
    await assert.rejects(
      open({ driver: "qcow2", file: { driver: "file", filename: img, aio: "native" } }),
      (e: Error) => e.message.includes(msg),
    );
    // With O_DIRECT it opens, on both.
    assert.equal((await run("qemu-io", ["-k", "-t", "none", "-c", "read 0 4k", img])).code, 0);
    assert.equal((await run(Deno.execPath(), ["run", "-A", CLI, "io", "-k", "-t", "none", "-c", "read 0 4k", img])).code, 0);
  },
});

Deno.test({
  name: "bench -i and qemu-io -i refuse an unknown aio mode with qemu-img's message",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const img = `${d.path}/a.qcow2`;
    await createImage(img, "qcow2", 1 << 20);
    for (const [tool, verb] of [["qemu-img", "bench"], ["qemu-io", "io"]] as const) {
      const args = verb === "bench" ? ["bench", "-i", "posix", "-c", "1", img] : ["-i", "posix", "-c", "quit", img];
      const q = await run(tool, args);
      const o = await run(Deno.execPath(), ["run", "-A", CLI, verb, ...args.slice(verb === "bench" ? 1 : 0)]);
      assert.equal(o.code, q.code, `${tool}: ${q.stderr} / ${o.stderr}`);
      assert.ok(q.stderr.includes("Invalid aio option: posix"), q.stderr);
      assert.ok(o.stderr.includes("Invalid aio option: posix"), o.stderr);
    }
  },
});

Deno.test({
  name: "bench -i threads reads on worker threads; without -i, each read is a synchronous call on the main thread",
  ignore: skipUnless("qemu-img", "strace"),
  async fn() {
    await using d = await tempDir();
    const img = `${d.path}/a.raw`;
    await createImage(img, "raw", 1 << 20);
    /** How many of the bench's reads of the image ran on the main thread, and on others. */
    const where = async (extra: string[]) => {
      const log = `${d.path}/strace${extra.length}`;
      const args = ["run", "-A", CLI, "bench", "-f", "raw", ...extra, "-c", "64", "-d", "4", img];
      const r = await run("strace", ["-f", "-qq", "-y", "-o", log, "-e", "trace=pread64", Deno.execPath(), ...args]);
      assert.equal(r.code, 0, r.stderr);
      const lines = (await Deno.readTextFile(log)).split("\n").filter((l) => l.trim());
      // The first line is the process's own thread (the dynamic loader reads libraries before any thread starts).
      // strace pads the thread id to five columns.
      const tid = (l: string) => l.trim().split(/\s+/)[0];
      const main = tid(lines[0]);
      const reads = lines.filter((l) => l.includes(`<${img}>`));
      return { main: reads.filter((l) => tid(l) === main).length, others: reads.filter((l) => tid(l) !== main).length };
    };
    assert.deepEqual(await where([]), { main: 64, others: 0 });
    const threads = await where(["-i", "threads"]);
    assert.ok(threads.others >= 64, JSON.stringify(threads));
  },
});

Deno.test({
  name: "qemu-io's open command takes -i and -k as qemu-io's does: the same messages and exit codes",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const img = `${d.path}/a.qcow2`;
    await createImage(img, "qcow2", 1 << 20);
    for (const cmd of [`open -i posix ${img}`, `open -k ${img}`, `open -k -t none ${img}`, `open -i threads ${img}`]) {
      const q = await run("qemu-io", ["-c", cmd]);
      const o = await run(Deno.execPath(), ["run", "-A", CLI, "io", "-c", cmd]);
      assert.equal(o.code, q.code, `${cmd}: ${q.stderr} / ${o.stderr}`);
      assert.equal(o.stderr.replace(/^blkgraph:/gm, "qemu-io:"), q.stderr, cmd);
    }
  },
});
