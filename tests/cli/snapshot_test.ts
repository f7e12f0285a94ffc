/**
 * The qcow2 verbs of this task against qemu-img 7.2 and qemu-io on the same
 * images: `snapshot -c/-a/-d/-l`, `convert -l`, qemu-io `read/write -b`,
 * `resize --shrink/--preallocation` and `amend` — output, messages (with
 * qemu-img's prefix swapped for ours) and exit codes.
 */
import { deepStrictEqual as assertEquals, match as assertMatch } from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

/** qemu-img's stderr with its prefix as ours. */
function asOurs(text: string): string {
  return text.replaceAll("qemu-img: ", "blkgraph: ");
}

/** Snapshot table lines without the date column (the clock differs). */
function undated(table: string): string {
  return table.replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, "DATE");
}

async function image(dir: string, name: string, writes: string[] = ["write -P 1 0 64k"]): Promise<string> {
  const path = `${dir}/${name}`;
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
  if (writes.length) await runOk("qemu-io", [...writes.flatMap((w) => ["-c", w]), path]);
  return path;
}

Deno.test({
  name: "snapshot -c then -l lists what qemu-img snapshot -l lists for qemu-img's snapshots",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const a = await image(d.path, "a.qcow2");
    const b = await image(d.path, "b.qcow2");
    for (const name of ["first", "second", "first"]) {
      await runOk("qemu-img", ["snapshot", "-c", name, a]);
      assertEquals((await cli(["snapshot", "-c", name, b])).code, 0);
    }
    const q = await runOk("qemu-img", ["snapshot", "-l", a]);
    const ours = await cli(["snapshot", "-l", b]);
    assertEquals(undated(ours.stdout), undated(q.stdout));
    // qemu-img reads ours the same way.
    assertEquals(undated((await runOk("qemu-img", ["snapshot", "-l", b])).stdout), undated(q.stdout));
    const info = JSON.parse((await runOk("qemu-img", ["info", "--output=json", b])).stdout);
    assertEquals(info.snapshots.map((s: Record<string, unknown>) => [s.id, s.name, s.icount, s["vm-state-size"]]), [
      ["1", "first", 0, 0],
      ["2", "second", 0, 0],
      ["3", "first", 0, 0],
    ]);
  },
});

Deno.test({
  name: "snapshot -a/-d/-c failures print qemu-img's messages and exit 1",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const a = await image(d.path, "a.qcow2");
    await runOk("qemu-img", ["snapshot", "-c", "s", a]);
    const cases = [
      ["-a", "nope"],
      ["-d", "nope"],
      ["-d", "1"], // qemu-img 7.2 deletes by name only
    ];
    for (const [flag, name] of cases) {
      const q = await run("qemu-img", ["snapshot", flag, name, a]);
      const ours = await cli(["snapshot", flag, name, a]);
      assertEquals([ours.code, ours.stderr], [q.code, asOurs(q.stderr)], `${flag} ${name}`);
    }
    const r1 = await image(d.path, "r1.qcow2");
    await runOk("qemu-img", ["amend", "-o", "refcount_bits=1", r1]);
    const q = await run("qemu-img", ["snapshot", "-c", "s", await image(d.path, "r2.qcow2")]);
    const ours = await cli(["snapshot", "-c", "s", r1]);
    assertEquals(ours.code, 1);
    assertMatch(ours.stderr, /^blkgraph: Could not create snapshot 's': -22 \(Invalid argument\)\n$/);
    assertEquals(q.code, 0);
    const mix = await cli(["snapshot", "-l", "-c", "x", a]);
    assertEquals(mix.code, 1);
    assertMatch(mix.stderr, /Cannot mix '-l', '-a', '-c', '-d'/);
  },
});

Deno.test({
  name: "snapshot -a and -d change the image as qemu-img does: the data of the snapshot comes back, the snapshot goes",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const b = await image(d.path, "b.qcow2", ["write -P 1 0 64k"]);
    assertEquals((await cli(["snapshot", "-c", "keep", b])).code, 0);
    await runOk("qemu-io", ["-c", "write -P 2 0 64k", b]);
    assertEquals((await cli(["snapshot", "-a", "keep", b])).code, 0);
    assertMatch((await runOk("qemu-io", ["-c", "read -P 1 0 64k", b])).stdout, /read 65536\/65536/);
    assertEquals((await cli(["snapshot", "-d", "keep", b])).code, 0);
    assertEquals((await runOk("qemu-img", ["snapshot", "-l", b])).stdout, "");
    assertEquals((await run("qemu-img", ["check", b])).code, 0);
  },
});

Deno.test({
  name: "convert -l copies a snapshot as qemu-img convert -l does (ID, name, snapshot.id/snapshot.name, errors)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const src = await image(d.path, "src.qcow2", ["write -P 1 0 64k"]);
    await runOk("qemu-img", ["snapshot", "-c", "s1", src]);
    await runOk("qemu-io", ["-c", "write -P 2 0 64k", src]);
    for (const l of ["s1", "1", "snapshot.id=1", "snapshot.name=s1", "snapshot.id=1,snapshot.name=s1", "nope", "snapshot.foo=1"]) {
      const q = await run("qemu-img", ["convert", "-l", l, "-O", "raw", src, `${d.path}/q.raw`]);
      const ours = await cli(["convert", "-l", l, "-O", "raw", src, `${d.path}/o.raw`]);
      assertEquals([ours.code, ours.stderr], [q.code, asOurs(q.stderr)], `-l ${l}`);
      if (q.code === 0) assertEquals(await Deno.readFile(`${d.path}/o.raw`), await Deno.readFile(`${d.path}/q.raw`), `-l ${l}`);
      await Deno.remove(`${d.path}/q.raw`).catch(() => {});
      await Deno.remove(`${d.path}/o.raw`).catch(() => {});
    }
  },
});

Deno.test({
  name: "io read/write -b reach the VM state area as qemu-io's do",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const a = await image(d.path, "a.qcow2", []);
    const cmds = ["write -b -P 5 0 64k", "read -b -P 5 0 64k", "read -P 0 0 64k", "write -b 1 512", "read -b 0 100", "write -b -z 0 512"];
    for (const c of cmds) {
      const q = await run("qemu-io", ["-c", c, a]);
      const ours = await cli(["io", "-c", c, a]);
      const norm = (s: string) => s.replace(/ \d+ ops; .*$/gm, "");
      assertEquals([ours.code, norm(ours.stdout)], [q.code, norm(q.stdout)], c);
    }
  },
});

Deno.test({
  name: "resize refuses to shrink without --shrink and shrinks qcow2 with it, as qemu-img resize",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const a = await image(d.path, "a.qcow2");
    const q = await run("qemu-img", ["resize", a, "512k"]);
    const ours = await cli(["resize", a, "512k"]);
    assertEquals([ours.code, ours.stderr], [q.code, asOurs(q.stderr)]);
    const pre = await cli(["resize", "--preallocation=full", a, "512k"]);
    assertEquals(pre.stderr, asOurs((await run("qemu-img", ["resize", "--preallocation=full", a, "512k"])).stderr));
    assertEquals((await cli(["resize", "--shrink", a, "512k"])).stdout, "Image resized.\n");
    assertEquals(JSON.parse((await runOk("qemu-img", ["info", "--output=json", a])).stdout)["virtual-size"], 512 * 1024);
    assertEquals((await cli(["resize", "--preallocation=falloc", a, "2M"])).code, 0);
    assertEquals((await run("qemu-img", ["check", a])).code, 0);
  },
});

Deno.test({
  name: "amend prints qemu-img's errors for missing and creation-only options",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const a = await image(d.path, "a.qcow2");
    for (const args of [["-o", "cluster_size=4k"], ["-o", "compat=2"], ["-o", "backing_file=x"]]) {
      const q = await run("qemu-img", ["amend", ...args, a]);
      const ours = await cli(["amend", ...args, a]);
      assertEquals([ours.code, ours.stderr], [q.code, asOurs(q.stderr)], args.join(" "));
    }
    assertMatch((await cli(["amend", a])).stderr, /^blkgraph: Must specify options \(-o\)/);
  },
});
