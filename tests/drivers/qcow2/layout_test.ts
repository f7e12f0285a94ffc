/**
 * Where the qcow2 driver puts clusters on clean images, against qemu-io
 * doing the same writes (iotests 044 and 313 are about this): the
 * refcount table grows into a refcount area after the blocks in use, the
 * search cursor skips holes too small for a request as QEMU's does, and a
 * write keeps its new clusters next to the previous ones of the same
 * request while they are free there.
 */
import assert from "node:assert/strict";
import { runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { fileLayoutDiff } from "./_layout.ts";
import { openQcow2, qemuCreate, qemuIo } from "./_util.ts";
import { cli } from "../../cli/_run.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

/** Runs qemu-io command sets on `a` and the same writes/discards through our node on `b` (one open per set). */
async function sameWrites(dir: string, opts: string, size: string, sets: string[][]): Promise<string[]> {
  const a = `${dir}/a.qcow2`;
  const b = `${dir}/b.qcow2`;
  await qemuCreate(a, size, opts);
  await qemuCreate(b, size, opts);
  for (const set of sets) {
    await qemuIo(a, ...set);
    await using n = await openQcow2(b);
    for (const c of set) {
      const m = /^(write|discard) (?:-P (\d+) )?(\S+) (\S+)$/.exec(c)!;
      const [off, len] = [m[3], m[4]].map((x) => Number(x.replace(/k$/, "")) * (x.endsWith("k") ? 1024 : x.endsWith("M") ? 1 << 20 : 1));
      if (m[1] === "discard") await n.pdiscard(off, len);
      else await n.pwrite(off, new Uint8Array(len).fill(Number(m[2] ?? 0xcd)));
    }
  }
  return await fileLayoutDiff(b, a);
}

Deno.test({
  name: "a growing image gets its new refcount table where qemu-io puts it (refcount area after the blocks in use)",
  ignore,
  async fn() {
    await using d = await tempDir();
    // 512-byte clusters with 64-bit refcounts: the one-cluster table covers 2 MiB of file.
    const diff = await sameWrites(d.path, "cluster_size=512,refcount_bits=64", "64M", [["write -P 1 0 4096k"], ["write -P 2 8192k 3072k"]]);
    assert.deepEqual(diff, []);
  },
});

Deno.test({
  name: "a write keeps its clusters contiguous with the request's previous ones when they are free, as QEMU's alloc_at",
  ignore,
  async fn() {
    await using d = await tempDir();
    // A freed cluster (a hole the search cursor starts at) versus room right after the cluster written in place.
    const diff = await sameWrites(d.path, "", "4M", [["write -P 1 1024k 64k"], ["write -P 2 0 64k"], ["discard 1024k 64k"], [
      "write -P 3 0 128k",
    ]]);
    assert.deepEqual(diff, []);
  },
});

Deno.test({
  name: "commit unmaps the clusters that read as zeros, as qemu-img commit does (iotest 313)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const o = "cluster_size=4096,refcount_bits=64";
    const size = ((4096 * 8) / 64 - 2) * 4 * 4096 + 4096 - 3 * 4096;
    const dirs = [`${d.path}/q`, `${d.path}/o`];
    for (const dir of dirs) {
      await Deno.mkdir(dir);
      await qemuCreate(`${dir}/base.qcow2`, size, o);
      await qemuIo(`${dir}/base.qcow2`, `write -P 1 0 ${size}`);
      await qemuCreate(`${dir}/top.qcow2`, size, o, `${dir}/base.qcow2`);
      await qemuIo(`${dir}/top.qcow2`, `write -z 0 ${size}`);
    }
    await runOk("qemu-img", ["commit", "-q", `${dirs[0]}/top.qcow2`]);
    assert.equal((await cli(["commit", "-q", `${dirs[1]}/top.qcow2`])).code, 0);
    assert.deepEqual(await fileLayoutDiff(`${dirs[1]}/base.qcow2`, `${dirs[0]}/base.qcow2`), []);
  },
});

Deno.test({
  name: "compressed writes start a new host cluster when the shared one's refcount is at its maximum (refcount_bits=1), as qemu-io",
  ignore,
  async fn() {
    await using d = await tempDir();
    const a = `${d.path}/a.qcow2`;
    const b = `${d.path}/b.qcow2`;
    await qemuCreate(a, "64M", "refcount_bits=1");
    await qemuCreate(b, "64M", "refcount_bits=1");
    await qemuIo(a, "write -P 0 -c 0 64k", "write -P 1 -c 64k 64k");
    {
      await using n = await openQcow2(b);
      await n.pwrite(0, new Uint8Array(65536), { compressed: true });
      await n.pwrite(65536, new Uint8Array(65536).fill(1), { compressed: true });
    }
    assert.deepEqual(await fileLayoutDiff(b, a), []);
  },
});

Deno.test({
  name: "clusters a discard frees are reused by the next write of the same session, where qemu-io puts it (iotest 250)",
  ignore,
  async fn() {
    await using d = await tempDir();
    // One open: the freed clusters at the start must take the later write, not the end of the file.
    const diff = await sameWrites(d.path, "", "4M", [["write -P 1 0 1024k"], ["discard 0 512k", "write -P 2 2048k 512k"]]);
    assert.deepEqual(diff, []);
  },
});

Deno.test({
  name: "clusters an unmapping write-zeroes frees are reused by the next write of the same session, as qemu-io's",
  ignore,
  async fn() {
    await using d = await tempDir();
    const a = `${d.path}/a.qcow2`;
    const b = `${d.path}/b.qcow2`;
    for (const f of [a, b]) await qemuCreate(f, "4M");
    await qemuIo(a, "write -P 1 0 1024k");
    await qemuIo(a, "write -z -u 0 512k", "write -P 2 2048k 512k");
    await qemuIo(b, "write -P 1 0 1024k");
    {
      await using n = await openQcow2(b);
      await n.pwriteZeroes(0, 512 << 10, { mayUnmap: true });
      await n.pwrite(2048 << 10, new Uint8Array(512 << 10).fill(2));
    }
    assert.deepEqual(await fileLayoutDiff(b, a), []);
  },
});
