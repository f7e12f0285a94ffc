/**
 * qcow2 read path against qemu-io as the oracle: images qemu writes, read
 * back byte for byte (compared with `qemu-img convert -O raw`), and block
 * status.
 */

import assert from "node:assert/strict";
import { BlockError, CorruptImageError, open } from "../../../mod.ts";
import { runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { firstDiff, openQcow2, qemuCreate, qemuIo, readAll, toRaw } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

/** Reads the whole image with our driver and compares it with qemu-img's raw conversion. */
async function assertReadsLikeQemu(dir: string, path: string, opts: Record<string, unknown> = {}): Promise<void> {
  await toRaw(path, `${dir}/expect.raw`);
  const expect = await Deno.readFile(`${dir}/expect.raw`);
  await using node = await openQcow2(path, opts, true);
  const got = await readAll(node);
  assert.deepEqual(got.length, expect.length);
  assert.deepEqual(firstDiff(got, expect), -1, "first differing byte");
}

const PATTERN_CMDS = (cs: number) => [
  "write -P 0x11 0 100k",
  `write -P 0x22 ${cs * 3 + 100} 5000`,
  `write -P 0x33 ${2 * 1024 * 1024 - 700} 1400`,
  `write -z ${4 * cs} ${cs}`,
];

for (const cs of [512, 4096, 65536, 2 * 1024 * 1024]) {
  Deno.test({
    name: `qcow2 pread() reads what qemu-io wrote to a ${cs}-byte-cluster image`,
    ignore,
    async fn() {
      await using dir = await tempDir();
      const path = `${dir.path}/a.qcow2`;
      await qemuCreate(path, cs === 2 * 1024 * 1024 ? "16M" : "4M", `cluster_size=${cs}`);
      await qemuIo(path, ...PATTERN_CMDS(cs));
      await assertReadsLikeQemu(dir.path, path);
    },
  });
}

for (const o of ["compat=0.10", "refcount_bits=1", "refcount_bits=64", "extended_l2=on", "lazy_refcounts=on"]) {
  Deno.test({
    name: `qcow2 pread() reads an image created with ${o}`,
    ignore,
    async fn() {
      await using dir = await tempDir();
      const path = `${dir.path}/a.qcow2`;
      await qemuCreate(path, "4M", o);
      await qemuIo(path, ...PATTERN_CMDS(65536), "write -P 0x44 70000 3000");
      await assertReadsLikeQemu(dir.path, path);
    },
  });
}

for (const type of ["zlib", "zstd"]) {
  Deno.test({
    name: `qcow2 pread() decompresses ${type} compressed clusters`,
    ignore,
    async fn() {
      await using dir = await tempDir();
      const src = `${dir.path}/src.qcow2`;
      await qemuCreate(src, "4M");
      await qemuIo(src, "write -P 0x41 0 1M", "write -P 0x42 3M 100k");
      const path = `${dir.path}/c.qcow2`;
      await runOk("qemu-img", ["convert", "-c", "-O", "qcow2", "-o", `compression_type=${type},cluster_size=4k`, src, path]);
      await assertReadsLikeQemu(dir.path, path);
      await using node = await openQcow2(path, {}, true);
      const st = await node.blockStatus(0, 4096);
      assert.deepEqual(st.compressed, true);
    },
  });
}

Deno.test({
  name: "qcow2 zero clusters read as zeros over backing data and report zero, allocated",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const base = `${dir.path}/base.qcow2`;
    const top = `${dir.path}/top.qcow2`;
    await qemuCreate(base, "4M");
    await qemuIo(base, "write -P 0x55 0 4M");
    await qemuCreate(top, "4M", "", base);
    await qemuIo(top, "write -z 64k 128k");
    await assertReadsLikeQemu(dir.path, top);
    await using node = await openQcow2(top, {}, true);
    const st = await node.blockStatus(65536, 1 << 20);
    assert.deepEqual([st.length, st.zero, st.data, st.allocated, st.depth], [131072, true, false, true, 0]);
  },
});

Deno.test({
  name: "qcow2 pread() reads discarded clusters as qemu does",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const base = `${dir.path}/base.qcow2`;
    const top = `${dir.path}/top.qcow2`;
    await qemuCreate(base, "4M");
    await qemuIo(base, "write -P 0x66 0 4M");
    await qemuCreate(top, "4M", "", base);
    await qemuIo(top, "write -P 0x77 0 1M", "discard 64k 256k");
    await assertReadsLikeQemu(dir.path, top);
  },
});

Deno.test({
  name: "qcow2 pread() follows a backing chain of depth 3 and blockStatus() reports the depth",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const p = (n: string) => `${dir.path}/${n}.qcow2`;
    await qemuCreate(p("l0"), "4M");
    await qemuIo(p("l0"), "write -P 0x10 0 4M");
    await qemuCreate(p("l1"), "4M", "", p("l0"));
    await qemuIo(p("l1"), "write -P 0x11 1M 1M");
    await qemuCreate(p("l2"), "4M", "", p("l1"));
    await qemuIo(p("l2"), "write -P 0x12 1536k 64k");
    await qemuCreate(p("l3"), "4M", "", p("l2"));
    await qemuIo(p("l3"), "write -P 0x13 0 4k");
    await assertReadsLikeQemu(dir.path, p("l3"));
    await using node = await openQcow2(p("l3"), {}, true);
    assert.deepEqual((await node.blockStatus(0, 4096)).depth, 0);
    assert.deepEqual((await node.blockStatus(1536 * 1024, 4096)).depth, 1);
    assert.deepEqual((await node.blockStatus(1024 * 1024, 4096)).depth, 2);
    assert.deepEqual((await node.blockStatus(64 * 1024, 4096)).depth, 3);
  },
});

Deno.test({
  name: "qcow2 pread() reads zeros past the end of a shorter backing file",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const base = `${dir.path}/base.qcow2`;
    const top = `${dir.path}/top.qcow2`;
    await qemuCreate(base, "1M");
    await qemuIo(base, "write -P 0x21 0 1M");
    await qemuCreate(top, "4M", "", base);
    await assertReadsLikeQemu(dir.path, top);
  },
});

Deno.test({
  name: "qcow2 open() with backing: null ignores the backing file",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const base = `${dir.path}/base.qcow2`;
    const top = `${dir.path}/top.qcow2`;
    await qemuCreate(base, "1M");
    await qemuIo(base, "write -P 0x21 0 1M");
    await qemuCreate(top, "1M", "", base);
    await using node = await openQcow2(top, { backing: null }, true);
    assert.deepEqual(node.backing, undefined);
    const buf = new Uint8Array(512);
    await node.pread(0, buf);
    assert.deepEqual(buf.every((b) => b === 0), true);
  },
});

Deno.test({
  name: "qcow2 pread() reads guest data from an external data file",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/d.qcow2`;
    await qemuCreate(path, "4M", `data_file=${dir.path}/d.data,extended_l2=on`);
    await qemuIo(path, "write -P 0x31 0 100k", "write -P 0x32 3M 5000");
    await assertReadsLikeQemu(dir.path, path);
    await using node = await openQcow2(path, {}, true);
    const st = await node.blockStatus(3 * 1024 * 1024, 4096);
    assert.deepEqual(st.hostOffset, 3 * 1024 * 1024);
  },
});

Deno.test({
  name: "qcow2 is probed by open() from its magic",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/p.qcow2`;
    await qemuCreate(path, "1M");
    await using node = await open(path, { readOnly: true });
    assert.deepEqual(node.driver.name, "qcow2");
    assert.deepEqual(node.length, 1 << 20);
  },
});

for (const o of ["cluster_size=4k,refcount_bits=64,compression_type=zstd", "compat=0.10", "lazy_refcounts=on,extended_l2=on"]) {
  Deno.test({
    name: `qcow2 info() reports the same format-specific data as qemu-img info (${o})`,
    ignore,
    async fn() {
      await using dir = await tempDir();
      const path = `${dir.path}/i.qcow2`;
      await qemuCreate(path, "1M", o);
      const qemu = JSON.parse((await runOk("qemu-img", ["info", "--output=json", path])).stdout);
      await using node = await openQcow2(path, {}, true);
      const info = await node.info();
      assert.deepEqual(info["format-specific"], qemu["format-specific"]);
      assert.equal(info["cluster-size"], qemu["cluster-size"]);
      assert.equal(info["virtual-size"], qemu["virtual-size"]);
    },
  });
}

Deno.test({
  name: "qcow2 open() rejects an unknown option by name",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/u.qcow2`;
    await qemuCreate(path, "1M");
    await assert.rejects(
      () => openQcow2(path, { "l2-cache-sise": "1M" }, true),
      (e) => e instanceof BlockError && e.code === "EINVAL" && e.message.includes("l2-cache-sise"),
    );
  },
});

async function setHeaderWord(path: string, at: number, value: bigint): Promise<void> {
  const f = await Deno.open(path, { read: true, write: true });
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, value);
  await f.seek(at, Deno.SeekMode.Start);
  await f.write(b);
  f.close();
}

Deno.test({
  name: "qcow2 open() refuses a corrupt image read-write but reads it read-only",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/c.qcow2`;
    await qemuCreate(path, "1M");
    await setHeaderWord(path, 72, 2n);
    await assert.rejects(() => openQcow2(path), (e) => e instanceof BlockError && e.code === "EACCES" && e.message.includes("corrupt"));
    await using node = await openQcow2(path, {}, true);
    assert.deepEqual(node.length, 1 << 20);
  },
});

Deno.test({
  name: "qcow2 open() refuses an unknown incompatible feature bit with ENOTSUP naming it",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/f.qcow2`;
    await qemuCreate(path, "1M");
    await setHeaderWord(path, 72, 1n << 40n);
    await assert.rejects(
      () => openQcow2(path, {}, true),
      (e) =>
        e instanceof BlockError && e.code === "ENOTSUP" &&
        e.message === "Unsupported qcow2 feature(s): Unknown incompatible feature: 10000000000",
    );
  },
});

Deno.test({
  name: "qcow2 pread() reports an L2 table offset past the end of the file as a corrupt image",
  ignore,
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/x.qcow2`;
    await qemuCreate(path, "1M");
    await setHeaderWord(path, 0x30000, 0x8000000010000000n); // L1[0] of a fresh 64 KiB-cluster image
    await using node = await openQcow2(path, {}, true);
    await assert.rejects(
      () => node.pread(0, new Uint8Array(512)),
      (e) => e instanceof CorruptImageError && e.message.includes("L2 table offset"),
    );
  },
});
