// Messages of the qemu-img / qemu-io drop-ins that scripts (and QEMU's iotests) match word for word: each case runs the real
// tool and ours on the same input and compares exit code and stderr.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { inDir } from "./_in_dir.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

Deno.test({
  name:
    "-o help for a format blkgraph only recognises (bochs) says the driver cannot create or amend, and amend's argument errors, as qemu-img",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await runOk("qemu-img", ["create", "-q", "-f", "raw", `${d.path}/a.raw`, "1M"]);
    const cases = [
      ["create", "-f", "bochs", "-o", "help", "x.img"],
      ["create", "-f", "bochs", "-o", "help"],
      ["convert", "-O", "bochs", "-o", "help", "a.raw", "y.img"],
      ["amend", "-f", "bochs", "-o", "help", "a.raw"],
      ["amend", "-o", "help"],
      ["amend", "-o", "lazy_refcounts=on", "a.raw", "b.raw"],
      ["amend", "a.raw"],
    ];
    const ourRuns = await inDir("img", cases, d.path);
    for (const [i, args] of cases.entries()) {
      const q = await run("qemu-img", args, { cwd: d.path });
      const r = ourRuns[i];
      assertEquals([r.code, r.stdout, r.stderr], [q.code, q.stdout, q.stderr], args.join(" "));
    }
  },
});

Deno.test({
  name: "an unknown backing format in the image header is refused in qemu-io's words: Unknown driver 'foo'",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await runOk("qemu-img", ["create", "-q", "-f", "raw", `${d.path}/base.raw`, "1M"]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", `${d.path}/t.qcow2`, "1M"]);
    // The backing-format header extension (0xe2792aca, length 3, "raw") now names a driver nobody has.
    const img = await Deno.readFile(`${d.path}/t.qcow2`);
    const ext = [0xe2, 0x79, 0x2a, 0xca, 0, 0, 0, 3, ...new TextEncoder().encode("raw")];
    const at = img.findIndex((_, i) => ext.every((b, j) => img[i + j] === b));
    img.set(new TextEncoder().encode("foo"), at + 8);
    await Deno.writeFile(`${d.path}/t.qcow2`, img);
    const q = await run("qemu-io", ["-c", "read 0 4k", "t.qcow2"], { cwd: d.path });
    const [r] = await inDir("io", [["-c", "read 0 4k", "t.qcow2"]], d.path);
    assertEquals([r.code, r.stdout, r.stderr], [q.code, q.stdout, q.stderr]);
  },
});

Deno.test({
  name: "measure checks its arguments in qemu-img's order and words, takes --size -1 as a size, and prints sizes past 2^53 exactly",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${d.path}/t.qcow2`, "1G"]);
    const cases = [
      [],
      ["--size", "2G", "t.qcow2"],
      ["t.qcow2", "a"],
      ["--object", "secret,id=sec0,data=MTIzNDU2,format=base64"],
      ["--image-opts"],
      ["-f", "qcow2"],
      ["-l", "snap1"],
      ["-o", ","],
      ["-l", "snapshot.foo=bar"],
      ["--output", "foo"],
      ["--size", "-1"],
      ["-O", "foo", "t.qcow2"],
      ["--size", "7E"],
      ["--output=json", "-O", "raw", "--size", "7E"],
      ["-O", "qcow2", "--size", "2P"],
      ["-O", "qcow2", "-l", "snapshot.name=nope", "t.qcow2"],
    ];
    const ourRuns = await inDir("img", cases.map((args) => ["measure", ...args]), d.path);
    for (const [i, args] of cases.entries()) {
      const q = await run("qemu-img", ["measure", ...args], { cwd: d.path });
      const r = ourRuns[i];
      assertEquals([r.code, r.stdout, r.stderr], [q.code, q.stdout, q.stderr], args.join(" "));
    }
  },
});

Deno.test({
  name: "qcow2 cache options: the combinations and L2 cache entry sizes qemu-io refuses are refused in its words, the rest open",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${d.path}/t.qcow2`, "64k"]);
    await runOk("qemu-io", ["-c", "write -P 42 0 64k", `${d.path}/t.qcow2`]);
    const cases = [
      "cache-size=1.25M,l2-cache-size=1M,refcount-cache-size=0.25M",
      "cache-size=1M,l2-cache-size=2M",
      "cache-size=1M,refcount-cache-size=2M",
      "cache-size=0,l2-cache-size=0,refcount-cache-size=0",
      "l2-cache-entry-size=256",
      "l2-cache-entry-size=4242",
      "l2-cache-entry-size=128k",
      "cache-size=2M,l2-cache-size=1M",
      "cache-size=2M,refcount-cache-size=1M",
      "l2-cache-entry-size=512",
      "l2-cache-entry-size=64k",
    ];
    const argsOf = (o: string) => ["-c", `open -o ${o} t.qcow2`, "-c", "read -P 42 0 64k"];
    const ourRuns = await inDir("io", cases.map(argsOf), d.path);
    for (const [i, o] of cases.entries()) {
      const q = await run("qemu-io", argsOf(o), { cwd: d.path });
      const r = ourRuns[i];
      const noTimes = (s: string) => s.replace(/\n.*ops\/sec\)/g, "");
      assertEquals([r.code, noTimes(r.stdout), r.stderr], [q.code, noTimes(q.stdout), q.stderr], o);
    }
  },
});

Deno.test({
  name: "a missing secret is named in qemu-io's words by the drop-in, with the option that names it by blkgraph",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await runOk("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "--object",
      "secret,id=s0,data=abc",
      "-o",
      "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
      `${d.path}/e.qcow2`,
      "1M",
    ]);
    const args = ["--image-opts", "driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=nosuch", "-c", "read 0 512"];
    const q = await run("qemu-io", args, { cwd: d.path });
    const [r] = await inDir("io", [args], d.path);
    assertEquals([r.code, r.stdout, r.stderr], [q.code, q.stdout, q.stderr]);
    const b = await run(Deno.execPath(), ["run", "-A", new URL("../../cli/main.ts", import.meta.url).pathname, "io", ...args], {
      cwd: d.path,
    });
    assertEquals(b.stderr, "blkgraph: can't open: No secret with id 'nosuch' found (named by option 'encrypt.key-secret')\n");
  },
});
