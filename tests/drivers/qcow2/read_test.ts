/**
 * qcow2 read path against qemu-io as the oracle: images qemu writes, read
 * back byte for byte (compared with `qemu-img convert -O raw`), and block
 * status. Without QEMU installed, each test reads the fixture that
 * tests/testdata/make.sh made with the same commands, against the content
 * qemu-img converted from it then (_qemu_image.ts).
 */

import assert from "node:assert/strict";
import { BlockError, CorruptImageError, open } from "../../../mod.ts";
import { runOk, tempDir } from "../../_helpers/qemu.ts";
import { fixture, parsed } from "../../_helpers/fixtures.ts";
import { openQcow2, qemuCreate, qemuIo } from "./_util.ts";
import { assertReadsLikeQemu as assertNodeReadsLikeQemu, type QemuImage, qemuImage } from "./_qemu_image.ts";

/** Reads the whole image with our driver and compares it with qemu-img's raw conversion. */
async function assertReadsLikeQemu(img: QemuImage, opts: Record<string, unknown> = {}): Promise<void> {
  await using node = await openQcow2(img.path, opts, true);
  await assertNodeReadsLikeQemu(node, img);
}

/** An empty 1 MiB image (64 KiB clusters) as qemu-img create makes it. */
function empty1M(dir: string): Promise<QemuImage> {
  return qemuImage(dir, "w-1M.qcow2", (p) => qemuCreate(p, "1M"));
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
    async fn() {
      await using dir = await tempDir();
      const img = await qemuImage(dir.path, `cs${cs === 2 * 1024 * 1024 ? "2M" : cs}.qcow2`, async (path) => {
        await qemuCreate(path, cs === 2 * 1024 * 1024 ? "16M" : "4M", `cluster_size=${cs}`);
        await qemuIo(path, ...PATTERN_CMDS(cs));
      });
      await assertReadsLikeQemu(img);
    },
  });
}

for (const o of ["compat=0.10", "refcount_bits=1", "refcount_bits=64", "extended_l2=on", "lazy_refcounts=on"]) {
  Deno.test({
    name: `qcow2 pread() reads an image created with ${o}`,
    async fn() {
      await using dir = await tempDir();
      const img = await qemuImage(dir.path, `opt-${o.replace(/[=_.]/g, "-")}.qcow2`, async (path) => {
        await qemuCreate(path, "4M", o);
        await qemuIo(path, ...PATTERN_CMDS(65536), "write -P 0x44 70000 3000");
      });
      await assertReadsLikeQemu(img);
    },
  });
}

for (const type of ["zlib", "zstd"]) {
  Deno.test({
    name: `qcow2 pread() decompresses ${type} compressed clusters`,
    async fn() {
      await using dir = await tempDir();
      const img = await qemuImage(dir.path, `${type}.qcow2`, async (path) => {
        const src = `${dir.path}/src.qcow2`;
        await qemuCreate(src, "4M");
        await qemuIo(src, "write -P 0x41 0 1M", "write -P 0x42 3M 100k");
        await runOk("qemu-img", ["convert", "-c", "-O", "qcow2", "-o", `compression_type=${type},cluster_size=4k`, src, path]);
      });
      await assertReadsLikeQemu(img);
      await using node = await openQcow2(img.path, {}, true);
      const st = await node.blockStatus(0, 4096);
      assert.deepEqual(st.compressed, true);
    },
  });
}

Deno.test({
  name: "qcow2 zero clusters read as zeros over backing data and report zero, allocated",
  async fn() {
    await using dir = await tempDir();
    const img = await qemuImage(dir.path, "zero-top.qcow2", async (top) => {
      const base = `${dir.path}/base55.qcow2`;
      await qemuCreate(base, "4M");
      await qemuIo(base, "write -P 0x55 0 4M");
      await qemuCreate(top, "4M", "", base);
      await qemuIo(top, "write -z 64k 128k");
    });
    await assertReadsLikeQemu(img);
    await using node = await openQcow2(img.path, {}, true);
    const st = await node.blockStatus(65536, 1 << 20);
    assert.deepEqual([st.length, st.zero, st.data, st.allocated, st.depth], [131072, true, false, true, 0]);
  },
});

Deno.test({
  name: "qcow2 pread() reads discarded clusters as qemu does",
  async fn() {
    await using dir = await tempDir();
    const img = await qemuImage(dir.path, "discard-top.qcow2", async (top) => {
      const base = `${dir.path}/base66.qcow2`;
      await qemuCreate(base, "4M");
      await qemuIo(base, "write -P 0x66 0 4M");
      await qemuCreate(top, "4M", "", base);
      await qemuIo(top, "write -P 0x77 0 1M", "discard 64k 256k");
    });
    await assertReadsLikeQemu(img);
  },
});

Deno.test({
  name: "qcow2 pread() follows a backing chain of depth 3 and blockStatus() reports the depth",
  async fn() {
    await using dir = await tempDir();
    const p = (n: number) => `${dir.path}/chain${n}.qcow2`;
    const img = await qemuImage(dir.path, "chain3.qcow2", async () => {
      await qemuCreate(p(0), "4M");
      await qemuIo(p(0), "write -P 0x10 0 4M");
      await qemuCreate(p(1), "4M", "", p(0));
      await qemuIo(p(1), "write -P 0x11 1M 1M");
      await qemuCreate(p(2), "4M", "", p(1));
      await qemuIo(p(2), "write -P 0x12 1536k 64k");
      await qemuCreate(p(3), "4M", "", p(2));
      await qemuIo(p(3), "write -P 0x13 0 4k");
    });
    await assertReadsLikeQemu(img);
    await using node = await openQcow2(img.path, {}, true);
    assert.deepEqual((await node.blockStatus(0, 4096)).depth, 0);
    assert.deepEqual((await node.blockStatus(1536 * 1024, 4096)).depth, 1);
    assert.deepEqual((await node.blockStatus(1024 * 1024, 4096)).depth, 2);
    assert.deepEqual((await node.blockStatus(64 * 1024, 4096)).depth, 3);
  },
});

Deno.test({
  name: "qcow2 pread() reads zeros past the end of a shorter backing file",
  async fn() {
    await using dir = await tempDir();
    const img = await qemuImage(dir.path, "short-top.qcow2", async (top) => {
      const base = `${dir.path}/base21.qcow2`;
      await qemuCreate(base, "1M");
      await qemuIo(base, "write -P 0x21 0 1M");
      await qemuCreate(top, "4M", "", base);
    });
    await assertReadsLikeQemu(img);
  },
});

Deno.test({
  name: "qcow2 open() with backing: null ignores the backing file",
  async fn() {
    await using dir = await tempDir();
    const img = await qemuImage(dir.path, "short-top.qcow2", async (top) => {
      const base = `${dir.path}/base21.qcow2`;
      await qemuCreate(base, "1M");
      await qemuIo(base, "write -P 0x21 0 1M");
      await qemuCreate(top, "4M", "", base);
    });
    await using node = await openQcow2(img.path, { backing: null }, true);
    assert.deepEqual(node.backing, undefined);
    const buf = new Uint8Array(512);
    await node.pread(0, buf);
    assert.deepEqual(buf.every((b) => b === 0), true);
  },
});

Deno.test({
  name: "qcow2 pread() reads guest data from an external data file",
  async fn() {
    await using dir = await tempDir();
    const img = await qemuImage(dir.path, "datafile.qcow2", async (path) => {
      await qemuCreate(path, "4M", `data_file=${dir.path}/datafile.data,extended_l2=on`);
      await qemuIo(path, "write -P 0x31 0 100k", "write -P 0x32 3M 5000");
    });
    await assertReadsLikeQemu(img);
    await using node = await openQcow2(img.path, {}, true);
    const st = await node.blockStatus(3 * 1024 * 1024, 4096);
    assert.deepEqual(st.hostOffset, 3 * 1024 * 1024);
  },
});

Deno.test({
  name: "qcow2 is probed by open() from its magic",
  async fn() {
    await using dir = await tempDir();
    const { path } = await empty1M(dir.path);
    await using node = await open(path, { readOnly: true });
    assert.deepEqual(node.driver.name, "qcow2");
    assert.deepEqual(node.length, 1 << 20);
  },
});

for (
  const [o, name] of [
    ["cluster_size=4k,refcount_bits=64,compression_type=zstd", "info-zstd.qcow2"],
    ["compat=0.10", "info-v2.qcow2"],
    ["lazy_refcounts=on,extended_l2=on", "info-lazy-extl2.qcow2"],
  ]
) {
  Deno.test({
    name: `qcow2 info() reports the same format-specific data as qemu-img info (${o})`,
    async fn() {
      await using dir = await tempDir();
      const img = await qemuImage(dir.path, name, (path) => qemuCreate(path, "1M", o));
      const qemu = img.live
        ? JSON.parse((await runOk("qemu-img", ["info", "--output=json", img.path])).stdout)
        : parsed<Record<string, unknown>>(fixture(name).runs["info --output=json @IMG@"]);
      await using node = await openQcow2(img.path, {}, true);
      const info = await node.info();
      assert.deepEqual(info["format-specific"], qemu["format-specific"]);
      assert.equal(info["cluster-size"], qemu["cluster-size"]);
      assert.equal(info["virtual-size"], qemu["virtual-size"]);
    },
  });
}

Deno.test({
  name: "qcow2 open() rejects an unknown option by name",
  async fn() {
    await using dir = await tempDir();
    const { path } = await empty1M(dir.path);
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
  async fn() {
    await using dir = await tempDir();
    const { path } = await empty1M(dir.path);
    await setHeaderWord(path, 72, 2n);
    await assert.rejects(() => openQcow2(path), (e) => e instanceof BlockError && e.code === "EACCES" && e.message.includes("corrupt"));
    await using node = await openQcow2(path, {}, true);
    assert.deepEqual(node.length, 1 << 20);
  },
});

Deno.test({
  name: "qcow2 open() refuses an unknown incompatible feature bit with ENOTSUP naming it",
  async fn() {
    await using dir = await tempDir();
    const { path } = await empty1M(dir.path);
    await setHeaderWord(path, 72, 1n << 40n);
    await assert.rejects(
      () => openQcow2(path, {}, true),
      (e) => e instanceof BlockError && e.code === "ENOTSUP" && e.message.includes("bit 40"),
    );
  },
});

Deno.test({
  name: "qcow2 pread() reports an L2 table offset past the end of the file as a corrupt image",
  async fn() {
    await using dir = await tempDir();
    const { path } = await empty1M(dir.path);
    await setHeaderWord(path, 0x30000, 0x8000000010000000n); // L1[0] of a fresh 64 KiB-cluster image
    await using node = await openQcow2(path, {}, true);
    await assert.rejects(
      () => node.pread(0, new Uint8Array(512)),
      (e) => e instanceof CorruptImageError && e.message.includes("L2 table offset"),
    );
  },
});
