import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

async function filled(path: string, size: number, chunks: [number, number, number][]): Promise<void> {
  const buf = new Uint8Array(size);
  for (const [off, len, byte] of chunks) buf.fill(byte, off, off + len);
  await Deno.writeFile(path, buf);
}

Deno.test({
  name: "create -f raw prints qemu-img's Formatting line and makes the same file",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    const q = await runOk("qemu-img", ["create", "-f", "raw", `${d.path}/q.raw`, "1.5M"]);
    const ours = await cli(["create", "-f", "raw", `${d.path}/o.raw`, "1.5M"]);
    assertEquals(ours.stdout, q.stdout.replace("q.raw", "o.raw"));
    assertEquals((await Deno.stat(`${d.path}/o.raw`)).size, 1572864);
  },
});

Deno.test("create -q prints nothing; a missing size is an error", async () => {
  await using d = await tempDir();
  assertEquals((await cli(["create", "-q", "-f", "raw", `${d.path}/a.raw`, "4k"])).stdout, "");
  const r = await cli(["create", "-f", "raw", `${d.path}/b.raw`]);
  assertEquals(r.code, 1);
  assertEquals(r.stderr, "blkgraph: Image creation needs a size parameter\n");
});

Deno.test({
  name: "info on raw matches qemu-img info (human and json)",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/r.raw`;
    await filled(path, 3 << 20, [[0, 4096, 1]]);
    for (const out of ["human", "json"]) {
      const q = await runOk("qemu-img", ["info", "-f", "raw", `--output=${out}`, path]);
      const ours = await cli(["info", "-f", "raw", `--output=${out}`, path]);
      assertEquals(ours.stdout, q.stdout);
    }
  },
});

Deno.test({
  name: "map on a fully written raw image matches qemu-img map",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/r.raw`;
    await filled(path, 1 << 20, [[0, 1 << 20, 7]]);
    const q = await runOk("qemu-img", ["map", "-f", "raw", path]);
    assertEquals((await cli(["map", "-f", "raw", path])).stdout, q.stdout);
    const qj = JSON.parse((await runOk("qemu-img", ["map", "-f", "raw", "--output=json", path])).stdout);
    const oj = JSON.parse((await cli(["map", "-f", "raw", "--output=json", path])).stdout);
    assertEquals(oj, qj);
  },
});

Deno.test({
  name: "compare gives qemu-img's messages and exit codes",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    const a = `${d.path}/a.raw`;
    const b = `${d.path}/b.raw`;
    const c = `${d.path}/c.raw`;
    const big = `${d.path}/big.raw`;
    await filled(a, 1 << 20, [[4096, 512, 1]]);
    await filled(b, 1 << 20, [[4096, 512, 1]]);
    await filled(c, 1 << 20, [[4096, 512, 1], [700000, 1, 9]]);
    await filled(big, 2 << 20, [[4096, 512, 1]]);
    for (const args of [[a, b], [a, c], [a, big], ["-s", a, big], [a, `${d.path}/missing.raw`]]) {
      const q = await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", ...args]);
      const ours = await cli(["compare", "-f", "raw", "-F", "raw", ...args]);
      assertEquals(ours.stdout, q.stdout, args.join(" "));
      assertEquals(ours.code, q.code, args.join(" "));
    }
  },
});

Deno.test({
  name: "measure matches qemu-img measure for empty qcow2 and raw targets of many sizes",
  ignore: skipUnless("qemu-img"),
  async fn() {
    for (
      const [size, opts] of [["1G", ""], ["64M", ""], ["100T", ""], ["3G", "cluster_size=4k"], ["1G", "refcount_bits=1"], [
        "7G",
        "extended_l2=on",
      ], ["1M", "cluster_size=2M"]]
    ) {
      for (const fmt of ["qcow2", "raw"]) {
        if (fmt === "raw" && opts) continue;
        const o = opts ? ["-o", opts] : [];
        const q = await runOk("qemu-img", ["measure", "--output=json", "-O", fmt, ...o, "--size", size]);
        const ours = await cli(["measure", "--output=json", "-O", fmt, ...o, "--size", size]);
        assertEquals(JSON.parse(ours.stdout), JSON.parse(q.stdout), `${fmt} ${size} ${opts}`);
      }
    }
  },
});

Deno.test({
  name: "measure -O qcow2 of a raw image matches qemu-img measure",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/r.raw`;
    await filled(path, 8 << 20, [[0, 4096, 1], [5 << 20, 200000, 2]]);
    const q = await runOk("qemu-img", ["measure", "-f", "raw", "-O", "qcow2", path]);
    const ours = await cli(["measure", "-f", "raw", "-O", "qcow2", path]);
    // A raw file without holes is all data for both, so the figures agree.
    assertEquals(ours.stdout, q.stdout);
  },
});

Deno.test("resize grows a raw image and refuses to shrink without --shrink", async () => {
  await using d = await tempDir();
  const path = `${d.path}/r.raw`;
  await filled(path, 1 << 20, []);
  assertEquals((await cli(["resize", "-f", "raw", path, "+1M"])).stdout, "Image resized.\n");
  assertEquals((await Deno.stat(path)).size, 2 << 20);
  const r = await cli(["resize", "-f", "raw", path, "-1M"]);
  assertEquals(r.code, 1);
  // qemu-img 7.2 prints the warning along with the refusal (tests/cli/snapshot_test.ts compares with it).
  assertEquals(
    r.stderr,
    "blkgraph: Use the --shrink option to perform a shrink operation.\n" +
      "blkgraph: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.\n",
  );
  assertEquals((await cli(["resize", "-f", "raw", "--shrink", path, "-1M"])).code, 0);
  assertEquals((await Deno.stat(path)).size, 1 << 20);
});

Deno.test("bench prints qemu-img bench's lines and issues flushes", async () => {
  await using d = await tempDir();
  const path = `${d.path}/r.raw`;
  await filled(path, 1 << 20, []);
  const r = await cli(["bench", "-f", "raw", "-w", "-c", "100", "-d", "4", "-s", "4k", "--flush-interval=10", "--pattern=171", path]);
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.split("\n");
  assertEquals(lines[0], "Sending 100 write requests, 4096 bytes each, 4 in parallel (starting at offset 0, step size 4096)");
  assertEquals(lines[1], "Sending flush every 10 requests");
  ok(/^Run completed in \d+\.\d{3} seconds\.$/.test(lines[2]), lines[2]);
  ok(/^Flushes issued: [1-9]\d*$/.test(lines[3]), lines[3]);
  const data = await Deno.readFile(path);
  assertEquals(data[0], 171);
  assertEquals(data[100 * 4096 - 1], 171);
  assertEquals(data[100 * 4096], 0);
});

Deno.test("bench wraps offsets at the image size", async () => {
  await using d = await tempDir();
  const path = `${d.path}/r.raw`;
  await filled(path, 64 * 1024, []);
  const r = await cli(["bench", "-f", "raw", "-c", "1000", "-d", "8", path]);
  assertEquals(r.code, 0, r.stderr);
  ok(r.stdout.startsWith("Sending 1000 read requests, 4096 bytes each, 8 in parallel (starting at offset 0, step size 4096)\n"));
});

Deno.test("convert raw to raw copies the data and skips zero ranges", async () => {
  await using d = await tempDir();
  const src = `${d.path}/s.raw`;
  const dst = `${d.path}/d.raw`;
  await filled(src, 5 << 20, [[0, 4096, 1], [3 << 20, 1 << 20, 2]]);
  const r = await cli(["convert", "-f", "raw", "-O", "raw", src, dst]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(await Deno.readFile(dst), await Deno.readFile(src));
  const st = await Deno.stat(dst);
  ok(st.blocks !== null && st.blocks * 512 < 2 << 20, `target is sparse (${st.blocks} blocks)`);
});

Deno.test("convert -S 0 writes a fully allocated target", async () => {
  await using d = await tempDir();
  const src = `${d.path}/s.raw`;
  const dst = `${d.path}/d.raw`;
  await filled(src, 1 << 20, [[0, 4096, 1]]);
  const r = await cli(["convert", "-S", "0", "-f", "raw", "-O", "raw", src, dst]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(await Deno.readFile(dst), await Deno.readFile(src));
  const st = await Deno.stat(dst);
  ok(st.blocks !== null && st.blocks * 512 >= 1 << 20, `target is fully allocated (${st.blocks} blocks)`);
});

Deno.test({
  name: "convert -p prints qemu-img's progress lines, byte for byte",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    const src = `${d.path}/s.raw`;
    await filled(src, 4 << 20, [[0, 4 << 20, 3]]);
    const q = await runOk("qemu-img", ["convert", "-p", "-f", "raw", "-O", "raw", src, `${d.path}/q.raw`]);
    const r = await cli(["convert", "-p", "-f", "raw", "-O", "raw", src, `${d.path}/d.raw`]);
    assertEquals(r.code, 0, r.stderr);
    ok(q.stdout.includes("(50.00/100%)"), `qemu-img printed ${JSON.stringify(q.stdout)}`);
    assertEquals(r.stdout, q.stdout);
  },
});

Deno.test("convert concatenates several sources and -c on raw is a clear error", async () => {
  await using d = await tempDir();
  await filled(`${d.path}/a.raw`, 65536, [[0, 65536, 1]]);
  await filled(`${d.path}/b.raw`, 65536, [[0, 65536, 2]]);
  const r = await cli(["convert", "-f", "raw", "-O", "raw", `${d.path}/a.raw`, `${d.path}/b.raw`, `${d.path}/ab.raw`]);
  assertEquals(r.code, 0, r.stderr);
  const ab = await Deno.readFile(`${d.path}/ab.raw`);
  assertEquals([ab.length, ab[0], ab[65536]], [131072, 1, 2]);
  const c = await cli(["convert", "-c", "-f", "raw", "-O", "raw", `${d.path}/a.raw`, `${d.path}/c.raw`]);
  assertEquals(c.code, 1);
  ok(c.stderr.startsWith("blkgraph: Compression not supported"), c.stderr);
});

Deno.test("snapshot -l on an image without snapshots prints nothing", async () => {
  await using d = await tempDir();
  await filled(`${d.path}/a.raw`, 65536, []);
  const r = await cli(["snapshot", "-l", "-f", "raw", `${d.path}/a.raw`]);
  assertEquals([r.code, r.stdout], [0, ""]);
});

Deno.test({
  name: "snapshot -c/-a/-d on a raw host file fail with qemu-img's messages",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/a.raw`;
    await filled(path, 65536, []);
    for (const [flag, name] of [["-c", "s1"], ["-a", "s1"], ["-d", "s1"]]) {
      // qemu-img snapshot takes no -f: both probe raw (qemu-img warns first; its error is the last line).
      const ours = await cli(["snapshot", flag, name, path]);
      const theirs = await run("qemu-img", ["snapshot", flag, name, path]);
      const last = (s: string) => s.trimEnd().split("\n").pop()!.replace(/^(blkgraph|qemu-img): /, "");
      assertEquals([ours.code, last(ours.stderr)], [theirs.code, last(theirs.stderr)]);
    }
  },
});

Deno.test("dotted specs and json: filenames name a whole graph", async () => {
  await using d = await tempDir();
  const path = `${d.path}/a.raw`;
  await filled(path, 65536, [[0, 512, 0x11]]);
  const dotted = await cli(["io", "-c", "read -P 0x11 0 512", `driver=raw,file.driver=file,file.filename=${path}`]);
  assertEquals(dotted.code, 0, dotted.stdout + dotted.stderr);
  const json = await cli(["io", "-c", "read -P 0x11 0 512", `json:{"driver":"raw","file":{"driver":"file","filename":"${path}"}}`]);
  assertEquals(json.code, 0, json.stdout + json.stderr);
  const opts = await cli(["info", "--image-opts", `driver=raw,file.filename=${path}`]);
  assertEquals(opts.code, 0, opts.stderr);
  ok(opts.stdout.includes("virtual size: 64 KiB (65536 bytes)"));
});

Deno.test({
  name: "map, measure and io alloc/map on a sparse raw file match qemu-img and qemu-io",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/sparse.raw`;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", path, "4M"]);
    await runOk("qemu-io", ["-f", "raw", "-c", "write -P 1 0 4k", "-c", "write -P 2 1M 64k", path]);
    for (const args of [["map"], ["map", "--output=json"], ["measure", "-O", "qcow2"]]) {
      const q = await runOk("qemu-img", [...args, "-f", "raw", path]);
      assertEquals((await cli([...args, "-f", "raw", path])).stdout, q.stdout, args.join(" "));
    }
    const cmds = ["-c", "alloc 0 4M", "-c", "map"];
    assertEquals((await cli(["io", "-f", "raw", ...cmds, path])).stdout, (await runOk("qemu-io", ["-f", "raw", ...cmds, path])).stdout);
  },
});

Deno.test({
  name: "bench prints the same request summary lines as qemu-img bench",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/r.raw`;
    await filled(path, 1 << 20, []);
    for (
      const args of [["-c", "100"], [
        "-c",
        "100",
        "-d",
        "2",
        "-s",
        "512",
        "-S",
        "1024",
        "-o",
        "4096",
        "-w",
        "--flush-interval=10",
        "--no-drain",
      ]]
    ) {
      const q = await runOk("qemu-img", ["bench", ...args, "-f", "raw", path]);
      const ours = await cli(["bench", ...args, "-f", "raw", path]);
      const norm = (s: string) =>
        s.replace(/Run completed in \d+\.\d+ seconds\./, "Run completed in T seconds.").replace(/Flushes issued: \d+\n/, "");
      assertEquals(norm(ours.stdout), norm(q.stdout), args.join(" "));
    }
  },
});

Deno.test("convert -W -m 4 (out of order, parallel) produces an identical copy", async () => {
  await using d = await tempDir();
  const data = new Uint8Array(9 << 20);
  let x = 12345;
  for (let i = 0; i < data.length; i += 4096) {
    x = (x * 1103515245 + 12345) >>> 0;
    if (x % 3) data.fill(x & 0xff, i, i + 4096);
  }
  await Deno.writeFile(`${d.path}/s.raw`, data);
  const r = await cli(["convert", "-W", "-m", "4", "-f", "raw", "-O", "raw", `${d.path}/s.raw`, `${d.path}/d.raw`]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(await Deno.readFile(`${d.path}/d.raw`), data);
});

Deno.test({
  name: "map with cache.direct=on reports a data extent ending in a partial block at EOF as the whole block, as qemu-img (iotest 253)",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/t.raw`;
    const size = 1048575;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", path, String(size)]);
    await Deno.truncate(path, size);
    const spec = `driver=raw,file.driver=file,file.filename=${path},cache.direct=on`;
    const map = async () => {
      const q = await runOk("qemu-img", ["map", "--output=json", "--image-opts", spec]);
      const r = await cli(["map", "--output=json", "--image-opts", spec]);
      assertEquals([r.code, r.stdout], [0, q.stdout]);
      return JSON.parse(q.stdout) as { start: number; length: number; data: boolean }[];
    };
    assertEquals((await map()).map((e) => [e.start, e.length, e.data]), [[0, 4096, true], [4096, 1044480, false]]);
    await runOk("qemu-io", ["-f", "raw", "-c", `write ${size + 1 - 65536} ${65535}`, path]);
    await Deno.truncate(path, size);
    assertEquals((await map()).at(-1), { start: 983040, length: 65536, depth: 0, present: true, zero: false, data: true, offset: 983040 });
  },
});
