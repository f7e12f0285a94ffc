// The qemu-img verbs on qcow2 against qemu-img and qemu-io. Where they are
// not installed, the tests that have a fixture (tests/testdata/make.sh made
// it with the same commands and recorded what QEMU printed) compare with the
// recording instead; the others are skipped with a SKIP line.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { sha256, withoutDiskSize } from "../_helpers/fixtures.ts";
import { type QemuImage, qemuImage, qemuRun } from "../drivers/qcow2/_qemu_image.ts";
import { cli, normaliseTimes } from "./_run.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

/**
 * Asserts our CLI prints for `line` (a command line as make.sh records it,
 * `@IMG@` the image) what QEMU prints: live, or the recording (without the
 * disk sizes, which depend on the copy's allocation); returns QEMU's run.
 */
async function assertSays(img: QemuImage, line: string, what: "stdout" | "all" = "stdout"): Promise<{ code: number; imageSha256: string }> {
  const q = await qemuRun(img, line);
  const words = line.split(" ").map((w) => (w === "@IMG@" ? img.path : w === "''" ? "" : w));
  const ours = await cli(words);
  const norm = (t: string) => (img.live ? t : withoutDiskSize(t));
  const out = ours.stdout;
  assertEquals(norm(out), norm(q.stdout), line);
  if (what === "all") assertEquals([ours.code, ours.stderr.replaceAll("blkgraph: ", "qemu-img: ")], [q.code, q.stderr], line);
  return q;
}

/** make.sh's v-base (64 MiB, 64k of 1 at 0), live or unpacked. */
function vBase(dir: string): Promise<QemuImage> {
  return qemuImage(dir, "v-base.qcow2", (p) => qcow2(p, "64M", ["write -P 1 0 64k"]));
}

/** make.sh's v-top (an empty overlay over v-base). */
function vTop(dir: string): Promise<QemuImage> {
  return qemuImage(dir, "v-top.qcow2", async (p) => {
    await vBase(dir);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "v-base.qcow2", "-F", "qcow2", p]);
  });
}

/** make.sh's v-clean (64 MiB: 200k of 1 at 0, 4k of 2 at 10M). */
function vClean(dir: string): Promise<QemuImage> {
  return qemuImage(dir, "v-clean.qcow2", (p) => qcow2(p, "64M", ["write -P 1 0 200k", "write -P 2 10M 4k"]));
}

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

/** make.sh's v-zeroref: 64 MiB, 64k of 1 at 0, then the data cluster's refcount zeroed. */
function vZeroref(dir: string): Promise<QemuImage> {
  return qemuImage(dir, "v-zeroref.qcow2", async (path) => {
    await qcow2(path, "64M", ["write -P 1 0 64k"]);
    const map = JSON.parse((await runOk("qemu-img", ["map", "--output=json", path])).stdout);
    await zeroRefcount(path, map[0].offset / 65536);
  });
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
  async fn() {
    await using d = await tempDir();
    const small = await qemuImage(
      d.path,
      "v-small.qcow2",
      (p) => qcow2(p, "1G", [], ["-o", "cluster_size=4k,lazy_refcounts=on,refcount_bits=8"]),
    );
    for (const img of [await vBase(d.path), await vTop(d.path), small]) {
      for (const args of ["--output=json", "--output=human", "--backing-chain", "--backing-chain --output=json"]) {
        await assertSays(img, `info ${args} @IMG@`);
      }
    }
  },
});

Deno.test({
  name: "map on qcow2 with a backing file matches qemu-img map",
  async fn() {
    await using d = await tempDir();
    const base = await qemuImage(
      d.path,
      "m-base.qcow2",
      (p) => qcow2(p, "16M", ["write -P 1 0 128k", "write -P 2 1M 64k", "write -z 2M 64k"]),
    );
    const top = await qemuImage(d.path, "m-top.qcow2", async (p) => {
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "m-base.qcow2", "-F", "qcow2", p]);
      await runOk("qemu-io", ["-c", "write -P 3 64k 128k", "-c", "write -z 1M 64k", p]);
    });
    for (const img of [base, top]) {
      await assertSays(img, "map @IMG@");
      await assertSays(img, "map --output=json @IMG@");
    }
  },
});

Deno.test({
  name: "check on a clean qcow2 matches qemu-img check (human, json, exit 0)",
  async fn() {
    await using d = await tempDir();
    const img = await vClean(d.path);
    for (const line of ["check @IMG@", "check --output=json @IMG@"]) assertEquals((await assertSays(img, line, "all")).code, 0);
  },
});

Deno.test({
  name: "check reports leaks with exit code 3 and -r leaks repairs them, like qemu-img",
  async fn() {
    await using d = await tempDir();
    const a = await qemuImage(d.path, "v-leak.qcow2", async (p) => {
      await qcow2(p, "64M", ["write -P 1 0 64k"]);
      await leakCluster0(p);
    });
    const b = `${d.path}/b.qcow2`;
    await Deno.copyFile(a.path, b);
    const q = await qemuRun(a, "check @IMG@");
    const ours = await cli(["check", b]);
    assertEquals([ours.code, ours.stdout], [q.code, q.stdout.replaceAll(a.path, b)]);
    assertEquals(ours.code, 3);
    const qr = await qemuRun(a, "check -r leaks @IMG@");
    const or = await cli(["check", "-r", "leaks", b]);
    assertEquals([or.code, or.stdout], [qr.code, qr.stdout.replaceAll(a.path, b)]);
    // The same repair: the same bytes, so clean for qemu-img too.
    assertEquals(sha256(await Deno.readFile(b)), qr.imageSha256);
    assertEquals((await cli(["check", b])).code, 0);
  },
});

Deno.test({
  name: "check reports a corruption with exit code 2, like qemu-img",
  async fn() {
    await using d = await tempDir();
    const img = await vZeroref(d.path);
    assertEquals((await assertSays(img, "check --output=json @IMG@", "all")).code, 2);
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
  async fn() {
    await using d = await tempDir();
    const a = await qemuImage(d.path, "w-64M.qcow2", (p) => qcow2(p, "64M", []));
    const b = `${d.path}/b.qcow2`;
    await Deno.copyFile(a.path, b);
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
    const line = `qemu-io -f qcow2 ${cmds.map((x) => (x.includes(" ") ? `-c '${x}'` : `-c ${x}`)).join(" ")} @IMG@`;
    const q = await qemuRun(a, line);
    const ours = await cli(["io", "-f", "qcow2", ...cmds.flatMap((x) => ["-c", x]), b]);
    assertEquals(normaliseTimes(ours.stdout), normaliseTimes(q.stdout));
    if (a.live) {
      assertEquals((await run("qemu-img", ["check", b])).code, 0);
      assertEquals((await run("qemu-img", ["compare", a.path, b])).code, 0);
    } else {
      assertEquals((await cli(["check", b])).code, 0);
    }
  },
});

Deno.test({
  name: "measure of a qcow2 image matches qemu-img measure",
  async fn() {
    await using d = await tempDir();
    const img = await qemuImage(
      d.path,
      "v-measure.qcow2",
      (p) => qcow2(p, "1G", ["write -P 1 0 100k", "write -P 2 300M 1M", "write -z 500M 1M"]),
    );
    for (const args of ["-O qcow2", "-O raw", "-O qcow2 -o cluster_size=4k", "--output=json -O qcow2"]) {
      await assertSays(img, `measure ${args} @IMG@`);
    }
  },
});

Deno.test({
  name:
    "resize grows a qcow2 image as qemu-img resize does (its output, the new size, clean) and shrinks it with --shrink (check stays clean)",
  async fn() {
    await using d = await tempDir();
    const img = await vClean(d.path);
    const path = `${d.path}/a.qcow2`;
    await Deno.copyFile(img.path, path);
    const r = await cli(["resize", path, "+1G"]);
    const q = await qemuRun(img, "resize @IMG@ +1G");
    assertEquals([r.code, r.stdout], [q.code, q.stdout]);
    // Not the same bytes: qemu-img moves the L1 table to the end of the file without padding it to a cluster.
    const info = JSON.parse(
      img.live ? (await runOk("qemu-img", ["info", "--output=json", path])).stdout : (await cli(["info", "--output=json", path])).stdout,
    );
    assertEquals(info["virtual-size"], (64 << 20) + (1 << 30));
    assertEquals((img.live ? await run("qemu-img", ["check", path]) : await cli(["check", path])).code, 0);
    const s = await cli(["resize", "--shrink", path, "64M"]);
    assertEquals([s.code, s.stdout], [0, "Image resized.\n"]);
    const shrunk = JSON.parse(
      img.live ? (await runOk("qemu-img", ["info", "--output=json", path])).stdout : (await cli(["info", "--output=json", path])).stdout,
    );
    assertEquals(shrunk["virtual-size"], 64 << 20);
    assertEquals((img.live ? await run("qemu-img", ["check", path]) : await cli(["check", path])).code, 0);
    const read = img.live ? await runOk("qemu-io", ["-c", "read -P 1 0 64k", path]) : await cli(["io", "-c", "read -P 1 0 64k", path]);
    assertEquals(read.stdout.includes("read 65536/65536"), true, read.stdout);
  },
});

Deno.test({
  name: "io --trace=FILE writes the qcow2 metadata events as JSON lines",
  async fn() {
    await using d = await tempDir();
    const { path } = await qemuImage(d.path, "w-64M.qcow2", (p) => qcow2(p, "64M", []));
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
  async fn() {
    await using d = await tempDir();
    const img = await vTop(d.path);
    await Deno.copyFile(img.path, `${d.path}/o.qcow2`);
    const steps = ["rebase -u -b other-name.raw -F raw @IMG@", "rebase -u -b other-name.raw -F raw @IMG@ && rebase -u -b '' @IMG@"];
    for (const [i, args] of [["-b", "other-name.raw", "-F", "raw"], ["-b", ""]].entries()) {
      const r = await cli(["rebase", "-u", ...args, `${d.path}/o.qcow2`]);
      assertEquals(r.code, 0, r.stderr);
      // Live, each step runs on a fresh copy of v-top (as recorded).
      if (img.live) await Deno.copyFile(`${d.path}/o.qcow2`, `${d.path}/before.qcow2`);
      const q = await qemuRun(img.live ? await vTop(await Deno.makeTempDir({ dir: d.path })) : img, steps[i]);
      assertEquals(sha256(await Deno.readFile(`${d.path}/o.qcow2`)), q.imageSha256, args.join(" "));
    }
    const bad = await cli(["rebase", "-u", "-b", "x.qcow2", `${d.path}/o.qcow2`]);
    assertEquals(bad.stderr, "blkgraph: Could not change the backing file to 'x.qcow2': backing format must be specified\n");
  },
});

Deno.test({
  name: "check -r all repairs a corruption with qemu-img's output and messages",
  async fn() {
    await using d = await tempDir();
    const a = await vZeroref(d.path);
    const b = `${d.path}/b.qcow2`;
    await Deno.copyFile(a.path, b);
    const q = await qemuRun(a, "check -r all @IMG@");
    const ours = await cli(["check", "-r", "all", b]);
    assertEquals([ours.code, ours.stdout, ours.stderr], [q.code, q.stdout.replaceAll(a.path, b), q.stderr]);
    // The same repair: the same bytes, so clean for qemu-img too.
    assertEquals(sha256(await Deno.readFile(b)), q.imageSha256);
    assertEquals((await cli(["check", b])).code, 0);
  },
});

Deno.test({
  name: "snapshot -l and info list internal snapshots made by qemu-img, as qemu-img does",
  async fn() {
    await using d = await tempDir();
    const img = await qemuImage(d.path, "snapshots.qcow2", async (path) => {
      await qcow2(path, "16M", ["write -P 1 0 64k"]);
      await runOk("qemu-img", ["snapshot", "-c", "first", path]);
      await runOk("qemu-io", ["-c", "write -P 2 0 64k", path]);
      await runOk("qemu-img", ["snapshot", "-c", "second one", path]);
    });
    for (const line of ["snapshot -l @IMG@", "info @IMG@", "info --output=json @IMG@"]) await assertSays(img, line);
  },
});

Deno.test({
  name: "info reports a dirty lazy-refcounts image as qemu-img does",
  async fn() {
    await using d = await tempDir();
    const img = await qemuImage(d.path, "v-dirty.qcow2", async (path) => {
      await qcow2(path, "16M", [], ["-o", "lazy_refcounts=on"]);
      const bytes = await Deno.readFile(path);
      bytes[79] |= 1; // incompatible feature bit 0: dirty
      await Deno.writeFile(path, bytes);
    });
    for (const line of ["info -U @IMG@", "info -U --output=json @IMG@"]) await assertSays(img, line);
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
  name: "amend -o lazy_refcounts toggles the header bit exactly as qemu-img amend does, and refuses cluster_size with its message",
  async fn() {
    await using d = await tempDir();
    const img = await vClean(d.path);
    const o = `${d.path}/o.qcow2`;
    await Deno.copyFile(img.path, o);
    const steps = ["amend -o lazy_refcounts=on @IMG@", "amend -o lazy_refcounts=on @IMG@ && amend -o lazy_refcounts=off @IMG@"];
    for (const [i, v] of ["on", "off"].entries()) {
      const r = await cli(["amend", "-o", `lazy_refcounts=${v}`, o]);
      assertEquals(r.code, 0, r.stderr);
      const q = await qemuRun(img.live ? await vClean(await Deno.makeTempDir({ dir: d.path })) : img, steps[i]);
      assertEquals(sha256(await Deno.readFile(o)), q.imageSha256, v);
    }
    const bad = await cli(["amend", "-o", "cluster_size=4k", o]);
    const q = await qemuRun(img, "amend -o cluster_size=4k @IMG@");
    assertEquals([bad.code, bad.stderr.replaceAll("blkgraph: ", "qemu-img: ")], [q.code, q.stderr]);
  },
});

Deno.test({
  name: "info works on an image whose backing file is missing, as qemu-img info does",
  async fn() {
    await using d = await tempDir();
    const img = await qemuImage(d.path, "v-missing-backing.qcow2", async (p) => {
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2", p, "1M"]);
    });
    for (const args of ["--output=json", "--output=human"]) assertEquals((await assertSays(img, `info ${args} @IMG@`)).code, 0);
    const top = img.path;
    const io = await cli(["io", "-c", "read 0 512", top]);
    assertEquals(io.code, 1);
    // qemu-io's text: "Could not open backing file: Could not open 'NAME': No such file or directory".
    assertEquals(/Could not open backing file: Could not open '.*gone\.qcow2': No such file or directory/.test(io.stderr), true, io.stderr);
  },
});
