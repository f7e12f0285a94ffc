import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli, normaliseTimes } from "./_run.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

/** Makes a qcow2 image with qemu-img and writes some clusters with qemu-io. */
async function qcow2(path: string, size: string, writes: string[], opts: string[] = []): Promise<void> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...opts, path, size]);
  if (writes.length) await runOk("qemu-io", ["-f", "qcow2", ...writes.flatMap((w) => ["-c", w]), path]);
}

/** Reads a big-endian u64 from a file. */
function u64(buf: Uint8Array, at: number): number {
  const v = new DataView(buf.buffer, buf.byteOffset);
  return v.getUint32(at) * 2 ** 32 + v.getUint32(at + 4);
}

/** Drops the L2 entry of guest cluster 0: its data cluster becomes a leak. */
async function leakCluster0(path: string): Promise<void> {
  const img = await Deno.readFile(path);
  const l1 = u64(img, 40);
  const l2 = u64(img, l1) % 2 ** 56 - (u64(img, l1) % 2 ** 56) % 512;
  img.fill(0, l2, l2 + 8);
  await Deno.writeFile(path, img);
}

/** Sets the refcount of host cluster `index` to 0 (16-bit refcounts): a corruption. */
async function zeroRefcount(path: string, index: number): Promise<void> {
  const img = await Deno.readFile(path);
  const reftable = u64(img, 48);
  const block = u64(img, reftable);
  img.fill(0, block + index * 2, block + index * 2 + 2);
  await Deno.writeFile(path, img);
}

Deno.test({
  name: "info on qcow2 (plain, with backing, --backing-chain) matches qemu-img info",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await qcow2(`${d.path}/base.qcow2`, "64M", ["write -P 1 0 64k"]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${d.path}/top.qcow2`]);
    await qcow2(`${d.path}/small.qcow2`, "1G", [], ["-o", "cluster_size=4k,lazy_refcounts=on,refcount_bits=8"]);
    for (const f of ["base.qcow2", "top.qcow2", "small.qcow2"]) {
      for (const args of [["--output=json"], ["--output=human"], ["--backing-chain"], ["--backing-chain", "--output=json"]]) {
        const q = await runOk("qemu-img", ["info", ...args, `${d.path}/${f}`]);
        const ours = await cli(["info", ...args, `${d.path}/${f}`]);
        assertEquals(ours.stdout, q.stdout, `${f} ${args.join(" ")}`);
      }
    }
  },
});

Deno.test({
  name: "map on qcow2 with a backing file matches qemu-img map",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await qcow2(`${d.path}/base.qcow2`, "16M", ["write -P 1 0 128k", "write -P 2 1M 64k", "write -z 2M 64k"]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${d.path}/top.qcow2`]);
    await runOk("qemu-io", ["-c", "write -P 3 64k 128k", "-c", "write -z 1M 64k", `${d.path}/top.qcow2`]);
    for (const f of ["base.qcow2", "top.qcow2"]) {
      const q = await runOk("qemu-img", ["map", `${d.path}/${f}`]);
      assertEquals((await cli(["map", `${d.path}/${f}`])).stdout, q.stdout, f);
      const qj = JSON.parse((await runOk("qemu-img", ["map", "--output=json", `${d.path}/${f}`])).stdout);
      const oj = JSON.parse((await cli(["map", "--output=json", `${d.path}/${f}`])).stdout);
      // qemu-img 7.2 has no "compressed" field yet (newer versions print it).
      assertEquals(
        oj.map((e: Record<string, unknown>) => ({ ...e, compressed: undefined })),
        qj.map((e: Record<string, unknown>) => ({ ...e, compressed: undefined })),
        f,
      );
    }
  },
});

Deno.test({
  name: "check on a clean qcow2 matches qemu-img check (human, json, exit 0)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/a.qcow2`;
    await qcow2(path, "64M", ["write -P 1 0 200k", "write -P 2 10M 4k"]);
    for (const args of [[], ["--output=json"]]) {
      const q = await run("qemu-img", ["check", ...args, path]);
      const ours = await cli(["check", ...args, path]);
      assertEquals(ours.stdout, q.stdout);
      assertEquals(ours.code, q.code);
    }
  },
});

Deno.test({
  name: "check reports leaks with exit code 3 and -r leaks repairs them, like qemu-img",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const a = `${d.path}/a.qcow2`;
    const b = `${d.path}/b.qcow2`;
    await qcow2(a, "64M", ["write -P 1 0 64k"]);
    await leakCluster0(a);
    await Deno.copyFile(a, b);
    const q = await run("qemu-img", ["check", a]);
    const ours = await cli(["check", b]);
    assertEquals([ours.code, ours.stdout], [q.code, q.stdout]);
    assertEquals(ours.code, 3);
    const qr = await run("qemu-img", ["check", "-r", "leaks", a]);
    const or = await cli(["check", "-r", "leaks", b]);
    assertEquals([or.code, or.stdout], [qr.code, qr.stdout]);
    assertEquals((await run("qemu-img", ["check", b])).code, 0);
  },
});

Deno.test({
  name: "check reports a corruption with exit code 2, like qemu-img",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/a.qcow2`;
    await qcow2(path, "64M", ["write -P 1 0 64k"]);
    const map = JSON.parse((await runOk("qemu-img", ["map", "--output=json", path])).stdout);
    await zeroRefcount(path, map[0].offset / 65536);
    const q = await run("qemu-img", ["check", "--output=json", path]);
    const ours = await cli(["check", "--output=json", path]);
    assertEquals(ours.code, 2);
    assertEquals(ours.code, q.code);
    assertEquals(ours.stdout, q.stdout);
  },
});

Deno.test({
  name: "compare qcow2 against raw and against its backing chain, like qemu-img",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await qcow2(`${d.path}/a.qcow2`, "8M", ["write -P 1 0 64k"]);
    await runOk("qemu-img", ["convert", "-O", "raw", `${d.path}/a.qcow2`, `${d.path}/a.raw`]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", `${d.path}/top.qcow2`]);
    for (const args of [["a.qcow2", "a.raw"], ["a.qcow2", "top.qcow2"], ["-s", "a.qcow2", "top.qcow2"]]) {
      const q = await run("qemu-img", ["compare", ...args], { cwd: d.path });
      const ours = await cli(["compare", ...args.map((x) => (x.startsWith("-") ? x : `${d.path}/${x}`))]);
      assertEquals([ours.code, ours.stdout], [q.code, q.stdout], args.join(" "));
    }
    await runOk("qemu-io", ["-c", "write -P 9 3M 512", `${d.path}/top.qcow2`]);
    const q = await run("qemu-img", ["compare", "a.qcow2", "top.qcow2"], { cwd: d.path });
    const ours = await cli(["compare", `${d.path}/a.qcow2`, `${d.path}/top.qcow2`]);
    assertEquals([ours.code, ours.stdout], [q.code, q.stdout]);
  },
});

Deno.test({
  name: "io commands on qcow2 print what qemu-io prints",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await qcow2(`${d.path}/a.qcow2`, "64M", []);
    await qcow2(`${d.path}/b.qcow2`, "64M", []);
    const cmds = [
      "write -P 0xab 0 100k",
      "write -z 1M 64k",
      "read -P 0xab 0 100k",
      "read -P 0 1M 64k",
      "alloc 0 1M",
      "map",
      "info",
      "length",
      "discard 0 64k",
      "alloc 0 128k",
    ];
    const c = cmds.flatMap((x) => ["-c", x]);
    const q = await run("qemu-io", ["-f", "qcow2", ...c, `${d.path}/a.qcow2`]);
    const ours = await cli(["io", "-f", "qcow2", ...c, `${d.path}/b.qcow2`]);
    assertEquals(normaliseTimes(ours.stdout), normaliseTimes(q.stdout));
    assertEquals((await run("qemu-img", ["check", `${d.path}/b.qcow2`])).code, 0);
    assertEquals((await run("qemu-img", ["compare", `${d.path}/a.qcow2`, `${d.path}/b.qcow2`])).code, 0);
  },
});

Deno.test({
  name: "measure of a qcow2 image matches qemu-img measure",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await qcow2(`${d.path}/a.qcow2`, "1G", ["write -P 1 0 100k", "write -P 2 300M 1M", "write -z 500M 1M"]);
    for (const args of [["-O", "qcow2"], ["-O", "raw"], ["-O", "qcow2", "-o", "cluster_size=4k"], ["--output=json", "-O", "qcow2"]]) {
      const q = await runOk("qemu-img", ["measure", ...args, `${d.path}/a.qcow2`]);
      const ours = await cli(["measure", ...args, `${d.path}/a.qcow2`]);
      assertEquals(ours.stdout, q.stdout, args.join(" "));
    }
  },
});

Deno.test({
  name: "resize grows a qcow2 image and shrinks it with --shrink (qemu-img check stays clean)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/a.qcow2`;
    await qcow2(path, "64M", ["write -P 1 0 64k"]);
    const r = await cli(["resize", path, "+1G"]);
    assertEquals([r.code, r.stdout], [0, "Image resized.\n"]);
    const info = JSON.parse((await runOk("qemu-img", ["info", "--output=json", path])).stdout);
    assertEquals(info["virtual-size"], (64 << 20) + (1 << 30));
    assertEquals((await run("qemu-img", ["check", path])).code, 0);
    const s = await cli(["resize", "--shrink", path, "64M"]);
    assertEquals([s.code, s.stdout], [0, "Image resized.\n"]);
    assertEquals(JSON.parse((await runOk("qemu-img", ["info", "--output=json", path])).stdout)["virtual-size"], 64 << 20);
    assertEquals((await run("qemu-img", ["check", path])).code, 0);
    assertEquals((await runOk("qemu-io", ["-c", "read -P 1 0 64k", path])).stdout.includes("read 65536/65536"), true);
  },
});

Deno.test({
  name: "io --trace=FILE writes the qcow2 metadata events as JSON lines",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/a.qcow2`;
    await qcow2(path, "64M", []);
    const r = await cli(["io", `--trace=${d.path}/trace.jsonl`, "-c", "write -q 0 4k", "-c", "flush", path]);
    assertEquals(r.code, 0, r.stdout + r.stderr);
    const events = (await Deno.readTextFile(`${d.path}/trace.jsonl`)).trim().split("\n").map((l) => JSON.parse(l));
    const names = events.map((e) => e.event);
    assertEquals(names.includes("cluster_alloc"), true, names.join(" "));
    assertEquals(names.includes("l2_update"), true, names.join(" "));
    assertEquals(names.includes("flush"), true, names.join(" "));
    assertEquals(typeof events[0].req.id, "number");
  },
});

Deno.test({
  name: "rebase -u rewrites the header exactly as qemu-img rebase -u does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await qcow2(`${d.path}/base.qcow2`, "8M", []);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${d.path}/q.qcow2`]);
    await Deno.copyFile(`${d.path}/q.qcow2`, `${d.path}/o.qcow2`);
    for (const args of [["-b", "other-name.raw", "-F", "raw"], ["-b", ""]]) {
      await runOk("qemu-img", ["rebase", "-u", ...args, `${d.path}/q.qcow2`]);
      const r = await cli(["rebase", "-u", ...args, `${d.path}/o.qcow2`]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(await Deno.readFile(`${d.path}/o.qcow2`), await Deno.readFile(`${d.path}/q.qcow2`), args.join(" "));
    }
    const bad = await cli(["rebase", "-u", "-b", "x.qcow2", `${d.path}/o.qcow2`]);
    assertEquals(bad.stderr, "blkgraph: Could not change the backing file to 'x.qcow2': backing format must be specified\n");
  },
});

Deno.test({
  name: "check -r all repairs a corruption with qemu-img's output and messages",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const a = `${d.path}/a.qcow2`;
    const b = `${d.path}/b.qcow2`;
    await qcow2(a, "64M", ["write -P 1 0 64k"]);
    const map = JSON.parse((await runOk("qemu-img", ["map", "--output=json", a])).stdout);
    await zeroRefcount(a, map[0].offset / 65536);
    await Deno.copyFile(a, b);
    const q = await run("qemu-img", ["check", "-r", "all", a]);
    const ours = await cli(["check", "-r", "all", b]);
    assertEquals([ours.code, ours.stdout, ours.stderr], [q.code, q.stdout, q.stderr]);
    assertEquals((await run("qemu-img", ["check", b])).code, 0);
  },
});

Deno.test({
  name: "snapshot -l and info list internal snapshots made by qemu-img, as qemu-img does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/s.qcow2`;
    await qcow2(path, "16M", ["write -P 1 0 64k"]);
    await runOk("qemu-img", ["snapshot", "-c", "first", path]);
    await runOk("qemu-io", ["-c", "write -P 2 0 64k", path]);
    await runOk("qemu-img", ["snapshot", "-c", "second one", path]);
    for (const args of [["snapshot", "-l"], ["info"], ["info", "--output=json"]]) {
      const q = await runOk("qemu-img", [...args, path]);
      assertEquals((await cli([...args, path])).stdout, q.stdout, args.join(" "));
    }
  },
});

Deno.test({
  name: "info reports a dirty lazy-refcounts image as qemu-img does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/dirty.qcow2`;
    await qcow2(path, "16M", [], ["-o", "lazy_refcounts=on"]);
    const img = await Deno.readFile(path);
    img[79] |= 1; // incompatible feature bit 0: dirty
    await Deno.writeFile(path, img);
    for (const args of [["info", "-U"], ["info", "-U", "--output=json"]]) {
      const q = await runOk("qemu-img", [...args, path]);
      assertEquals((await cli([...args, path])).stdout, q.stdout, args.join(" "));
    }
  },
});

Deno.test({
  name: "commit copies the overlay into its backing file and empties it as qemu-img commit does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    for (const who of ["q", "o"]) {
      await qcow2(`${d.path}/${who}-base.qcow2`, "8M", ["write -P 1 0 1M"]);
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", `${who}-base.qcow2`, "-F", "qcow2", `${d.path}/${who}-top.qcow2`]);
      await runOk("qemu-io", ["-c", "write -P 2 512k 1M", "-c", "write -z 4k 4k", "-c", "write -z 2M 64k", `${d.path}/${who}-top.qcow2`]);
    }
    await Deno.copyFile(`${d.path}/o-top.qcow2`, `${d.path}/before.qcow2`);
    const q = await runOk("qemu-img", ["commit", `${d.path}/q-top.qcow2`]);
    const ours = await cli(["commit", `${d.path}/o-top.qcow2`]);
    assertEquals([ours.code, ours.stdout], [0, q.stdout]);
    assertEquals(
      (await run("qemu-img", ["compare", `${d.path}/q-base.qcow2`, `${d.path}/o-base.qcow2`])).stdout,
      "Images are identical.\n",
    );
    assertEquals((await run("qemu-img", ["check", `${d.path}/o-base.qcow2`])).code, 0);
    assertEquals((await run("qemu-img", ["compare", `${d.path}/o-top.qcow2`, `${d.path}/q-top.qcow2`])).stdout, "Images are identical.\n");
    // Like qemu-img, the overlay is emptied: it allocates nothing of its own any more.
    const mapOf = async (f: string) =>
      (await runOk("qemu-img", ["map", "--output=json", "-U", `${d.path}/${f}`])).stdout.replaceAll(/"offset": \d+/g, "");
    assertEquals(await mapOf("o-top.qcow2"), await mapOf("q-top.qcow2"));
    assertEquals((await run("qemu-img", ["check", `${d.path}/o-top.qcow2`])).code, 0);
    const none = await cli(["commit", `${d.path}/o-base.qcow2`]);
    assertEquals([none.code, none.stderr], [1, "blkgraph: Image does not have a backing file\n"]);
  },
});

Deno.test({
  name: "amend -o lazy_refcounts toggles the header bit exactly as qemu-img amend does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await qcow2(`${d.path}/q.qcow2`, "16M", ["write -P 1 0 64k"]);
    await Deno.copyFile(`${d.path}/q.qcow2`, `${d.path}/o.qcow2`);
    for (const v of ["on", "off"]) {
      await runOk("qemu-img", ["amend", "-o", `lazy_refcounts=${v}`, `${d.path}/q.qcow2`]);
      const r = await cli(["amend", "-o", `lazy_refcounts=${v}`, `${d.path}/o.qcow2`]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(await Deno.readFile(`${d.path}/o.qcow2`), await Deno.readFile(`${d.path}/q.qcow2`), v);
    }
    const bad = await cli(["amend", "-o", "cluster_size=4k", `${d.path}/o.qcow2`]);
    assertEquals(bad.stderr, "blkgraph: Invalid parameter 'cluster_size'\nThis option is only supported for image creation\n");
  },
});

Deno.test({
  name: "info works on an image whose backing file is missing, as qemu-img info does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const top = `${d.path}/top.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-u", "-b", `${d.path}/gone.qcow2`, "-F", "qcow2", top, "1M"]);
    for (const args of [["--output=json"], ["--output=human"]]) {
      const q = await runOk("qemu-img", ["info", ...args, top]);
      const ours = await cli(["info", ...args, top]);
      assertEquals([ours.code, ours.stdout], [0, q.stdout], args.join(" "));
    }
    const io = await cli(["io", "-c", "read 0 512", top]);
    assertEquals(io.code, 1);
    assertEquals(/Could not open backing file '.*gone\.qcow2'/.test(io.stderr), true, io.stderr);
  },
});
