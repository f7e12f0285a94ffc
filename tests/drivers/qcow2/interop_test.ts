/**
 * qcow2 interoperability with QEMU: qemu-io reads what we write, QEMU and
 * blkgraph take turns writing one image, and block status agrees with
 * `qemu-img map`.
 */

import assert from "node:assert/strict";
import { runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { assertClean, assertSameAsRaw, Mirror, openQcow2, qemuCreate, qemuIo, qemuOverlay } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");
const KiB = 1024;

for (const o of ["cluster_size=512", "cluster_size=64k,refcount_bits=64", "compat=0.10,cluster_size=4k", "extended_l2=on"]) {
  Deno.test({
    name: `qcow2 qemu-io reads back the patterns blkgraph wrote (${o})`,
    async fn() {
      await using dir = await tempDir();
      const path = `${dir.path}/a.qcow2`;
      await qemuCreate(path, "4M", o);
      const writes: [number, number, number][] = [[0, 100 * KiB, 0x11], [300 * KiB + 7, 5000, 0x22], [2 * 1024 * KiB - 700, 1400, 0x33]];
      {
        await using node = await openQcow2(path);
        for (const [off, len, p] of writes) await node.pwrite(off, new Uint8Array(len).fill(p));
      }
      await assertClean(path);
      const out = await qemuIo(path, ...writes.map(([off, len, p]) => `read -P ${p} ${off} ${len}`), `read -P 0 ${3 * 1024 * KiB} 64k`);
      assert.equal(out.includes("Pattern verification failed"), false, out);
    },
  });
}

Deno.test({
  name: "qcow2 blkgraph and qemu-io take turns writing one image",
  ignore, // needs qemu-io to write
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/t.qcow2`;
    const size = 4 * 1024 * KiB;
    await qemuCreate(path, size, "cluster_size=4k");
    const mirror = new Mirror(new Uint8Array(size));
    for (let round = 0; round < 3; round++) {
      {
        await using node = await openQcow2(path);
        const off = round * 300 * KiB + 1234;
        const d = new Uint8Array(200 * KiB).fill(0x40 + round);
        await node.pwrite(off, d);
        mirror.write(off, d);
        await node.pwriteZeroes(off + 8 * KiB, 16 * KiB);
        mirror.set(off + 8 * KiB, 0, 16 * KiB);
      }
      const qoff = round * 300 * KiB + 100 * KiB;
      await qemuIo(path, `write -P ${0x60 + round} ${qoff} 150k`, `discard ${qoff + 64 * KiB} 32k`);
      mirror.set(qoff, 0x60 + round, 150 * KiB);
      mirror.set(qoff + 64 * KiB, 0, 32 * KiB);
    }
    await Deno.writeFile(`${dir.path}/expect.raw`, mirror.data);
    await assertClean(path);
    await assertSameAsRaw(path, `${dir.path}/expect.raw`);
  },
});

Deno.test({
  name: "qcow2 blockStatus() agrees with qemu-img map on data and zero ranges",
  ignore, // needs qemu-io to write
  async fn() {
    await using dir = await tempDir();
    const { top } = await qemuOverlay(dir.path, "2M", ["write -P 1 0 512k", "write -z 1M 128k"]);
    await qemuIo(top, "write -P 2 256k 128k", "write -z 448k 64k", "discard 0 64k");
    const map = JSON.parse((await runOk("qemu-img", ["map", "--output=json", top])).stdout) as {
      start: number;
      length: number;
      data: boolean;
      zero: boolean;
    }[];
    const cs = 64 * KiB;
    const expect: string[] = [];
    for (const e of map) for (let o = e.start; o < e.start + e.length; o += cs) expect.push(`${o}:${e.data}:${e.zero}`);
    const got: string[] = [];
    await using node = await openQcow2(top, {}, true);
    for (let o = 0; o < node.length;) {
      const st = await node.blockStatus(o, node.length - o);
      for (let c = o; c < o + st.length; c += cs) got.push(`${c}:${st.data}:${st.zero}`);
      o += st.length;
    }
    assert.deepEqual(got, expect);
  },
});
