// create's option errors, as qemu-img orders and words them: `-o` values that do not parse as their type (size, number, on/off)
// and unknown options are refused before "Formatting ...", the format's own checks after it (the drop-in flushes the line, so
// it comes first on a merged stream), and no file is left behind either way. blkgraph's own create validates everything
// before it prints the line, and its messages name the value given.
import assert from "node:assert/strict";
import { BlockError, checkCreateOptions, createImage } from "../../mod.ts";
import { run, skipUnless, tempDir } from "../_helpers/qemu.ts";

const QEMU_IMG = new URL("../../cli/qemu-img.ts", import.meta.url).pathname;
const BLKGRAPH = new URL("../../cli/main.ts", import.meta.url).pathname;

const CASES = [
  "-f raw -b base.raw -F raw",
  "-f raw -o backing_file=base.raw",
  "-f raw -F raw",
  "-f raw -o foo=1 -b base.raw",
  "foo=bar",
  "cluster_size=abc",
  "refcount_bits=abc",
  "lazy_refcounts=maybe",
  "cluster_size=1234",
  "compat=0.42",
  "preallocation=x",
  "compression_type=lz4",
  "refcount_bits=3",
  "refcount_bits=1,compat=0.10",
  "extended_l2=on,cluster_size=4k",
  "backing_fmt=raw",
];

/** Runs `cmd` in `cwd` with standard error merged into standard output, as the iotests capture them. */
async function merged(cmd: string, cwd: string): Promise<{ code: number; out: string }> {
  const r = await run("sh", ["-c", `${cmd} 2>&1`], { cwd });
  return { code: r.code, out: r.stdout };
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

Deno.test({
  name:
    "the drop-in qemu-img create refuses bad -o values in qemu-img's words and order ('Formatting' first for the format's checks), leaving no file",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    await Deno.writeFile(`${d.path}/base.raw`, new Uint8Array(65536));
    for (const c of CASES) {
      const o = c.startsWith("-") ? c : `-f qcow2 -o ${c}`;
      const q = await merged(`qemu-img create ${o} t.qcow2 1M`, d.path);
      assert.equal(await exists(`${d.path}/t.qcow2`), false, `qemu-img left a file for ${o}`);
      const r = await merged(`'${Deno.execPath()}' run -A '${QEMU_IMG}' create ${o} t.qcow2 1M`, d.path);
      assert.deepEqual(r, q, o);
      assert.equal(await exists(`${d.path}/t.qcow2`), false, `the drop-in left a file for ${o}`);
    }
  },
});

Deno.test("blkgraph create prints no 'Formatting' line for options it refuses, and names the value given", async () => {
  await using d = await tempDir();
  for (const [o, named] of [["cluster_size=1234", "(cluster_size 1234)"], ["lazy_refcounts=maybe", "'maybe'"], ["compat=0.42", "'0.42'"]]) {
    const r = await run(Deno.execPath(), ["run", "-A", BLKGRAPH, "create", "-f", "qcow2", "-o", o, "t.qcow2", "1M"], { cwd: d.path });
    assert.equal(r.code, 1, o);
    assert.equal(r.stdout, "", o);
    assert.ok(r.stderr.startsWith("blkgraph: t.qcow2: ") && r.stderr.includes(named), r.stderr);
    assert.equal(await exists(`${d.path}/t.qcow2`), false, o);
  }
});

Deno.test("checkCreateOptions() refuses an unknown option and a value of the wrong type, in blkgraph's words and QEMU's", () => {
  const refused = (options: Record<string, string>) => {
    try {
      checkCreateOptions("qcow2", "x.qcow2", options);
    } catch (e) {
      assert.ok(e instanceof BlockError && e.code === "EINVAL");
      return [e.message.split(" (")[0], e.qemuMessage.split("\n")[0]];
    }
    return undefined;
  };
  assert.deepEqual(refused({ colour: "red" }), ["Unknown option 'colour' for format 'qcow2'", "Invalid parameter 'colour'"]);
  assert.deepEqual(refused({ cluster_size: "64q" }), [
    "Invalid value '64q' for option 'cluster_size': expected a size",
    "Parameter 'cluster_size' expects a non-negative number below 2^64",
  ]);
  assert.deepEqual(refused({ refcount_bits: "x" }), [
    "Invalid value 'x' for option 'refcount_bits': expected a number",
    "Parameter 'refcount_bits' expects a number",
  ]);
  assert.deepEqual(refused({ lazy_refcounts: "maybe" }), [
    "Invalid value 'maybe' for option 'lazy_refcounts': expected on or off",
    "Parameter 'lazy_refcounts' expects 'on' or 'off'",
  ]);
  // The protocol's options count too (file: extent_size_hint), and a value that parses is the driver's to judge.
  assert.equal(refused({ extent_size_hint: "1M", cluster_size: "1234", "cluster-size": "4k" }), undefined);
});

Deno.test({
  name: "the drop-in create takes sizes past 2^53 as qemu-img does: the format refuses them as too large, past 2^63 the range is named",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    for (const fmt of ["qcow2", "raw"]) {
      for (const size of ["4P", "1E", "8191P", "8E", "16E", "99999999999999999999999"]) {
        const q = await merged(`qemu-img create -f ${fmt} t.img ${size}`, d.path);
        await Deno.remove(`${d.path}/t.img`).catch(() => {});
        const r = await merged(`'${Deno.execPath()}' run -A '${QEMU_IMG}' create -f ${fmt} t.img ${size}`, d.path);
        assert.deepEqual(r, q, `${fmt} ${size}`);
        // qemu-img leaves an empty raw file behind; blkgraph leaves nothing.
        assert.equal(await exists(`${d.path}/t.img`), false, `${fmt} ${size}`);
      }
    }
  },
});

Deno.test({
  name: "a qcow2 header whose size QEMU cannot address is refused in qemu-img's words ('Image is too big'); one QEMU opens, in ours",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    for (const [cluster, size, qemuOpens] of [["64k", 2n ** 60n, false], ["2M", 2n ** 54n, true]] as const) {
      const path = `${d.path}/t.qcow2`;
      const c = await run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `cluster_size=${cluster}`, path, "4G"]);
      assert.equal(c.code, 0, c.stderr);
      const img = await Deno.readFile(path);
      new DataView(img.buffer).setBigUint64(24, size);
      // The L1 table (zeros to the end of its cluster) is said to be as long as the size needs.
      const l1 = Number((size + (1n << (cluster === "2M" ? 39n : 29n)) - 1n) >> (cluster === "2M" ? 39n : 29n));
      if (qemuOpens) new DataView(img.buffer).setUint32(36, l1);
      await Deno.writeFile(path, img);
      const q = await run("qemu-img", ["info", path]);
      const r = await run(Deno.execPath(), ["run", "-A", QEMU_IMG, "info", path]);
      assert.equal(r.code, 1, r.stderr);
      if (qemuOpens) {
        assert.equal(q.code, 0, q.stderr);
        assert.match(r.stderr, /Image size too large: size is at least 2\^53 \(size 18014398509481984\)/);
      } else assert.deepEqual([r.code, r.stderr], [q.code, q.stderr]);
    }
  },
});

Deno.test("createImage() of a size the format cannot hold keeps its message and gives bdrv_img_create's words as qemuMessage", async () => {
  await using d = await tempDir();
  const err = await createImage(`${d.path}/t.qcow2`, "qcow2", 2 ** 52).then(() => undefined, (e) => e);
  assert.ok(err instanceof BlockError && err.code === "EFBIG", String(err));
  assert.match(err.message, /L1 entries/);
  assert.equal(err.qemuMessage, "The image size is too large for file format 'qcow2' (try using a larger cluster size)");
  assert.equal(await exists(`${d.path}/t.qcow2`), false);
});
