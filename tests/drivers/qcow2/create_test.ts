// createQcow2() against qemu-img create: same bytes for the same options,
// clean by `qemu-img check`, and the options visible in `qemu-img info`.
import assert from "node:assert/strict";
import { BlockError, createImage, open } from "../../../mod.ts";
import { createQcow2 } from "../../../drivers/qcow2/create.ts";
import { qemuCheck, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

type Opts = Record<string, string>;

async function ourCreate(path: string, size: number, options: Opts = {}): Promise<void> {
  await using file = await open({ driver: "file", filename: path, create: true });
  await createQcow2({ file, size, options, filename: path });
  await file.flush();
}

async function qemuCreate(path: string, size: number, options: Opts = {}): Promise<void> {
  const o = Object.entries(options).map(([k, v]) => `${k}=${v}`).join(",");
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...(o ? ["-o", o] : []), path, String(size)]);
}

async function info(path: string): Promise<Record<string, unknown>> {
  return JSON.parse((await runOk("qemu-img", ["info", "--output=json", path])).stdout);
}

const SAME_AS_QEMU: [string, number, Opts][] = [
  ["defaults", 1 << 30, {}],
  ["size 0", 0, {}],
  ["compat=0.10", 1 << 30, { compat: "0.10" }],
  ["cluster_size=512 (extra refcount blocks after the L1 table)", 1 << 30, { cluster_size: "512" }],
  ["cluster_size=4k (no feature table)", 1 << 30, { cluster_size: "4096" }],
  ["cluster_size=2M", 2 ** 40, { cluster_size: "2M" }],
  ["refcount_bits=1", 64 << 20, { refcount_bits: "1" }],
  ["refcount_bits=64 with 512-byte clusters", 4 << 30, { refcount_bits: "64", cluster_size: "512" }],
  ["lazy_refcounts=on", 64 << 20, { lazy_refcounts: "on" }],
  ["compression_type=zstd", 64 << 20, { compression_type: "zstd" }],
  ["extended_l2=on", 1 << 30, { extended_l2: "on" }],
  ["preallocation=metadata", 64 << 20, { preallocation: "metadata", cluster_size: "4096" }],
  ["preallocation=metadata with 512-byte clusters", 4 << 20, { preallocation: "metadata", cluster_size: "512" }],
  ["preallocation=metadata with extended L2 entries", 1 << 20, { preallocation: "metadata", cluster_size: "16k", extended_l2: "on" }],
  ["preallocation=falloc (new refcount area, L2 in the old table)", 64 << 20, { preallocation: "falloc" }],
  ["preallocation=falloc with 512-byte clusters and 64-bit refcounts", 16 << 20, {
    preallocation: "falloc",
    cluster_size: "512",
    refcount_bits: "64",
  }],
  ["preallocation=falloc, size 0", 0, { preallocation: "falloc" }],
  ["preallocation=full", 4 << 20, { preallocation: "full", cluster_size: "4k" }],
  ["a refcount table that must grow (512-byte clusters, 64 GiB)", 64 * 2 ** 30, { cluster_size: "512" }],
  ["a refcount table that must grow, with metadata preallocation", 64 << 20, { cluster_size: "512", preallocation: "metadata" }],
];

for (const [name, size, options] of SAME_AS_QEMU) {
  Deno.test({
    name: `createQcow2() writes the same bytes as qemu-img create (${name})`,
    ignore: skipUnless("qemu-img", "cmp"),
    async fn() {
      await using dir = await tempDir();
      const ours = `${dir.path}/ours.qcow2`;
      const theirs = `${dir.path}/theirs.qcow2`;
      await ourCreate(ours, size, options);
      await qemuCreate(theirs, size, options);
      assert.equal((await Deno.stat(ours)).size, (await Deno.stat(theirs)).size);
      await runOk("cmp", [ours, theirs]);
      const check = await qemuCheck(ours);
      assert.equal(check.code, 0, JSON.stringify(check.json));
    },
  });
}

Deno.test({
  name: "createQcow2() with a backing file stores its name and format as qemu-img does",
  ignore: skipUnless("qemu-img", "cmp"),
  async fn() {
    await using dir = await tempDir();
    await qemuCreate(`${dir.path}/base.qcow2`, 64 << 20);
    const opts = { backing_file: "base.qcow2", backing_fmt: "qcow2" };
    await ourCreate(`${dir.path}/ours.qcow2`, 64 << 20, opts);
    await qemuCreate(`${dir.path}/theirs.qcow2`, 64 << 20, opts);
    await runOk("cmp", [`${dir.path}/ours.qcow2`, `${dir.path}/theirs.qcow2`]);
    const i = await info(`${dir.path}/ours.qcow2`);
    assert.equal(i["backing-filename"], "base.qcow2");
    assert.equal(i["backing-filename-format"], "qcow2");
  },
});

Deno.test({
  name: "createQcow2() takes the virtual size from the backing file when size is 0",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using dir = await tempDir();
    await qemuCreate(`${dir.path}/base.qcow2`, 96 << 20);
    await ourCreate(`${dir.path}/top.qcow2`, 0, { backing_file: "base.qcow2", backing_fmt: "qcow2" });
    assert.equal((await info(`${dir.path}/top.qcow2`))["virtual-size"], 96 << 20);
    await Deno.writeFile(`${dir.path}/base.raw`, new Uint8Array(3 << 20));
    await ourCreate(`${dir.path}/top2.qcow2`, 0, { backing_file: "base.raw", backing_fmt: "raw" });
    assert.equal((await info(`${dir.path}/top2.qcow2`))["virtual-size"], 3 << 20);
  },
});

Deno.test({
  name: "createQcow2() with data_file and data_file_raw matches qemu-img and creates the data file",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using dir = await tempDir();
    // Same name length, so the layouts can be compared byte for byte.
    const oursData = `${dir.path}/ours.raw`;
    const theirsData = `${dir.path}/thei.raw`;
    await ourCreate(`${dir.path}/ours.qcow2`, 64 << 20, { data_file: oursData, data_file_raw: "on" });
    await qemuCreate(`${dir.path}/theirs.qcow2`, 64 << 20, { data_file: theirsData, data_file_raw: "on" });
    assert.equal((await Deno.stat(oursData)).size, 64 << 20);
    const i = await info(`${dir.path}/ours.qcow2`);
    const data = (i["format-specific"] as { data: Record<string, unknown> }).data;
    assert.equal(data["data-file"], oursData);
    assert.equal(data["data-file-raw"], true);
    const a = await Deno.readFile(`${dir.path}/ours.qcow2`);
    const b = await Deno.readFile(`${dir.path}/theirs.qcow2`);
    assert.equal(a.length, b.length);
    assert.deepEqual(a.subarray(65536), b.subarray(65536));
    const check = await qemuCheck(`${dir.path}/ours.qcow2`);
    assert.equal(check.code, 0, JSON.stringify(check.json));
  },
});

Deno.test({
  name: "createQcow2() options show in qemu-img info",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/t.qcow2`;
    await ourCreate(path, 128 << 20, {
      cluster_size: "32k",
      refcount_bits: "8",
      lazy_refcounts: "on",
      extended_l2: "on",
      compression_type: "zstd",
    });
    const i = await info(path);
    assert.equal(i["cluster-size"], 32768);
    assert.equal(i["virtual-size"], 128 << 20);
    const data = (i["format-specific"] as { data: Record<string, unknown> }).data;
    assert.equal(data.compat, "1.1");
    assert.equal(data["refcount-bits"], 8);
    assert.equal(data["lazy-refcounts"], true);
    assert.equal(data["extended-l2"], true);
    assert.equal(data["compression-type"], "zstd");
    assert.equal((await qemuCheck(path)).code, 0);
  },
});

Deno.test({
  name: "createQcow2() with compat=0.10 makes a version 2 image",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/t.qcow2`;
    await ourCreate(path, 16 << 20, { compat: "v2" });
    const data = ((await info(path))["format-specific"] as { data: Record<string, unknown> }).data;
    assert.equal(data.compat, "0.10");
  },
});

Deno.test({
  name: "createQcow2() with preallocation=full and falloc makes clean images whose data is allocated",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using dir = await tempDir();
    for (const mode of ["falloc", "full"]) {
      const path = `${dir.path}/${mode}.qcow2`;
      await ourCreate(path, 4 << 20, { preallocation: mode, cluster_size: "64k" });
      const check = await qemuCheck(path);
      assert.equal(check.code, 0);
      assert.equal(check.json["allocated-clusters"], 64);
      const st = await Deno.stat(path);
      assert.ok(st.size >= 4 << 20);
      if (st.blocks !== null) assert.ok(st.blocks * 512 >= 4 << 20, `${mode}: only ${st.blocks} blocks allocated`);
    }
  },
});

Deno.test({
  name: 'createImage(path, "qcow2") goes through createQcow2',
  ignore: skipUnless("qemu-img", "cmp"),
  async fn() {
    await using dir = await tempDir();
    await createImage(`${dir.path}/ours.qcow2`, "qcow2", 256 << 20, { options: { cluster_size: "128k", lazy_refcounts: "on" } });
    await qemuCreate(`${dir.path}/theirs.qcow2`, 256 << 20, { cluster_size: "128k", lazy_refcounts: "on" });
    await runOk("cmp", [`${dir.path}/ours.qcow2`, `${dir.path}/theirs.qcow2`]);
  },
});

Deno.test("createQcow2() works on a memory node", async () => {
  await using file = await open({ driver: "memory", size: 0 });
  await createQcow2({ file, size: 1 << 20, options: {} });
  assert.equal(file.length, 3 * 65536 + 8);
});

const BAD: [string, number, Opts, string, RegExp][] = [
  ["cluster_size=1000", 1 << 20, { cluster_size: "1000" }, "EINVAL", /Cluster size.*cluster_size 1000/],
  ["cluster_size=4M", 1 << 20, { cluster_size: "4M" }, "EINVAL", /Cluster size.*cluster_size 4M/],
  ["cluster_size=256", 1 << 20, { cluster_size: "256" }, "EINVAL", /cluster_size 256/],
  ["compat=0.9", 1 << 20, { compat: "0.9" }, "EINVAL", /compatibility level.*'0.9'/],
  ["refcount_bits=3", 1 << 20, { refcount_bits: "3" }, "EINVAL", /refcount_bits 3/],
  ["refcount_bits=128", 1 << 20, { refcount_bits: "128" }, "EINVAL", /refcount_bits 128/],
  ["refcount_bits=8 with compat=0.10", 1 << 20, { refcount_bits: "8", compat: "0.10" }, "EINVAL", /refcount_bits 8/],
  ["lazy_refcounts with compat=0.10", 1 << 20, { lazy_refcounts: "on", compat: "0.10" }, "EINVAL", /Lazy refcounts/],
  ["extended_l2 with compat=0.10", 1 << 20, { extended_l2: "on", compat: "0.10" }, "EINVAL", /Extended L2/],
  ["extended_l2 with 4k clusters", 1 << 20, { extended_l2: "on", cluster_size: "4k" }, "EINVAL", /cluster_size 4096/],
  ["compression_type=lz4", 1 << 20, { compression_type: "lz4" }, "EINVAL", /compression_type/],
  ["compression_type=zstd with compat=0.10", 1 << 20, { compression_type: "zstd", compat: "0.10" }, "EINVAL", /Non-zlib/],
  ["preallocation=sparse", 1 << 20, { preallocation: "sparse" }, "EINVAL", /preallocation/],
  ["backing_fmt without backing_file", 1 << 20, { backing_fmt: "raw" }, "EINVAL", /backing_fmt 'raw'/],
  ["backing_file without backing_fmt", 1 << 20, { backing_file: "x.img" }, "EINVAL", /backing_file 'x.img'/],
  [
    "backing_file with preallocation",
    1 << 20,
    { backing_file: "x.img", backing_fmt: "raw", preallocation: "metadata" },
    "EINVAL",
    /preallocation metadata/,
  ],
  ["data_file_raw without data_file", 1 << 20, { data_file_raw: "on" }, "EINVAL", /data-file-raw requires data-file/],
  [
    "data_file_raw with a backing file",
    1 << 20,
    { data_file: "d.raw", data_file_raw: "on", backing_file: "x.img", backing_fmt: "raw" },
    "EINVAL",
    /data-file-raw/,
  ],
  ["data_file with compat=0.10", 1 << 20, { data_file: "d.raw", compat: "0.10" }, "EINVAL", /External data files/],
  ["an unknown option", 1 << 20, { clustersize: "64k" }, "EINVAL", /'clustersize'/],
  [
    "encryption without a secret",
    1 << 20,
    { "encrypt.format": "luks" },
    "EINVAL",
    /Parameter 'encrypt\.key-secret' is required for cipher/,
  ],
  ["encryption without a format", 1 << 20, { "encrypt.key-secret": "sec0" }, "EINVAL", /Parameter 'encrypt\.format' is missing/],
  [
    "an unknown encryption format",
    1 << 20,
    { "encrypt.format": "rot13", "encrypt.key-secret": "sec0" },
    "EINVAL",
    /does not accept value 'rot13'/,
  ],
  ["a size whose L1 table would pass 32 MiB", 2 ** 40, { cluster_size: "512" }, "EFBIG", /too large.*larger cluster size/],
];

for (const [name, size, options, code, message] of BAD) {
  Deno.test(`createQcow2() rejects ${name}`, async () => {
    await using file = await open({ driver: "memory", size: 0 });
    await assert.rejects(createQcow2({ file, size, options }), (e: unknown) => {
      assert.ok(e instanceof BlockError, String(e));
      assert.equal(e.code, code, e.message);
      assert.match(e.message, message);
      return true;
    });
    assert.equal(file.length, 0);
  });
}
