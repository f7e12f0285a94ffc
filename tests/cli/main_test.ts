import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { VERBS } from "../../cli/main.ts";
import { run, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

Deno.test("main() lists every verb in --help", async () => {
  const r = await cli(["--help"]);
  assertEquals(r.code, 0);
  for (const v of VERBS) ok(r.stdout.includes(`  ${v.name} `), v.name);
});

Deno.test("main() accepts --help on every verb", async () => {
  for (const v of VERBS) {
    const r = await cli([v.name, "--help"]);
    assertEquals(r.code, 0, v.name);
    ok(r.stdout.includes("Usage: blkgraph"), v.name);
  }
});

Deno.test("main() reports an unknown verb on stderr and exits 1", async () => {
  const r = await cli(["frobnicate"]);
  assertEquals(r.code, 1);
  ok(r.stderr.startsWith("blkgraph: Command not found: frobnicate"));
});

Deno.test("main() prints errors as 'blkgraph: <message>' and exits non-zero", async () => {
  const r = await cli(["info", "/nonexistent/disk.img"]);
  assertEquals(r.code, 1);
  ok(r.stderr.startsWith("blkgraph: Could not open '/nonexistent/disk.img': "), r.stderr);
  ok(r.stderr.includes("No such file or directory"), r.stderr);
});

Deno.test("main() rejects unknown options with a hint", async () => {
  const r = await cli(["info", "--bogus", "x"]);
  assertEquals(r.code, 1);
  ok(r.stderr.includes("--bogus"), r.stderr);
  ok(r.stderr.includes("--help"), r.stderr);
});

Deno.test("main() refuses unsupported modes clearly", async () => {
  await using d = await tempDir();
  await cli(["create", "-q", "-f", "qcow2", `${d.path}/x.qcow2`, "1M"]);
  const r = await cli(["snapshot", "-a", "s1", `${d.path}/x.qcow2`]);
  assertEquals(r.code, 1);
  assertEquals(r.stderr, "blkgraph: Could not apply snapshot 's1': Failed to load snapshot: No such file or directory\n");
});

Deno.test("cli/main.ts runs as a subprocess and sets the exit code", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.raw`;
  const created = await run(Deno.execPath(), [
    "run",
    "-A",
    new URL("../../cli/main.ts", import.meta.url).pathname,
    "create",
    "-f",
    "raw",
    path,
    "64k",
  ]);
  assertEquals(created.stdout, `Formatting '${path}', fmt=raw size=65536\n`);
  assertEquals(created.code, 0);
  const bad = await run(Deno.execPath(), ["run", "-A", new URL("../../cli/main.ts", import.meta.url).pathname, "check", path]);
  assertEquals(bad.code, 63);
  assertEquals(bad.stderr, "blkgraph: This image format does not support checks\n");
});

Deno.test("blkgraph io reads commands from stdin at a qemu-io> prompt (subprocess)", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.raw`;
  await Deno.writeFile(path, new Uint8Array(65536));
  const main = new URL("../../cli/main.ts", import.meta.url).pathname;
  const r = await run(Deno.execPath(), ["run", "-A", main, "io", "-f", "raw", path], {
    stdin: "write -P 7 0 512\nread -P 7 0 512\nlength\n",
  });
  assertEquals(r.code, 0, r.stderr);
  ok(r.stdout.startsWith("qemu-io> wrote 512/512 bytes at offset 0\n"), r.stdout);
  ok(r.stdout.includes("qemu-io> read 512/512 bytes at offset 0\n"), r.stdout);
  // Like qemu-io, the last prompt (at end of input) has no newline after it.
  ok(r.stdout.endsWith("qemu-io> 64 KiB\nqemu-io> "), r.stdout);
});

Deno.test("verbs reject bad arguments with a message naming the value", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.raw`;
  await Deno.writeFile(path, new Uint8Array(65536));
  const cases: [string[], string][] = [
    [
      ["create", "-f", "raw", `${d.path}/y.raw`, "12Q"],
      "blkgraph: Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n",
    ],
    [["create", "-f", "nosuchfmt", `${d.path}/y.raw`, "1M"], "blkgraph: Unknown driver 'nosuchfmt'"],
    [["measure", "-O", "vmdk", "--size", "1G"], "blkgraph: Unknown file format 'vmdk'"],
    [["measure", "-O", "file", "--size", "1G"], "blkgraph: Block driver 'file' does not support size measurement"],
    [["resize", "-f", "raw", path, "-1M"], "blkgraph: New image size must be positive"],
    [["bench", "--flush-interval=4", "-f", "raw", path], "blkgraph: --flush-interval is only available in write tests"],
    [["info", "--output=xml", path], "blkgraph: --output must be used with human or json as argument."],
    [["check", "-r", "some", path], "blkgraph: Unknown option value for -r (expecting 'leaks' or 'all'): some"],
  ];
  for (const [args, msg] of cases) {
    const r = await cli(args);
    ok(r.code !== 0, args.join(" "));
    ok(r.stderr.startsWith(msg), `${args.join(" ")}: ${r.stderr}`);
  }
});
