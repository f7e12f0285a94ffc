/**
 * `convert -c` packs compressed clusters back to back across host cluster
 * boundaries as qemu-img does (issue 9.10), compresses on workers and
 * commits in guest order (issue 11): the output is compared with qemu-img
 * convert -c's on the same input, in the same run, down to the byte.
 */

import assert from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";
import { compressCluster } from "../../drivers/qcow2/compress.ts";

const ignore = skipUnless("qemu-img");

/** Clusters of mixed entropy (0 to 90 % random bytes), so compressed sizes vary and rarely divide a cluster. */
function mixedData(size: number, cs: number): Uint8Array {
  const buf = new Uint8Array(size);
  let x = 12345;
  const rnd = () => (x = (x * 1103515245 + 12345) >>> 0) >>> 8;
  for (let i = 0; i < size; i++) {
    const p = Math.floor(i / cs) % 10;
    buf[i] = rnd() % 10 < p ? rnd() & 0xff : 0x41 + ((i >> 5) & 7);
  }
  return buf;
}

for (const type of ["zlib", "zstd"]) {
  Deno.test({
    name: `convert -c (${type}) output is within 1 % of qemu-img convert -c's size, reads back identically and checks clean`,
    ignore,
    async fn() {
      await using d = await tempDir();
      const src = `${d.path}/in.raw`;
      await Deno.writeFile(src, mixedData(4 << 20, 65536));
      const q = `${d.path}/q.qcow2`;
      const o = `${d.path}/o.qcow2`;
      await runOk("qemu-img", ["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", `compression_type=${type}`, src, q]);
      const r = await cli(["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", `compression_type=${type}`, src, o]);
      assert.equal(r.code, 0, r.stderr);
      const qs = (await Deno.stat(q)).size;
      const os = (await Deno.stat(o)).size;
      assert.ok(Math.abs(os - qs) <= qs / 100, `blkgraph ${os} bytes, qemu-img ${qs} bytes`);
      assert.equal((await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", src, o])).stdout, "Images are identical.\n");
      const check = JSON.parse((await run("qemu-img", ["check", "--output=json", o])).stdout);
      assert.deepEqual([check["check-errors"] ?? 0, check.leaks ?? 0, check["compressed-clusters"]], [0, 0, 64]);
    },
  });
}

Deno.test({
  name: "convert -c (zlib) writes the deflate streams qemu-img writes, byte for byte",
  ignore,
  async fn() {
    await using d = await tempDir();
    const data = mixedData(20 * 4096, 4096);
    let same = 0; // clusters both compress
    for (let c = 0; c < 20; c++) {
      const cluster = data.subarray(c * 4096, (c + 1) * 4096);
      const ours = compressCluster(cluster, 0);
      await Deno.writeFile(`${d.path}/c.raw`, cluster);
      await runOk("qemu-img", [
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4k",
        `${d.path}/c.raw`,
        `${d.path}/c.qcow2`,
      ]);
      const img = await Deno.readFile(`${d.path}/c.qcow2`);
      // A one-cluster image: the compressed stream (if any) is the last thing in the file.
      if (ours === undefined) {
        const check = JSON.parse((await run("qemu-img", ["check", "--output=json", `${d.path}/c.qcow2`])).stdout);
        assert.equal(check["compressed-clusters"] ?? 0, 0, `cluster ${c}: qemu-img compressed what we store plain`);
        continue;
      }
      if (indexOf(img, ours) >= 0) same++;
      else assert.fail(`cluster ${c}: our ${ours.length} compressed bytes are not in qemu-img's image`);
    }
    assert.ok(same > 0);
  },
});

function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

for (const type of ["zlib", "zstd"]) {
  Deno.test({
    name:
      `convert -c (${type}) makes qemu-img convert -c's file byte for byte: zero clusters skipped, clusters partly holes and a short last one written whole`,
    ignore,
    async fn() {
      await using d = await tempDir();
      const src = `${d.path}/in.raw`;
      const cs = 65536;
      // 40 clusters less 1000 bytes (the image is 512-aligned, its last cluster short); clusters 3-4 zeros; a hole of 1.5 clusters from 10.
      await Deno.writeFile(src, mixedData(40 * cs - 1000, cs).fill(0, 3 * cs, 5 * cs));
      const f = await Deno.open(src, { write: true });
      try {
        await f.seek(10 * cs, Deno.SeekMode.Start);
        await f.write(mixedData(cs / 2, cs).fill(0));
      } finally {
        f.close();
      }
      await runOk("fallocate", ["--punch-hole", "-o", String(10 * cs), "-l", String(1.5 * cs), src]);
      const q = `${d.path}/q.qcow2`;
      const o = `${d.path}/o.qcow2`;
      await runOk("qemu-img", ["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", `compression_type=${type}`, src, q]);
      const r = await cli(["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", `compression_type=${type}`, src, o]);
      assert.equal(r.code, 0, r.stderr);
      const [ours, theirs] = [await Deno.readFile(o), await Deno.readFile(q)];
      assert.equal(ours.length, theirs.length, "file sizes");
      assert.equal(ours.findIndex((b, i) => b !== theirs[i]), -1, "first byte that differs");
      assert.equal((await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", src, o])).stdout, "Images are identical.\n");
      assert.equal((await run("qemu-img", ["check", o])).code, 0);
    },
  });
}

Deno.test({
  name: "convert -c of sources whose sizes are not cluster multiples reads them as one stream: a cluster across two is written whole",
  ignore,
  async fn() {
    await using d = await tempDir();
    for (const i of [1, 2]) {
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=1024", `${d.path}/t${i}.qcow2`, "1023k"]);
    }
    await runOk("qemu-io", [
      "-c",
      "write -P 0x11 16k 16k",
      "-c",
      "write -P 0x22 130k 130k",
      "-c",
      "write -P 0x33 1022k 1k",
      `${d.path}/t1.qcow2`,
    ]);
    await runOk("qemu-io", ["-c", "write -P 0x44 0 1k", `${d.path}/t2.qcow2`]);
    const srcs = [`${d.path}/t1.qcow2`, `${d.path}/t2.qcow2`];
    await runOk("qemu-img", ["convert", "-c", "-O", "qcow2", ...srcs, `${d.path}/q.qcow2`]);
    // The 64 KiB cluster at 960 KiB holds t1's last 63 KiB and t2's first KiB.
    const r = await cli(["convert", "-c", "-O", "qcow2", ...srcs, `${d.path}/o.qcow2`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await run("qemu-img", ["compare", `${d.path}/q.qcow2`, `${d.path}/o.qcow2`])).code, 0);
    const map = async (f: string) =>
      JSON.parse((await runOk("qemu-img", ["map", "--output=json", f])).stdout).map((e: Record<string, unknown>) => ({ ...e, offset: 0 }));
    assert.deepEqual(await map(`${d.path}/o.qcow2`), await map(`${d.path}/q.qcow2`));
  },
});

Deno.test({
  name: "convert -c -S 0 writes every cluster compressed, zero ones too, as qemu-img does (no uncompressed zero data)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const src = `${d.path}/t.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", src, "4M"]);
    await runOk("qemu-io", ["-c", "write -P 0x22 0 1M", "-c", "write -P 0 1M 1M", src]);
    await runOk("qemu-img", ["convert", "-c", "-S", "0", "-O", "qcow2", src, `${d.path}/q.qcow2`]);
    const r = await cli(["convert", "-c", "-S", "0", "-O", "qcow2", src, `${d.path}/o.qcow2`]);
    assert.equal(r.code, 0, r.stderr);
    const map = async (f: string) => JSON.parse((await runOk("qemu-img", ["map", "--output=json", f])).stdout);
    const ours = await map(`${d.path}/o.qcow2`);
    assert.deepEqual(ours, await map(`${d.path}/q.qcow2`));
    assert.deepEqual(ours.map((e: Record<string, unknown>) => [e.length, e.data, e.offset]), [[4 << 20, true, undefined]]);
    const check = JSON.parse((await run("qemu-img", ["check", "--output=json", `${d.path}/o.qcow2`])).stdout);
    assert.equal(check["compressed-clusters"], 64);
    assert.equal((await run("qemu-img", ["compare", src, `${d.path}/o.qcow2`])).code, 0);
  },
});
