/**
 * The report every timed io command prints (cli/io_commands/_timed.ts):
 * `-q` prints none, `-C` the comma-separated form, `-v` the hexdump first,
 * a failed request "<what> failed: <strerror>" and exit code 1, for read,
 * write, readv, writev, discard, aio_read and aio_write — compared with
 * qemu-io, and without it against the forms themselves.
 */

import { deepStrictEqual as assertEquals, match as assertMatch } from "node:assert/strict";
import { run, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli, normaliseTimes } from "./_run.ts";

/** Both of qemu-io's timing forms with the figures replaced: "N ops; TIME" and -C's "bytes,ops,TIME". */
function normalise(text: string): string {
  return normaliseTimes(text).replace(/^(\d+),(\d+),\d+:\d\d:\d\d\.\d\d,\d+\.\d{3},\d+\.\d{3}$/gm, "$1,$2,TIME");
}

const COMMANDS = [
  "write -P 1 0 4k",
  "write -q 0 512",
  "write -C 512 512",
  "read -C -P 1 1k 512",
  "read -q -P 1 1k 512",
  "read -q -P 2 1k 512",
  "read -v -q 0 16",
  "read -v -C 0 16",
  "readv -C 0 512 512",
  "readv -q -P 2 0 512",
  "readv -v -C -P 1 2k 16",
  "writev -C 0 512 512",
  "writev -q 0 512",
  "discard -C 0 4k",
  "discard -q 0 4k",
  "read 2M 512",
  "write 2M 512",
  "readv 2M 512",
  "writev 2M 512",
  "discard 2M 512",
  "aio_read -C 0 512",
  "aio_flush",
  "aio_write -q 0 512",
  "aio_flush",
  "aio_write -C 0 512",
  "aio_flush",
  "aio_read -v -C 0 16",
  "aio_flush",
  "aio_read 2M 512",
  "aio_flush",
  "aio_write 2M 512",
  "aio_flush",
];

async function image(dir: string, name: string): Promise<string> {
  const path = `${dir}/${name}.raw`;
  await Deno.writeFile(path, new Uint8Array(1 << 20));
  return path;
}

Deno.test({
  name: "io: every timed command's -q, -C, -v and failure output is qemu-io's",
  ignore: skipUnless("qemu-io"),
  async fn() {
    await using d = await tempDir();
    const args = ["-f", "raw", ...COMMANDS.flatMap((c) => ["-c", c])];
    const q = await run("qemu-io", [...args, await image(d.path, "a")]);
    const ours = await cli(["io", ...args, await image(d.path, "b")]);
    assertEquals(normalise(ours.stdout), normalise(q.stdout));
    assertEquals(ours.code, q.code);
  },
});

Deno.test("io: -q prints no report, -C prints the comma form, a failed request prints '<what> failed' and fails", async () => {
  await using d = await tempDir();
  const path = await image(d.path, "c");
  const one = async (cmd: string) => {
    const r = await cli(["io", "-f", "raw", "-c", cmd, path]);
    return { out: r.stdout, code: r.code };
  };
  for (const cmd of ["write -q 0 512", "read -q 0 512", "readv -q 0 512", "writev -q 0 512", "discard -q 0 512"]) {
    assertEquals(await one(cmd), { out: "", code: 0 }, cmd);
  }
  for (const [cmd, bytes] of [["write -C 0 512", 512], ["read -C 0 512", 512], ["readv -C 0 512 512", 1024], ["discard -C 0 4k", 4096]]) {
    const r = await one(cmd as string);
    assertMatch(r.out, new RegExp(`^${bytes},1,\\d+:\\d\\d:\\d\\d\\.\\d\\d,\\d+\\.\\d{3},\\d+\\.\\d{3}\\n$`), cmd as string);
  }
  assertMatch((await one("write 0 512")).out, /^wrote 512\/512 bytes at offset 0\n512 bytes, 1 ops; \d\d\.\d\d sec \(.+ ops\/sec\)\n$/);
  for (const what of ["read", "write", "readv", "writev", "discard"]) {
    assertEquals(await one(`${what} 2M 512`), { out: `${what} failed: Input/output error\n`, code: 1 });
  }
  const aio = await cli(["io", "-f", "raw", "-c", "aio_write 2M 512", "-c", "aio_flush", path]);
  assertEquals({ out: aio.stdout, code: aio.code }, { out: "aio_write failed: Input/output error\n", code: 1 });
  const quiet = await cli(["io", "-f", "raw", "-c", "aio_read -q -P 0 64k 512", "-c", "aio_flush", path]);
  assertEquals({ out: quiet.stdout, code: quiet.code }, { out: "", code: 0 });
});
