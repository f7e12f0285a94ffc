/**
 * Subcluster bookkeeping of extended-L2 qcow2 images against real qemu-img
 * and qemu-io (iotest 271's cases and their neighbours): the same steps on a
 * copy of one image, then the files must agree cluster by cluster (L2
 * bitmaps included) and the data must read back with both.
 */
import assert from "node:assert/strict";
import { qemuIo as cliQemuIo } from "../../../cli/qemu-io.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { fileLayoutDiff } from "./_layout.ts";
import { openQcow2, qemuCreate, qemuIo } from "./_util.ts";
import { open } from "../../../core/open.ts";
import { QEMU_SECRETS, qemuImgKeyslots, testSecrets } from "../luks/_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");
const K = 1024;

/** `a` made with qemu-img and written by qemu-io, `b` a copy of it. */
async function pair(dir: string, size: string, opts: string, writes: string[]): Promise<{ a: string; b: string }> {
  const a = `${dir}/a.qcow2`;
  const b = `${dir}/b.qcow2`;
  await qemuCreate(a, size, opts);
  if (writes.length) await qemuIo(a, ...writes);
  await Deno.copyFile(a, b);
  return { a, b };
}

/** Asserts that our node reads `byte` over [offset, offset+length), and so does real qemu-io. */
async function assertReads(path: string, offset: number, length: number, byte: number): Promise<void> {
  {
    await using n = await openQcow2(path, {}, true);
    const buf = new Uint8Array(length);
    await n.pread(offset, buf);
    assert.equal(buf.findIndex((x) => x !== byte), -1, `blkgraph reads ${byte} over [${offset}, ${offset + length})`);
  }
  const r = await run("qemu-io", ["-c", `read -q -P ${byte} ${offset} ${length}`, path]);
  assert.equal(r.stdout + r.stderr, "", `qemu-io reads ${byte} over [${offset}, ${offset + length})`);
}

for (const mode of ["metadata", "falloc", "full"] as const) {
  for (const snap of [false, true]) {
    Deno.test({
      name: `truncate() with preallocation=${mode} keeps the data of the last partial cluster of an extended-L2 image${
        snap ? " shared with a snapshot" : ""
      }, as qemu-img resize does`,
      ignore,
      async fn() {
        await using d = await tempDir();
        // 503k ends inside subcluster 27 of cluster 7: the data of that cluster is copied or kept, its bitmap too.
        const { a, b } = await pair(d.path, "503k", "extended_l2=on", ["write -q -P 0xff 0 503k"]);
        if (snap) {
          for (const p of [a, b]) await runOk("qemu-img", ["snapshot", "-c", "s1", p]);
        }
        await runOk("qemu-img", ["resize", "-q", `--preallocation=${mode}`, a, "1013k"]);
        {
          await using n = await openQcow2(b);
          await n.truncate(1013 * K, { prealloc: mode });
        }
        assert.deepEqual(await fileLayoutDiff(b, a), []);
        await assertReads(b, 0, 503 * K, 0xff);
        await assertReads(b, 503 * K, 510 * K, 0);
      },
    });
  }
}

Deno.test({
  name:
    "truncate() with preallocation=metadata zeroes the rest of the old end's subcluster in a reused host cluster (QEMU shows its old bytes)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { b } = await pair(d.path, "503k", "extended_l2=on", ["write -q -P 0xff 0 503k"]);
    // Cluster 7 shared with a snapshot is copied to the first free cluster; stale bytes fill the file's free tail.
    await runOk("qemu-img", ["snapshot", "-c", "s1", b]);
    {
      using f = await Deno.open(b, { append: true });
      const n = (await f.stat()).size;
      await f.write(new Uint8Array(0x140000 - n).fill(0xee));
    }
    {
      await using n = await openQcow2(b);
      await n.truncate(1013 * K, { prealloc: "metadata" });
    }
    // Subcluster 27 of cluster 7 ([502k, 504k)) holds data up to 503k: the rest reads as zeros, not as 0xee.
    await assertReads(b, 0, 503 * K, 0xff);
    await assertReads(b, 503 * K, 510 * K, 0);
  },
});

for (const backing of [false, true]) {
  Deno.test({
    name: `pdiscard() of an unallocated extended-L2 cluster ${
      backing ? "over a backing file sets all its zero bits" : "without a backing file leaves its zero bits as they are"
    }, as qemu-io discard does`,
    ignore,
    async fn() {
      await using d = await tempDir();
      const a = `${d.path}/a.qcow2`;
      const b = `${d.path}/b.qcow2`;
      if (backing) {
        await runOk("qemu-img", ["create", "-q", "-f", "raw", `${d.path}/base.raw`, "1M"]);
        await runOk("qemu-io", ["-f", "raw", "-c", "write -q -P 0xff 0 1M", `${d.path}/base.raw`]);
      }
      await runOk("qemu-img", [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        ...(backing ? ["-F", "raw", "-b", `${d.path}/base.raw`] : []),
        a,
        "1M",
      ]);
      // Cluster 0 unallocated with the zero bits of subclusters 0-15 (iotest 271's poke of the bitmap).
      await qemuIo(a, "write -q 0 128k", "discard -q 0 128k");
      {
        using f = await Deno.open(a, { write: true });
        await f.seek(0x40008, Deno.SeekMode.Start);
        await f.write(new Uint8Array(2));
      }
      await Deno.copyFile(a, b);
      await qemuIo(a, "discard -q 0 64k");
      {
        await using n = await openQcow2(b);
        await n.pdiscard(0, 64 * K);
      }
      assert.deepEqual(await fileLayoutDiff(b, a), []);
    },
  });
}

/** A qemu-io command line done on our node: `write [-z] [-P N] OFFSET LENGTH` (sizes in k). */
async function ourIo(path: string, cmds: string[]): Promise<void> {
  await using n = await openQcow2(path);
  for (const cmd of cmds) {
    const m = /^write -q (?:-z|-P (\d+)) (\d+)k (\d+)k$/.exec(cmd);
    if (!m) throw new Error(`ourIo: ${cmd}`);
    const [off, len] = [Number(m[2]) * K, Number(m[3]) * K];
    if (m[1] === undefined) await n.pwriteZeroes(off, len);
    else await n.pwrite(off, new Uint8Array(len).fill(Number(m[1])));
  }
}

Deno.test({
  name:
    "pwrite() and pwriteZeroes() on extended-L2 clusters shared with a snapshot copy and mark only the subclusters QEMU does (iotest 271)",
  ignore,
  async fn() {
    await using d = await tempDir();
    // Each of clusters 0-9: subcluster 7 zero, 13 and 18 allocated; then a snapshot shares them.
    const setup: string[] = [];
    for (let c = 0; c < 10; c++) {
      setup.push(
        `write -q -z ${64 * c + 14}k 2k`,
        `write -q -P ${0xd0 + c} ${64 * c + 26}k 2k`,
        `write -q -P ${0xe0 + c} ${64 * c + 36}k 2k`,
      );
    }
    const { a, b } = await pair(d.path, "1M", "extended_l2=on", setup);
    for (const p of [a, b]) await runOk("qemu-img", ["snapshot", "-c", "snap1", p]);
    const cmds = [
      "write -q -P 240 30k 1k",
      "write -q -P 241 84k 1k",
      "write -q -P 242 168k 1k",
      "write -q -P 243 218k 1k",
      "write -q -P 244 270k 1k",
      "write -q -P 245 321k 1k",
      "write -q -z 414k 3k",
      "write -q -z 474k 2k",
      "write -q -z 538k 1k",
      "write -q -z 588k 1k",
    ];
    await qemuIo(a, ...cmds);
    await ourIo(b, cmds);
    assert.deepEqual(await fileLayoutDiff(b, a), []);
    assert.equal((await run("qemu-img", ["compare", a, b])).code, 0);
  },
});

Deno.test({
  name: "pwrite() across shared and compressed extended-L2 clusters over a backing file copies the subclusters QEMU copies",
  ignore,
  async fn() {
    await using d = await tempDir();
    const a = `${d.path}/a.qcow2`;
    const b = `${d.path}/b.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", `${d.path}/base.raw`, "1M"]);
    await runOk("qemu-io", ["-f", "raw", "-c", "write -q -P 0x77 0 1M", `${d.path}/base.raw`]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-F", "raw", "-b", `${d.path}/base.raw`, a, "1M"]);
    await qemuIo(
      a,
      "write -q -P 1 10k 4k",
      "write -q -P 2 100k 6k",
      "write -q -c -P 3 192k 64k",
      "write -q -z 80k 2k",
      "write -q -P 4 300k 2k",
    );
    await runOk("qemu-img", ["snapshot", "-c", "s", a]);
    await Deno.copyFile(a, b);
    const cmds = ["write -q -P 9 20k 65k", "write -q -P 8 200k 3k", "write -q -P 7 255k 50k"];
    await qemuIo(a, ...cmds);
    await ourIo(b, cmds);
    assert.deepEqual(await fileLayoutDiff(b, a), []);
    assert.equal((await run("qemu-img", ["compare", a, b])).code, 0);
  },
});

for (
  const [what, opts, writes, cmd] of [
    ["an unallocated subcluster of an extended-L2 cluster", "extended_l2=on", ["write -q -P 1 4k 2k"], "read -q 0 2k"],
    ["an allocated subcluster of an extended-L2 cluster", "extended_l2=on", ["write -q -P 1 4k 2k"], "read -q 4k 2k"],
    ["a preallocated zero cluster", "", ["write -q 0 64k", "write -q -z 0 64k"], "read -q 0 2k"],
  ] as const
) {
  Deno.test({
    name: `reading ${what} at an unaligned host offset marks the image corrupt in qemu-io's words`,
    ignore,
    async fn() {
      await using d = await tempDir();
      const { a, b } = await pair(d.path, "1M", opts, [...writes]);
      // iotest 271's poke: the entry of cluster 0 points at 0x50200.
      for (const p of [a, b]) {
        using f = await Deno.open(p, { write: true });
        await f.seek(0x40006, Deno.SeekMode.Start);
        await f.write(new Uint8Array([2]));
      }
      const real = await run("qemu-io", ["-c", cmd, a]);
      let out = "";
      let err = "";
      const code = await cliQemuIo(["-c", cmd, b], { stdout: (s) => void (out += s), stderr: (s) => void (err += s) });
      assert.deepEqual([code, out, err], [real.code, real.stdout, real.stderr]);
    },
  });
}

for (const opts of ["extended_l2=on", ""]) {
  Deno.test({
    name: `a write that replaces a compressed cluster frees its host cluster for the next allocation at once, as qemu-io does (${
      opts || "standard L2"
    })`,
    ignore,
    async fn() {
      await using d = await tempDir();
      const { a, b } = await pair(d.path, "1M", opts, []);
      // The compressed cluster's host cluster is freed by the second write; QEMU gives it to the third.
      await qemuIo(a, "write -q -c -P 1 0 64k", "write -q -P 2 0 1k", "write -q -P 3 128k 64k");
      {
        await using n = await openQcow2(b);
        await n.pwrite(0, new Uint8Array(64 * K).fill(1), { compressed: true });
        await n.pwrite(0, new Uint8Array(K).fill(2));
        await n.pwrite(128 * K, new Uint8Array(64 * K).fill(3));
      }
      assert.deepEqual(await fileLayoutDiff(b, a), []);
    },
  });
}

/** qemu-io on an encrypted qcow2 image (secret `sec0`): its output, which must be empty with -q. */
async function qemuIoEnc(path: string, ...cmds: string[]): Promise<string> {
  const r = await run("qemu-io", [
    ...QEMU_SECRETS,
    "--image-opts",
    `driver=qcow2,encrypt.key-secret=sec0,file.filename=${path}`,
    ...cmds.flatMap((c) => ["-c", c]),
  ]);
  return r.stdout + r.stderr;
}

Deno.test({
  name:
    "on an encrypted extended-L2 image the copied part of a COW'd shared cluster and of a preallocated cluster is encrypted, as QEMU reads it",
  ignore,
  async fn() {
    await using d = await tempDir();
    const p = `${d.path}/e.qcow2`;
    const spec = `driver=qcow2,encrypt.key-secret=sec0,file.filename=${p}`;
    const o = "encrypt.format=luks,encrypt.iter-time=10,encrypt.key-secret=sec0,extended_l2=on";
    const r = await qemuImgKeyslots(["create", "-q", "-f", "qcow2", ...QEMU_SECRETS, "-o", o, p, "503k"]);
    assert.equal(r.code, 0, r.stderr);
    // Cluster 3 holds data from subcluster 17 (226k) on; cluster 7 up to the old end (503k).
    assert.equal(await qemuIoEnc(p, "write -q -P 0xff 0 100k", "write -q -P 0xff 226k 277k"), "");
    await runOk("qemu-img", ["snapshot", ...QEMU_SECRETS, "--image-opts", "-c", "s1", spec]);
    testSecrets();
    {
      await using n = await open({ driver: "qcow2", "encrypt.key-secret": "sec0", file: { driver: "file", filename: p } });
      // Cluster 3 is copied from subcluster 17 on (not from its start); cluster 7 with its head.
      await n.pwrite(240 * K, new Uint8Array(K).fill(0x11));
      await n.truncate(1013 * K, { prealloc: "falloc" });
    }
    assert.equal(
      await qemuIoEnc(
        p,
        "read -q -P 0xff 0 100k",
        "read -q -P 0 100k 126k",
        "read -q -P 0xff 226k 14k",
        "read -q -P 0x11 240k 1k",
        "read -q -P 0xff 241k 262k",
        "read -q -P 0 503k 510k",
      ),
      "",
    );
  },
});
