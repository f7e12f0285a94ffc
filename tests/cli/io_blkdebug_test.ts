import assert, { deepStrictEqual as assertEquals } from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli, normaliseTimes } from "./_run.ts";

function spec(format: string, path: string): string {
  return `json:${JSON.stringify({ driver: format, file: { driver: "blkdebug", image: { driver: "file", filename: path } } })}`;
}

async function same(format: string, cmds: string[]): Promise<void> {
  await using d = await tempDir();
  const a = `${d.path}/a.img`;
  const b = `${d.path}/b.img`;
  for (const p of [a, b]) await runOk("qemu-img", ["create", "-q", "-f", format, p, "4M"]);
  const c = cmds.flatMap((x) => ["-c", x]);
  const q = await run("qemu-io", [...c, spec(format, a)]);
  const ours = await cli(["io", ...c, spec(format, b)]);
  assertEquals(normaliseTimes(ours.stdout), normaliseTimes(q.stdout));
  assertEquals(ours.code, q.code);
}

Deno.test({
  name: "io break/wait_break/resume on raw over blkdebug print what qemu-io prints",
  ignore: skipUnless("qemu-img", "qemu-io"),
  fn: () => same("raw", ["break pwritev A", "aio_write -P 3 0 512", "wait_break A", "resume A", "aio_flush", "read -P 3 0 512"]),
});

Deno.test({
  name: "io break on a qcow2 metadata event suspends the allocating write",
  ignore: skipUnless("qemu-img", "qemu-io"),
  fn: () => same("qcow2", ["break cluster_alloc A", "aio_write -P 4 0 64k", "wait_break A", "resume A", "aio_flush", "read -P 4 0 64k"]),
});

Deno.test({
  name: "io breakpoint errors match qemu-io (unknown tag, unknown event)",
  ignore: skipUnless("qemu-img", "qemu-io"),
  fn: () => same("raw", ["resume B", "remove_break X", "break nosuch A", "break pwritev A", "remove_break A"]),
});

Deno.test("io break without a blkdebug node fails with Operation not supported", async () => {
  await using d = await tempDir();
  const path = `${d.path}/a.raw`;
  await Deno.writeFile(path, new Uint8Array(4096));
  const r = await cli(["io", "-f", "raw", "-c", "break pwritev A", path]);
  assertEquals([r.code, r.stdout], [1, "Could not set breakpoint: Operation not supported\n"]);
});

Deno.test({
  name: "io --image-opts names a qcow2 → blkdebug → throttle → file graph on the command line",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/g.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "4M"]);
    const opts = "driver=qcow2,file.driver=blkdebug,file.image.driver=throttle,file.image.limits.iops-total=100000," +
      `file.image.file.driver=file,file.image.file.filename=${path}`;
    const r = await cli([
      "io",
      "--image-opts",
      "-c",
      "break cluster_alloc A",
      "-c",
      "aio_write -P 5 0 64k",
      "-c",
      "wait_break A",
      "-c",
      "resume A",
      "-c",
      "aio_flush",
      "-c",
      "flush",
      opts,
    ]);
    assertEquals(r.code, 0, r.stdout + r.stderr);
    const back = await run("qemu-io", ["-c", "read -P 5 0 64k", path]);
    assertEquals(back.stdout.startsWith("read 65536/65536 bytes at offset 0\n"), true, back.stdout);
    assertEquals((await run("qemu-img", ["check", path])).code, 0);
  },
});

for (const baseData of [false, true]) {
  Deno.test({
    name: `io break write_aio fires on an allocating COW write of an overlay (iotest 046), completions in qemu-io's order (base ${
      baseData ? "with" : "without"
    } data)`,
    ignore: skipUnless("qemu-img", "qemu-io"),
    async fn() {
      await using dir = await tempDir();
      const cmds = [
        "break write_aio A",
        "aio_write -P 10 0x18000 0x2000",
        "wait_break A",
        "aio_write -P 11 0x12000 0x2000",
        "resume A",
        "aio_flush",
      ];
      const order = (out: string) => [...out.matchAll(/wrote 8192\/8192 bytes at offset (\d+)/g)].map((m) => Number(m[1]));
      const runs: Record<string, number[]> = {};
      for (const who of ["qemu-io", "blkgraph"]) {
        const base = `${dir.path}/${who}.base`;
        const top = `${dir.path}/${who}.qcow2`;
        await runOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "1M"]);
        if (baseData) await runOk("qemu-io", ["-c", "write -P 1 0 1M", base]);
        await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "1M"]);
        const out = who === "qemu-io"
          ? (await run("qemu-io", ["-f", "qcow2", `blkdebug::${top}`], { stdin: cmds.join("\n") + "\n" })).stdout
          : (await cli(["io", "-f", "qcow2", `blkdebug::${top}`], cmds)).stdout;
        assert.match(out, /blkdebug: Suspended request 'A'/, `${who}: ${out}`);
        runs[who] = order(out);
      }
      assert.deepEqual(runs.blkgraph, runs["qemu-io"]);
      assert.deepEqual(runs["qemu-io"], [0x18000, 0x12000]);
    },
  });
}
