import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { run, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli, normaliseTimes } from "./_run.ts";

async function rawImage(dir: string, size = 1 << 20): Promise<string> {
  const path = `${dir}/disk.raw`;
  await Deno.writeFile(path, new Uint8Array(size));
  return path;
}

/** Runs the same -c commands through qemu-io and blkgraph io on two copies of an image. */
async function both(dir: string, cmds: string[], args: string[] = ["-f", "raw"]) {
  const a = await rawImage(dir + "/a");
  const b = await rawImage(dir + "/b");
  const c = cmds.flatMap((x) => ["-c", x]);
  const q = await run("qemu-io", [...args, ...c, a]);
  const ours = await cli(["io", ...args, ...c, b]);
  return { q, ours, a, b };
}

async function withDirs<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  await using d = await tempDir();
  await Deno.mkdir(`${d.path}/a`);
  await Deno.mkdir(`${d.path}/b`);
  return await fn(d.path);
}

Deno.test({
  name: "io write/read with -P prints what qemu-io prints",
  ignore: skipUnless("qemu-io"),
  fn: () =>
    withDirs(async (dir) => {
      const { q, ours } = await both(dir, ["write -P 0xab 0 64k", "read -P 0xab 0 64k", "write -P 7 1000 1", "read -P 7 1000 1"]);
      assertEquals(normaliseTimes(ours.stdout), normaliseTimes(q.stdout));
      assertEquals(ours.code, q.code);
    }),
});

Deno.test({
  name: "io read -P mismatch reports the offset and fails like qemu-io",
  ignore: skipUnless("qemu-io"),
  fn: () =>
    withDirs(async (dir) => {
      const { q, ours } = await both(dir, ["write -P 1 0 4k", "read -P 2 0 512", "read -P 1 -s 512 -l 512 0 4k"]);
      assertEquals(normaliseTimes(ours.stdout), normaliseTimes(q.stdout));
      assertEquals(ours.code, q.code);
    }),
});

Deno.test({
  name: "io read -v prints qemu-io's hexdump",
  ignore: skipUnless("qemu-io"),
  fn: () =>
    withDirs(async (dir) => {
      const { q, ours } = await both(dir, ["write -P 0x41 0 20", "write -P 0x2e 20 7", "read -v 0 40", "read -v 100 3"]);
      assertEquals(normaliseTimes(ours.stdout), normaliseTimes(q.stdout));
    }),
});

Deno.test({
  name: "io write -z, discard, writev, readv, flush match qemu-io",
  ignore: skipUnless("qemu-io"),
  fn: () =>
    withDirs(async (dir) => {
      const { q, ours, a, b } = await both(dir, [
        "write -P 5 0 16k",
        "write -z 4k 4k",
        "read -P 0 4k 4k",
        "writev -P 3 8k 512 1k 2k",
        "readv -P 3 8k 512 1k 2k",
        "flush",
        "discard -q 12k 512",
        "write -f -P 9 0 512",
      ]);
      assertEquals(normaliseTimes(ours.stdout), normaliseTimes(q.stdout));
      assertEquals(await Deno.readFile(b), await Deno.readFile(a));
    }),
});

Deno.test({
  name: "io length, alloc, map, info and truncate match qemu-io on raw",
  ignore: skipUnless("qemu-io"),
  fn: () =>
    withDirs(async (dir) => {
      const { q, ours } = await both(dir, ["length", "alloc 0", "alloc 4k 64k", "map", "info", "truncate 2M", "length"]);
      assertEquals(ours.stdout, q.stdout);
    }),
});

Deno.test({
  name: "io reports errors as qemu-io does (read past end, bad number, unknown command)",
  ignore: skipUnless("qemu-io"),
  fn: () =>
    withDirs(async (dir) => {
      const { q, ours } = await both(dir, [
        "read 2M 512",
        "write 0 12x",
        "nosuchcmd",
        "read 0",
        "read -b 0 512",
        "write -b 0 512",
        "length",
      ]);
      assertEquals(ours.stdout, q.stdout);
      assertEquals(ours.stderr, q.stderr);
      assertEquals(ours.code, q.code);
    }),
});

Deno.test({
  name: "io aio_write and aio_read complete by aio_flush",
  ignore: skipUnless("qemu-io"),
  fn: () =>
    withDirs(async (dir) => {
      const { ours, a, b } = await both(dir, [
        "aio_write -P 6 0 4k",
        "aio_write -P 7 4k 4k",
        "aio_flush",
        "aio_read -P 7 4k 4k",
        "aio_flush",
      ]);
      const lines = normaliseTimes(ours.stdout).split("\n").filter((l) => l.includes("bytes at offset")).sort();
      assertEquals(lines, [
        "read 4096/4096 bytes at offset 4096",
        "wrote 4096/4096 bytes at offset 0",
        "wrote 4096/4096 bytes at offset 4096",
      ]);
      assertEquals(await Deno.readFile(b), await Deno.readFile(a));
    }),
});

Deno.test("io help lists the command table", async () => {
  const r = await cli(["io", "-c", "help"]);
  assertEquals(r.code, 0);
  for (const name of ["read", "write", "aio_read", "break", "wait_break", "resume", "remove_break", "alloc", "map"]) {
    assertEquals(r.stdout.includes(`\n${name} `) || r.stdout.startsWith(`${name} `), true, name);
  }
});

Deno.test("io without -c reads commands at a qemu-io> prompt", async () => {
  await using d = await tempDir();
  const path = await rawImage(d.path, 65536);
  const r = await cli(["io", "-f", "raw", path], ["write -P 1 0 512", "read -P 1 0 512 ", "quit", "length"]);
  assertEquals(r.code, 0);
  assertEquals(r.stdout.startsWith("qemu-io> wrote 512/512 bytes at offset 0\n"), true);
  assertEquals(r.stdout.includes("qemu-io> read 512/512 bytes at offset 0\n"), true);
  assertEquals(r.stdout.includes("64 KiB"), false);
});

Deno.test("io open and close switch images; commands without an image say so", async () => {
  await using d = await tempDir();
  const path = await rawImage(d.path, 65536);
  const r = await cli(["io", "-c", "length", "-c", `open -f raw ${path}`, "-c", "length", "-c", "close", "-c", "length"]);
  assertEquals(r.stdout, "64 KiB\n");
  assertEquals(r.stderr, "no file open, try 'help open'\nno file open, try 'help open'\n");
  assertEquals(r.code, 1);
});

Deno.test({
  name: "io -r refuses writing commands before they run, with qemu-io's message",
  ignore: skipUnless("qemu-io"),
  async fn() {
    await using d = await tempDir();
    const path = await rawImage(d.path, 65536);
    const cmds = ["-c", "write 0 512", "-c", "writev 0 512", "-c", "aio_write 0 512", "-c", "discard 0 512", "-c", "truncate 4096"];
    const q = await run("qemu-io", ["-r", "-f", "raw", ...cmds, path]);
    const r = await cli(["io", "-r", "-f", "raw", ...cmds, path]);
    assertEquals(r.stdout, q.stdout);
    assertEquals(r.stderr.replaceAll("blkgraph:", "qemu-io:"), q.stderr);
    assertEquals([r.code, q.code], [1, 1]);
    assertEquals(r.stderr, "blkgraph: Block node is read-only\n".repeat(5));
  },
});

Deno.test("io --trace prints flushes as they happen", async () => {
  await using d = await tempDir();
  const path = await rawImage(d.path, 65536);
  const r = await cli(["io", "--trace", "-f", "raw", "-c", "write -q 0 512", "-c", "flush", path]);
  assertEquals(r.code, 0);
  assertEquals(/ flush /.test(r.stdout), true, r.stdout);
});

Deno.test({
  name: "io warns like qemu-io when a writable image is probed as raw",
  ignore: skipUnless("qemu-io"),
  async fn() {
    await using d = await tempDir();
    const path = await rawImage(d.path, 65536);
    const q = await run("qemu-io", ["-c", "length", path]);
    const ours = await cli(["io", "-c", "length", path]);
    assertEquals([ours.stdout, ours.stderr], [q.stdout, q.stderr]);
    assertEquals((await cli(["io", "-r", "-c", "length", path])).stderr, "");
  },
});
