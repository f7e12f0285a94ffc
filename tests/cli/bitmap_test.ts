/**
 * `blkgraph bitmap`, and the bitmap parts of `info`, `measure`, `convert
 * --bitmaps` and `check`, each run side by side with qemu-img on twin
 * images: same exit codes, same messages (`blkgraph:` for `qemu-img:`),
 * same resulting images.
 */
import assert from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";
import { qemuDirty } from "../drivers/qcow2/_bitmap_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");
const ignoreNbd = skipUnless("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo");

async function twins(dir: string, size = "10M", o = ""): Promise<[string, string]> {
  const ours = `${dir}/ours.qcow2`;
  const theirs = `${dir}/theirs.qcow2`;
  for (const p of [ours, theirs]) await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...(o ? ["-o", o] : []), p, size]);
  return [ours, theirs];
}

/** Runs `bitmap ARGS` (with FILE standing for the image) with both tools; returns [ours, theirs]. */
async function both(args: string[], ours: string, theirs: string) {
  const a = await cli(["bitmap", ...args.map((x) => (x === "FILE" ? ours : x))]);
  const b = await run("qemu-img", ["bitmap", ...args.map((x) => (x === "FILE" ? theirs : x))]);
  return { a, b };
}

Deno.test({
  name: "blkgraph bitmap answers every action and mistake as qemu-img bitmap does (exit code, message, result)",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const [ours, theirs] = await twins(dir.path);
    const steps = [
      ["--add", "FILE", "b0"],
      ["--add", "-g", "512k", "--disable", "FILE", "b1"],
      ["--add", "FILE", "b0"],
      ["--remove", "FILE", "nope"],
      ["--clear", "FILE", "nope"],
      ["--enable", "FILE", "nope"],
      ["--add", "-g", "1000", "FILE", "c"],
      ["--add", "-g", "xyz", "FILE", "c"],
      ["--add", "FILE"],
      ["FILE", "b0"],
      ["--remove", "-g", "64k", "FILE", "b0"],
      ["--merge", "b0", "-F", "qcow2", "FILE", "b1"],
      ["--add", "-b", "FILE", "FILE", "c"],
      ["--add", "FILE", ""],
      ["--add", "-g", "2G", "FILE", "c"],
      ["--merge", "b0", "FILE", "b1"],
      ["--merge", "nope", "FILE", "b1"],
      ["--enable", "--disable", "--enable", "FILE", "b1"],
      ["--remove", "--remove", "FILE", "c"],
      ["--clear", "--disable", "FILE", "b0"],
    ];
    for (const s of steps) {
      const { a, b } = await both(s, ours, theirs);
      const label = s.join(" ");
      assert.equal(a.code, b.code, `${label}: exit ${a.code} vs ${b.code} (${a.stderr} | ${b.stderr})`);
      assert.equal(a.stderr.replaceAll("blkgraph:", "qemu-img:"), b.stderr, label);
    }
    const infoA = JSON.parse((await runOk("qemu-img", ["info", "--output=json", ours])).stdout);
    const infoB = JSON.parse((await runOk("qemu-img", ["info", "--output=json", theirs])).stdout);
    assert.deepEqual(infoA["format-specific"], infoB["format-specific"]);
    assert.equal((await run("qemu-img", ["check", ours])).code, 0);
  },
});

Deno.test({
  name: "blkgraph bitmap --merge -b takes the source bitmap from another image, as qemu-img does",
  ignore: ignoreNbd,
  async fn() {
    await using dir = await tempDir();
    const [ours, theirs] = await twins(dir.path);
    const src = `${dir.path}/src.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", src, "10M"]);
    await runOk("qemu-img", ["bitmap", "--add", "-g", "8k", src, "s"]);
    await runOk("qemu-io", ["-c", "write 1M 100k", "-c", "write 9M 1", src]);
    const { a, b } = await both(["--add", "--merge", "s", "-b", src, "-F", "qcow2", "FILE", "t"], ours, theirs);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    assert.deepEqual(await qemuDirty(ours, "t"), await qemuDirty(theirs, "t"));
    assert.deepEqual(await qemuDirty(ours, "t"), ["1048576+131072", "9437184+65536"]);
  },
});

Deno.test({
  name:
    "blkgraph bitmap --merge -b opens the source without its backing file, so an overlay's bitmap merges into its own backing file (as qemu-img)",
  ignore: ignoreNbd,
  async fn() {
    await using dir = await tempDir();
    const tops: string[] = [];
    for (const who of ["ours", "theirs"]) {
      const base = `${dir.path}/${who}.base.qcow2`;
      const top = `${dir.path}/${who}.qcow2`;
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"]);
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
      await runOk("qemu-img", ["bitmap", "--add", top, "b2"]);
      await runOk("qemu-io", ["-c", "write 64k 64k", top]);
      tops.push(top);
    }
    // The target (the base, opened read-write) is the source's backing file: qemu-img does not open that again.
    const args = (who: string) => ["--add", "--merge", "b2", "-b", `${dir.path}/${who}.qcow2`, "-F", "qcow2", "-f", "qcow2"];
    const a = await cli(["bitmap", ...args("ours"), `${dir.path}/ours.base.qcow2`, "b3"]);
    const b = await run("qemu-img", ["bitmap", ...args("theirs"), `${dir.path}/theirs.base.qcow2`, "b3"]);
    assert.deepEqual([a.code, a.stderr], [b.code, b.stderr]);
    assert.deepEqual(await qemuDirty(`${dir.path}/ours.base.qcow2`, "b3"), ["65536+65536"]);
    assert.deepEqual(await qemuDirty(`${dir.path}/ours.base.qcow2`, "b3"), await qemuDirty(`${dir.path}/theirs.base.qcow2`, "b3"));
  },
});

Deno.test({
  name: "blkgraph info lists bitmaps as qemu-img info does, human and JSON",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "10M"]);
    await runOk("qemu-img", ["bitmap", "--add", path, "b0"]);
    await runOk("qemu-img", ["bitmap", "--add", "-g", "1M", "--disable", path, "b1"]);
    for (const args of [["info", path], ["info", "--output=json", path]]) {
      const ours = await cli(args);
      const theirs = await runOk("qemu-img", args);
      assert.equal(ours.code, 0, ours.stderr);
      const strip = (s: string) => s.replace(/^disk size: .*$/m, "").replace(/"actual-size": \d+/, "");
      assert.equal(strip(ours.stdout), strip(theirs.stdout), args.join(" "));
    }
  },
});

Deno.test({
  name: "blkgraph measure counts the source's bitmaps (bitmaps size) as qemu-img measure does",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "100M"]);
    await runOk("qemu-img", ["bitmap", "--add", "-g", "512", path, "fine"]);
    await runOk("qemu-img", ["bitmap", "--add", path, "a-longer-bitmap-name"]);
    const v2 = `${dir.path}/v2.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "1M"]);
    for (
      const args of [
        ["measure", "-O", "qcow2", path],
        ["measure", "-O", "qcow2", "--output=json", path],
        ["measure", "-O", "qcow2", "-o", "cluster_size=4k", path],
        ["measure", "-O", "qcow2", "-o", "compat=0.10", path],
        ["measure", "-O", "raw", path],
        ["measure", "-O", "qcow2", v2],
      ]
    ) {
      const ours = await cli(args);
      const theirs = await runOk("qemu-img", args);
      assert.equal(ours.stdout, theirs.stdout, args.join(" "));
    }
  },
});

Deno.test({
  name: "blkgraph convert --bitmaps copies bitmaps (granularity, state, bits) as qemu-img convert --bitmaps does",
  ignore: ignoreNbd,
  async fn() {
    await using dir = await tempDir();
    const src = `${dir.path}/src.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", src, "10M"]);
    await runOk("qemu-img", ["bitmap", "--add", src, "b0"]);
    await runOk("qemu-img", ["bitmap", "--add", "-g", "4k", src, "b1"]);
    await runOk("qemu-io", ["-c", "write 0 4k", "-c", "write 5M 64k", src]);
    await runOk("qemu-img", ["bitmap", "--disable", src, "b1"]);
    const ours = `${dir.path}/ours.qcow2`;
    const theirs = `${dir.path}/theirs.qcow2`;
    const a = await cli(["convert", "--bitmaps", "-O", "qcow2", "-o", "cluster_size=16k", src, ours]);
    assert.equal(a.code, 0, a.stderr);
    await runOk("qemu-img", ["convert", "--bitmaps", "-O", "qcow2", "-o", "cluster_size=16k", src, theirs]);
    const fs = async (p: string) => JSON.parse((await runOk("qemu-img", ["info", "--output=json", p])).stdout)["format-specific"];
    assert.deepEqual(await fs(ours), await fs(theirs));
    for (const b of ["b0", "b1"]) assert.deepEqual(await qemuDirty(ours, b), await qemuDirty(theirs, b), b);
    assert.equal((await run("qemu-img", ["compare", ours, theirs])).code, 0);
    assert.equal((await run("qemu-img", ["check", ours])).code, 0);
  },
});

Deno.test({
  name: "blkgraph convert --bitmaps refuses what qemu-img refuses, with its messages",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const src = `${dir.path}/src.qcow2`;
    const broken = `${dir.path}/broken.qcow2`;
    const raw = `${dir.path}/src.raw`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", src, "4M"]);
    await runOk("qemu-img", ["bitmap", "--add", src, "b0"]);
    await runOk("qemu-img", ["create", "-q", "-f", "raw", raw, "4M"]);
    // A crash while open leaves b0 in use: sigraise 9 kills qemu-io before it stores the bitmap.
    await Deno.copyFile(src, broken);
    await run("qemu-io", ["-c", "write 0 512", "-c", "sigraise 9", broken]);
    const cases = [
      ["--bitmaps", "-O", "raw", src, "OUT"],
      ["--skip-broken-bitmaps", "-O", "qcow2", src, "OUT"],
      ["--bitmaps", "-O", "qcow2", "-f", "raw", raw, "OUT"],
      ["--bitmaps", "-O", "qcow2", src, src, "OUT"],
      ["--bitmaps", "-O", "qcow2", "-o", "compat=0.10", src, "OUT"],
      ["--bitmaps", "-O", "qcow2", broken, "OUT"],
      ["--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", broken, "OUT"],
    ];
    let n = 0;
    for (const c of cases) {
      const a = await cli(["convert", ...c.map((x) => (x === "OUT" ? `${dir.path}/a${n}.img` : x))]);
      const b = await run("qemu-img", ["convert", ...c.map((x) => (x === "OUT" ? `${dir.path}/b${n}.img` : x))]);
      n++;
      assert.equal(a.code, b.code, `${c.join(" ")}: ${a.stderr} | ${b.stderr}`);
      assert.equal(a.stderr.replaceAll("blkgraph:", "qemu-img:"), b.stderr, c.join(" "));
    }
    // The skipped bitmap is not in the copy.
    assert.equal((await run("qemu-img", ["info", `${dir.path}/a6.img`])).stdout.includes("bitmaps"), false);
  },
});

Deno.test({
  name: "blkgraph check validates bitmaps: clean with bitmaps, in-use bitmaps are not errors, stale ones are leaks (as qemu-img check)",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/a.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "4M"]);
    await runOk("qemu-img", ["bitmap", "--add", path, "b0"]);
    await runOk("qemu-io", ["-c", "write 0 64k", path]);
    const inUse = `${dir.path}/in-use.qcow2`;
    await Deno.copyFile(path, inUse);
    await run("qemu-io", ["-c", "write 1M 512", "-c", "sigraise 9", inUse]);
    const stale = `${dir.path}/stale.qcow2`;
    await Deno.copyFile(path, stale);
    const f = await Deno.open(stale, { read: true, write: true });
    await f.seek(95, Deno.SeekMode.Start);
    await f.write(new Uint8Array([0]));
    f.close();
    for (const p of [path, inUse, stale]) {
      const ours = await cli(["check", "--output=json", p]);
      const theirs = await run("qemu-img", ["check", "--output=json", p]);
      assert.equal(ours.code, theirs.code, p);
      assert.deepEqual(JSON.parse(ours.stdout), JSON.parse(theirs.stdout), p);
    }
  },
});

Deno.test({
  name: "blkgraph check -r leaks drops a stale bitmaps extension and frees its clusters: the image equals qemu-img's repair byte for byte",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const ours = `${dir.path}/ours.qcow2`;
    const theirs = `${dir.path}/theirs.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ours, "4M"]);
    await runOk("qemu-img", ["bitmap", "--add", ours, "b0"]);
    await runOk("qemu-io", ["-c", "write 0 1M", ours]);
    // A program without bitmap support cleared the autoclear bit.
    const f = await Deno.open(ours, { read: true, write: true });
    await f.seek(95, Deno.SeekMode.Start);
    await f.write(new Uint8Array([0]));
    f.close();
    await Deno.copyFile(ours, theirs);
    const r = await cli(["check", "-r", "leaks", ours]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    await runOk("qemu-img", ["check", "-r", "leaks", theirs]);
    assert.deepEqual(await Deno.readFile(ours), await Deno.readFile(theirs));
    assert.equal((await run("qemu-img", ["check", ours])).stderr, "");
  },
});

Deno.test({
  name: "convert --bitmaps names and skips several inconsistent bitmaps in qemu-img's order, as qemu-img (tests/qemu-img-bitmaps)",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const src = `${dir.path}/src.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", src, "4M"]);
    for (const b of ["b0", "b1", "b2"]) await runOk("qemu-img", ["bitmap", "--add", src, b]);
    await runOk("qemu-img", ["bitmap", "--remove", src, "b1"]);
    await run("qemu-io", ["-c", "write 0 512", "-c", "sigraise 9", src]); // b0 and b2 left in use: inconsistent
    for (const skip of [[], ["--skip-broken-bitmaps"]]) {
      const args = (out: string) => ["convert", "--bitmaps", ...skip, "-O", "qcow2", src, `${dir.path}/${out}`];
      const q = await run("qemu-img", args(`q${skip.length}.qcow2`));
      const r = await cli(args(`o${skip.length}.qcow2`));
      assert.deepEqual([r.code, r.stderr], [q.code, q.stderr.replaceAll("qemu-img:", "blkgraph:")], skip.join(" "));
    }
  },
});
