import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { open } from "../../mod.ts";
import { qemuIo } from "../../cli/qemu-io.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { normaliseTimes } from "./_run.ts";

const QEMU = skipUnless("qemu-io", "qemu-img");
const DROP_IN = new URL("../../cli/qemu-io.ts", import.meta.url).pathname;

/** Runs the qemu-io drop-in in-process. */
async function ours(args: string[]) {
  let stdout = "";
  let stderr = "";
  const code = await qemuIo(args, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s) });
  return { code, stdout, stderr };
}

/** Two qcow2 images made by qemu-img with the same commands: one for qemu-io, one for us. */
async function twoImages(dir: string, size = "1M", cmds: string[] = []) {
  const a = `${dir}/a.qcow2`;
  const b = `${dir}/b.qcow2`;
  for (const p of [a, b]) {
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", p, size]);
    if (cmds.length) await runOk("qemu-io", [...cmds.flatMap((c) => ["-c", c]), p]);
  }
  return { a, b };
}

async function readPattern(path: string, byte: number, offset: number, length: number): Promise<boolean> {
  const r = await run("qemu-io", ["-r", "-c", `read -P ${byte} ${offset} ${length}`, path]);
  return r.code === 0 && !r.stdout.includes("Pattern verification failed");
}

Deno.test({
  name: "the qemu-io drop-in prefixes errors 'qemu-io:' and says 'can't open device' as qemu-io does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const missing = `${d.path}/nope.qcow2`;
    const q = await run("qemu-io", ["-c", "read 0 512", missing]);
    const r = await ours(["-c", "read 0 512", missing]);
    assertEquals([r.code, r.stderr], [q.code, q.stderr]);
    assertEquals(r.stderr, `qemu-io: can't open device ${missing}: Could not open '${missing}': No such file or directory\n`);
  },
});

Deno.test({
  name: "qemu-io in stdin mode leaves the last prompt without a newline, as qemu-io (subprocess)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await twoImages(d.path);
    const input = "write -P 7 0 512\nread -P 7 0 512\n";
    const q = await run("qemu-io", [a], { stdin: input });
    const r = await run(Deno.execPath(), ["run", "-A", DROP_IN, b], { stdin: input });
    assertEquals(normaliseTimes(r.stdout), normaliseTimes(q.stdout));
    ok(r.stdout.endsWith("ops/sec)\nqemu-io> "), r.stdout);
  },
});

Deno.test({
  name: "stdout is block-buffered like C stdio, so merged output keeps qemu-io's order (subprocess)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await twoImages(d.path);
    // "wrote" goes to stdout, "Block node is read-only" to stderr: qemu-io's stderr comes out first.
    const cmds = ["-c", "write 0 512", "-c", "reopen -r", "-c", "write 0 512"];
    const q = await run("sh", ["-c", `qemu-io ${cmds.map((c) => `'${c}'`).join(" ")} ${a} 2>&1`]);
    const r = await run("sh", ["-c", `${Deno.execPath()} run -A ${DROP_IN} ${cmds.map((c) => `'${c}'`).join(" ")} ${b} 2>&1`]);
    assertEquals(normaliseTimes(r.stdout), normaliseTimes(q.stdout));
    ok(r.stdout.startsWith("qemu-io: Block node is read-only\nwrote 512/512"), r.stdout);
  },
});

Deno.test({
  name: "read/write -p is accepted and ignored, and flags may follow the operands, as in qemu-io",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await twoImages(d.path);
    const cmds = ["write -p -P 3 0 4k", "read -p -P 3 0 4k", "write 4k 512 -P 9", "read 4k 512 -P 9 -q"].flatMap((c) => ["-c", c]);
    const q = await run("qemu-io", [...cmds, a]);
    const r = await ours([...cmds, b]);
    assertEquals(normaliseTimes(r.stdout), normaliseTimes(q.stdout));
    assertEquals([r.code, r.stderr], [q.code, q.stderr]);
  },
});

Deno.test({
  name: "-P -1, -P 0x1ff and -P 12x are refused as not valid pattern bytes, as qemu-io refuses them",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await twoImages(d.path);
    const cmds = ["write -P -1 0 512", "write -P 0x1ff 0 512", "read -P 12x 0 512", "write -P 0377 0 512", "read -P 255 0 512"];
    const args = cmds.flatMap((c) => ["-c", c]);
    const q = await run("qemu-io", [...args, a]);
    const r = await ours([...args, b]);
    assertEquals(normaliseTimes(r.stdout), normaliseTimes(q.stdout));
    assertEquals(r.code, q.code);
    ok(r.stdout.startsWith("-1 is not a valid pattern byte\n0x1ff is not a valid pattern byte\n12x is not a valid pattern byte\n"));
  },
});

Deno.test({
  name: "writing commands on a read-only image say 'Block node is read-only'; reopen -w/-r switch (iotest 187)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await twoImages(d.path);
    for (
      const args of [
        ["-r", "-c", "write 0 64k"],
        ["-r", "-c", "reopen -w", "-c", "write 0 64k"],
        ["-r", "-c", "reopen -w", "-c", "reopen -r", "-c", "write 0 64k"],
        ["-c", "reopen -r", "-c", "reopen -w", "-c", "write -P 5 0 64k"],
      ]
    ) {
      const q = await run("qemu-io", [...args, a]);
      const r = await ours([...args, b]);
      assertEquals(normaliseTimes(r.stdout), normaliseTimes(q.stdout), args.join(" "));
      assertEquals([r.code, r.stderr], [q.code, q.stderr], args.join(" "));
    }
    ok(await readPattern(b, 5, 0, 65536));
  },
});

Deno.test({
  name: "reopen refuses changing node-name or driver and mixing -r/-c with their options, with qemu-io's messages (iotest 133)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await twoImages(d.path);
    const cases = [
      ["-c", "reopen -o node-name=foo"],
      ["-c", "reopen -o file.node-name=foo"],
      ["-c", "reopen -o driver=raw"],
      ["-c", "reopen -o file.driver=qcow2"],
      ["-c", "reopen -o driver=qcow2"],
      ["-c", "reopen -o file.driver=file"],
      ["-c", "reopen -r -o read-only=on"],
      ["-c", "reopen -c none -o cache.direct=on"],
      ["-c", "reopen -o read-only=foo"],
      ["-c", "reopen -o cache.no-flush=bar"],
      ["-c", "open -o node-name=foo -o file.node-name=bar IMG", "-c", "reopen -o node-name=foo,file.node-name=bar"],
    ];
    for (const c of cases) {
      const q = await run("qemu-io", c.map((x) => x.replace("IMG", a)).concat(c[1].includes("IMG") ? [] : [a]));
      const r = await ours(c.map((x) => x.replace("IMG", b)).concat(c[1].includes("IMG") ? [] : [b]));
      assertEquals([r.code, r.stderr, r.stdout], [q.code, q.stderr, q.stdout], c.join(" "));
    }
  },
});

Deno.test({
  name:
    "reopen with -f qcow2 and an unchanged backing.driver keeps the backing file, and info on null-co names only the driver (iotest 133)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const base = `${d.path}/base.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "1M"]);
    await runOk("qemu-io", ["-c", "write -P 9 0 64k", base]);
    const { a, b } = await twoImages(d.path);
    for (const p of [a, b]) await runOk("qemu-img", ["rebase", "-q", "-u", "-b", base, "-F", "qcow2", p]);
    for (const o of ["backing.driver=qcow2", "file.driver=file", "driver=qcow2", "backing.driver=file"]) {
      const args = (p: string) => ["-f", "qcow2", "-c", `reopen -o ${o}`, "-c", "read -P 9 0 64k", p];
      const q = await run("qemu-io", args(a));
      const r = await ours(args(b));
      assertEquals([r.code, r.stderr, normaliseTimes(r.stdout)], [q.code, q.stderr, normaliseTimes(q.stdout)], o);
    }
    const nul = ["-f", "null-co", "-c", "reopen", "-c", "info", "json:{'driver': 'null-co', 'size': 65536}"];
    const q = await run("qemu-io", nul);
    const r = await ours(nul);
    assertEquals([r.code, r.stderr, r.stdout], [q.code, q.stderr, q.stdout]);
    assertEquals(r.stdout, "format name: null-co\nformat name: null-co\n");
  },
});

Deno.test({
  name: "reopen -o lazy-refcounts=on takes effect: a killed writer leaves the dirty bit, as qemu-io's (iotest 039)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/l.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=1.1,lazy_refcounts=off", path, "64M"]);
    const r = await run(Deno.execPath(), [
      "run",
      "-A",
      DROP_IN,
      "-c",
      "reopen -o lazy-refcounts=on",
      "-c",
      "write -P 0x5a 0 512",
      "-c",
      "sigraise 9",
      path,
    ]);
    // Killed by SIGKILL after its output was written.
    assertEquals(r.code, 137);
    ok(r.stdout.startsWith("wrote 512/512 bytes at offset 0\n"), r.stdout);
    const header = await Deno.readFile(path);
    const incompat = new DataView(header.buffer).getBigUint64(72);
    assertEquals(incompat & 1n, 1n, "dirty bit set");
    ok(await readPattern(path, 0x5a, 0, 512));
  },
});

Deno.test({
  name: "sigraise refuses a signal number above NSIG and a non-number, as qemu-io does",
  ignore: QEMU,
  async fn() {
    const args = ["-c", "sigraise 100", "-c", "sigraise x"];
    const q = await run("qemu-io", args);
    const r = await ours(args);
    assertEquals([r.stdout, r.code], [q.stdout, q.code]);
  },
});

Deno.test({
  name: "-s writes to a temporary overlay: reads see the writes, the image never changes (issue 9.5, iotest 052)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await twoImages(d.path, "1M", ["write -P 1 0 64k"]);
    const before = await Deno.readFile(b);
    const cmds = ["write -P 0xa 0 128k", "read -P 0xa 0 128k", "write -z 64k 64k", "read -P 0 64k 64k"].flatMap((c) => ["-c", c]);
    const q = await run("qemu-io", ["-s", ...cmds, a]);
    const r = await ours(["-s", ...cmds, b]);
    assertEquals(normaliseTimes(r.stdout), normaliseTimes(q.stdout));
    assertEquals(r.code, 0);
    assertEquals(await Deno.readFile(b), before);
    ok(await readPattern(b, 1, 0, 65536));
  },
});

Deno.test({
  name: "-s opens the image read-only, so a writer holding it does not stop it, and -s -r refuses writes",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { b } = await twoImages(d.path);
    const r = await ours(["-s", "-r", "-c", "write 0 512", b]);
    assertEquals(r.stderr, "qemu-io: Block node is read-only\n");
    assertEquals(r.code, 1);
  },
});

Deno.test({
  name: "-U reads an image another process writes; without it the open fails, as qemu-io (issue 9.17)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a } = await twoImages(d.path, "1M", ["write -P 4 0 4k"]);
    // A writer holds the image (this process, through its own lock).
    await using _writer = await open(a);
    const plain = await run(Deno.execPath(), ["run", "-A", DROP_IN, "-r", "-c", "read -P 4 0 4k", a]);
    const q = await run("qemu-io", ["-r", "-c", "read -P 4 0 4k", a]);
    assertEquals([plain.code, q.code], [1, 1]);
    ok(plain.stderr.startsWith(`qemu-io: can't open device ${a}:`), plain.stderr);
    const shared = await run(Deno.execPath(), ["run", "-A", DROP_IN, "-U", "-r", "-c", "read -P 4 0 4k", a]);
    const qs = await run("qemu-io", ["-U", "-r", "-c", "read -P 4 0 4k", a]);
    assertEquals(normaliseTimes(shared.stdout), normaliseTimes(qs.stdout));
    assertEquals([shared.code, qs.code], [0, 0]);
    // -U on a read-write open is refused, as qemu-io refuses it.
    const rw = await ours(["-U", "-c", "read 0 512", a]);
    const qrw = await run("qemu-io", ["-U", "-c", "read 0 512", a]);
    assertEquals([rw.code, qrw.code], [1, 1]);
    ok(rw.stderr.includes("force-share=on can only be used with read-only images"), rw.stderr);
  },
});

Deno.test({
  name: "-C copies backing data into the image on read, and refuses a read-only open, as qemu-io (iotest 197)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const mk = async (tag: string) => {
      const base = `${d.path}/${tag}.base.qcow2`;
      const top = `${d.path}/${tag}.qcow2`;
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"]);
      await runOk("qemu-io", ["-c", "write -P 55 3M 1k", base]);
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
      await runOk("qemu-io", ["-f", "qcow2", "-c", "write -z -u 1M 64k", top]);
      return top;
    };
    const a = await mk("a");
    const b = await mk("b");
    const cmds = ["read -P 0 1k 2M", "read -P 55 3M 1k"].flatMap((c) => ["-c", c]);
    const q = await run("qemu-io", ["-f", "qcow2", "-C", ...cmds, a]);
    const r = await ours(["-f", "qcow2", "-C", ...cmds, b]);
    assertEquals(normaliseTimes(r.stdout), normaliseTimes(q.stdout));
    for (const p of [a, b]) await runOk("qemu-img", ["rebase", "-u", "-b", "", "-f", "qcow2", p]);
    const qm = await runOk("qemu-io", ["-f", "qcow2", "-c", "map", a]);
    const rm = await runOk("qemu-io", ["-f", "qcow2", "-c", "map", b]);
    assertEquals(rm.stdout, qm.stdout);
    const qro = await run("qemu-io", ["-f", "qcow2", "-C", "-r", a]);
    const rro = await ours(["-f", "qcow2", "-C", "-r", b]);
    assertEquals(rro.stderr.replace(b, a), qro.stderr);
  },
});

Deno.test({
  name: "alloc and map report what the image itself allocates (not its backing file), as qemu-io",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const base = `${d.path}/base.qcow2`;
    const top = `${d.path}/top.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "5G"]);
    await runOk("qemu-io", ["-c", "write 0 64k", "-c", "write 4G 64k", base]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
    await runOk("qemu-io", ["-c", "write 64k 64k", "-c", "write -z 1M 64k", top]);
    const cmds = ["alloc 0 128k", "alloc 4G 64k", "alloc 4100M 64k", "alloc 5368708608 64k", "map"].flatMap((c) => ["-c", c]);
    const q = await runOk("qemu-io", ["-r", ...cmds, top]);
    const r = await ours(["-r", ...cmds, top]);
    assertEquals(r.stdout, q.stdout);
  },
});

Deno.test({
  name: "aio_read's pattern mismatch is printed but the command succeeded, as in qemu-io",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await twoImages(d.path);
    const cmds = ["aio_read -P 9 0 512", "aio_flush"].flatMap((c) => ["-c", c]);
    const q = await run("qemu-io", [...cmds, a]);
    const r = await ours([...cmds, b]);
    assertEquals(normaliseTimes(r.stdout), normaliseTimes(q.stdout));
    assertEquals([r.code, q.code], [0, 0]);
  },
});

Deno.test({
  name: "open -o OPTIONS PATH probes the format and passes the options to it, as qemu-io (iotest 103)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await twoImages(d.path, "64k", ["write -P 42 0 64k"]);
    for (const o of ["cache-size=0", "l2-cache-size=0", "cache-size=2M,l2-cache-size=1M"]) {
      const args = ["-f", "qcow2", "-c", `open -o ${o} IMG`, "-c", "read -P 42 0 64k"];
      const q = await run("qemu-io", args.map((x) => x.replace("IMG", a)));
      const r = await ours(args.map((x) => x.replace("IMG", b)));
      assertEquals(normaliseTimes(r.stdout), normaliseTimes(q.stdout), o);
      assertEquals(r.code, 0, r.stderr);
    }
  },
});

Deno.test({
  name: "info names the open node's driver (a filter too) and takes the cluster size through it, as qemu-io",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a } = await twoImages(d.path);
    for (const c of [`open -o driver=blkdebug,image.driver=qcow2 blkdebug::${a}`, `open -o driver=file,filename=${a}`]) {
      const q = await runOk("qemu-io", ["-c", c, "-c", "info"]);
      const r = await ours(["-c", c, "-c", "info"]);
      assertEquals(r.stdout, q.stdout, c);
    }
  },
});

Deno.test({
  name: "flush that fails prints nothing and the exit code says so, as qemu-io's flush",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await twoImages(d.path);
    const spec = (p: string) =>
      `json:{'driver':'raw','file':{'driver':'blkdebug','inject-error':[{'event':'flush_to_os','iotype':'flush','errno':5}],'image':{'driver':'file','filename':'${p}'}}}`;
    const args = (p: string) => ["-t", "writeback", "-c", "write 0 512", "-c", "flush", "-c", "read 0 512", spec(p)];
    const q = await run("qemu-io", args(a));
    const r = await ours(args(b));
    assertEquals([r.code, r.stderr, normaliseTimes(r.stdout)], [q.code, q.stderr, normaliseTimes(q.stdout)]);
    assertEquals(r.code, 1);
    ok(!r.stdout.includes("flush"), r.stdout);
  },
});

Deno.test({
  name: "write -z on unallocated clusters of a v3 qcow2 image without a backing file marks them zero, as qemu-io (iotest 179)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await twoImages(d.path, "64M");
    const cmds = ["-c", "write -z -u 2M 2M", "-c", "write -z 6M 2M", "-c", "map"];
    const q = await run("qemu-io", [...cmds, a]);
    const r = await ours([...cmds, b]);
    assertEquals(normaliseTimes(r.stdout), normaliseTimes(q.stdout));
    const qm = await runOk("qemu-img", ["map", "--output=json", a]);
    const rm = await runOk("qemu-img", ["map", "--output=json", b]);
    assertEquals(rm.stdout, qm.stdout);
    await runOk("qemu-img", ["check", b]);
  },
});
