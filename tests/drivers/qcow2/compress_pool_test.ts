/**
 * Compressed writes on a compression pool (`_compress_pool.ts`,
 * `_write_compressed.ts`): the pool is used, compresses up to its size at
 * once off the main thread, commits keep issue order when jobs finish out
 * of order, and a failing job is an EIO BlockError on the copy, not a hang.
 */

import assert from "node:assert/strict";
import { BlockError, copyImage, open } from "../../../mod.ts";
import type { Qcow2Instance } from "../../../drivers/qcow2/mod.ts";
import { type CompressCodec, CompressPool, setCompressCodec } from "../../../drivers/qcow2/_compress_pool.ts";
import { systemDeflate } from "../../../drivers/qcow2/_zlib_ffi.ts";
import { systemZstd } from "../../../drivers/qcow2/_zstd_ffi.ts";
import { compressCluster } from "../../../drivers/qcow2/compress.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { firstDiff, openQcow2, qemuCreate } from "./_util.ts";

const ignore = skipUnless("qemu-img");
const CS = 65536;

/** `n` clusters of mixed entropy (0 to 90 % random bytes), cluster 2 all zeros. */
function mixedData(n: number): Uint8Array {
  const buf = new Uint8Array(n * CS);
  let x = 99;
  const rnd = () => (x = (x * 1103515245 + 12345) >>> 0) >>> 8;
  for (let i = 0; i < buf.length; i++) {
    const p = Math.floor(i / CS) % 10;
    buf[i] = rnd() % 10 < p ? rnd() & 0xff : 0x61 + ((i >> 4) & 7);
  }
  buf.fill(0, 2 * CS, 3 * CS);
  return buf;
}

/** Copies `raw` (a file) compressed into a new qcow2 image `out` of `type` opened with `opts`; returns the pool's stats. */
async function convert(raw: string, out: string, type: string, opts: Record<string, unknown> = {}) {
  const size = (await Deno.stat(raw)).size;
  await qemuCreate(out, size, `compression_type=${type}`);
  await using src = await open({ driver: "file", filename: raw }, { readOnly: true });
  await using dst = await openQcow2(out, opts);
  await copyImage(src, dst, { compress: true });
  return (dst.instance as Qcow2Instance).compressPool?.stats;
}

Deno.test("CompressPool compresses clusters off the main thread, as many as asked, the bytes compressCluster makes", async () => {
  const pool = new CompressPool({ size: 2 });
  try {
    const data = mixedData(8);
    const jobs = [];
    for (let c = 0; c < 8; c++) jobs.push(pool.compress(data.slice(c * CS, (c + 1) * CS), c % 2));
    const outs = await Promise.all(jobs);
    for (let c = 0; c < 8; c++) assert.deepEqual(outs[c], compressCluster(data.subarray(c * CS, (c + 1) * CS), c % 2), `cluster ${c}`);
    assert.deepEqual(pool.stats, { threads: 8, mainThread: 0, started: 2 });
  } finally {
    pool.close();
  }
});

Deno.test("CompressPool of size 0 compresses on the main thread and says why", async () => {
  const pool = new CompressPool({ size: 0 });
  const out = await pool.compress(new Uint8Array(CS).fill(7), 0);
  assert.ok(out && out.length < 100);
  assert.deepEqual(pool.stats, { threads: 0, mainThread: 1, started: 0, fallback: "a pool of 0 threads" });
  pool.close();
});

Deno.test("CompressPool refuses a size out of range, naming it", () => {
  assert.throws(() => new CompressPool({ size: 65 }), /Invalid compression pool size 65/);
});

Deno.test({
  name: "qcow2 compressed writes of copyImage() run on the image's compression pool, one job per cluster written",
  ignore,
  async fn() {
    await using d = await tempDir();
    await Deno.writeFile(`${d.path}/in.raw`, mixedData(12));
    const stats = await convert(`${d.path}/in.raw`, `${d.path}/o.qcow2`, "zlib", { "compress-threads": 2 });
    // Cluster 2 is zeros: not written.
    assert.deepEqual(stats, { threads: 11, mainThread: 0, started: 2 });
    assert.equal((await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", `${d.path}/in.raw`, `${d.path}/o.qcow2`])).code, 0);
  },
});

/** A codec that holds its answers until it has four (or 20 ms passed) and gives them newest first. */
function reverseCodec(): CompressCodec {
  let held: { out: Uint8Array | null; resolve: (out: Uint8Array | null) => void }[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  const release = () => {
    clearTimeout(timer);
    timer = undefined;
    for (const h of held.reverse()) h.resolve(h.out);
    held = [];
  };
  return (_slot, data, type) =>
    new Promise((resolve) => {
      held.push({ out: (type === 1 ? systemZstd(data) : systemDeflate(data)) ?? null, resolve });
      if (held.length >= 4) release();
      else timer ??= setTimeout(release, 20);
    });
}

/** A codec that fails its third job: with zlib it rejects, with zstd it throws. Jobs before that stay uncompressed. */
function failingCodec(): CompressCodec {
  let jobs = 0;
  return (_slot, _data, type) => {
    if (++jobs !== 3) return Promise.resolve(null);
    if (type === 0) return Promise.reject(new Error("out of memory in deflate"));
    throw new Error("the codec threw");
  };
}

Deno.test("CompressPool runs at most its size of jobs at once, and every job", async () => {
  let running = 0;
  let most = 0;
  setCompressCodec(async () => {
    most = Math.max(most, ++running);
    await new Promise((r) => setTimeout(r, 2));
    running--;
    return null;
  });
  const pool = new CompressPool({ size: 3 });
  try {
    const outs = await Promise.all(Array.from({ length: 10 }, () => pool.compress(new Uint8Array(CS), 0)));
    assert.deepEqual([most, outs.length, pool.stats.threads, pool.stats.started], [3, 10, 10, 3]);
  } finally {
    setCompressCodec(undefined);
    pool.close();
  }
});

Deno.test("CompressPool's system codecs run off the main thread: the event loop turns while a cluster compresses", async () => {
  const pool = new CompressPool({ size: 1 });
  try {
    let turns = 0;
    const ticker = setInterval(() => turns++, 0);
    // Random data compresses slowly and not at all: 64 clusters, one at a time on one thread.
    const data = crypto.getRandomValues(new Uint8Array(CS));
    for (let i = 0; i < 64; i++) await pool.compress(data, 1);
    clearInterval(ticker);
    assert.equal(pool.stats.threads, 64);
    assert.ok(turns > 0, "a synchronous codec would never let the timer run between jobs");
  } finally {
    pool.close();
  }
});

for (const type of ["zlib", "zstd"]) {
  Deno.test({
    name: `qcow2 compressed writes (${type}) commit in issue order when jobs finish out of order: qemu-img's file, byte for byte`,
    ignore,
    async fn() {
      await using d = await tempDir();
      await Deno.writeFile(`${d.path}/in.raw`, mixedData(24));
      await runOk("qemu-img", [
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        `compression_type=${type}`,
        `${d.path}/in.raw`,
        `${d.path}/q.qcow2`,
      ]);
      setCompressCodec(reverseCodec());
      try {
        await convert(`${d.path}/in.raw`, `${d.path}/o.qcow2`, type, { "compress-threads": 4 });
      } finally {
        setCompressCodec(undefined);
      }
      const [ours, theirs] = [await Deno.readFile(`${d.path}/o.qcow2`), await Deno.readFile(`${d.path}/q.qcow2`)];
      assert.equal(firstDiff(ours, theirs), -1, `${ours.length} bytes against qemu-img's ${theirs.length}`);
    },
  });
}

for (const [type, why] of [["zlib", "out of memory in deflate"], ["zstd", "the codec threw"]]) {
  Deno.test({
    name: `a compression job that fails (${why}) makes copyImage() reject with EIO, and the image checks clean`,
    ignore,
    async fn() {
      await using d = await tempDir();
      await Deno.writeFile(`${d.path}/in.raw`, mixedData(12));
      setCompressCodec(failingCodec());
      try {
        await assert.rejects(
          () => convert(`${d.path}/in.raw`, `${d.path}/o.qcow2`, type, { "compress-threads": 2 }),
          (e) => e instanceof BlockError && e.code === "EIO" && e.message.includes(why),
        );
      } finally {
        setCompressCodec(undefined);
      }
      const check = JSON.parse((await run("qemu-img", ["check", "--output=json", `${d.path}/o.qcow2`])).stdout);
      assert.deepEqual([check["check-errors"] ?? 0, check.leaks ?? 0, check.corruptions ?? 0], [0, 0, 0]);
    },
  });
}

Deno.test({
  name: "qcow2 refuses compress-threads above 64, naming the option and value",
  ignore,
  async fn() {
    await using d = await tempDir();
    await qemuCreate(`${d.path}/o.qcow2`, "1M");
    await assert.rejects(
      () => openQcow2(`${d.path}/o.qcow2`, { "compress-threads": 65 }),
      (e) => e instanceof BlockError && e.code === "EINVAL" && e.message.includes("'compress-threads'") && e.message.includes("65"),
    );
  },
});

Deno.test("CompressPool takes its default size from BLKGRAPH_COMPRESS_THREADS, and refuses a bad value naming it", async () => {
  // In a child process: the environment is the whole process's, shared with the other test files --parallel runs beside this one.
  const sized = async (v: string | undefined) => {
    const code = `
      import { CompressPool } from ${JSON.stringify(new URL("../../../drivers/qcow2/_compress_pool.ts", import.meta.url).href)};
      try { console.log(String(new CompressPool().size)); } catch (e) { console.log(e.message); }
    `;
    // Only what Deno needs (its cache lives under HOME), so a BLKGRAPH_COMPRESS_THREADS of the caller's cannot leak in.
    const keep = Object.fromEntries(["HOME", "PATH", "DENO_DIR"].flatMap((k) => (Deno.env.get(k) ? [[k, Deno.env.get(k)!]] : [])));
    const env: Record<string, string> = v === undefined ? keep : { ...keep, BLKGRAPH_COMPRESS_THREADS: v };
    const out = await new Deno.Command(Deno.execPath(), { args: ["eval", code], env, clearEnv: true, stdout: "piped" })
      .output();
    return new TextDecoder().decode(out.stdout).trim();
  };
  assert.equal(await sized("2"), "2");
  assert.match(await sized("two"), /Invalid BLKGRAPH_COMPRESS_THREADS 'two'/);
  assert.equal(await sized(undefined), "4");
});
