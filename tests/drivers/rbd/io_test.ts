import assert from "node:assert/strict";
import { type BlockError, type BlockNode, open } from "../../../mod.ts";
import type { RbdInstance } from "../../../drivers/rbd/_image.ts";
import { cephConf, imageName, rbdCreate, rbdExport, rbdFilename, rbdInfo, skipUnlessCeph } from "../../_helpers/ceph.ts";
import { pattern, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const MiB = 1 << 20;
const ignore = skipUnlessCeph();
const isCode = (code: string) => (e: BlockError) => e.code === code;

/** A fresh image of `size` on the test cluster, opened as a bare rbd node. */
async function fresh(
  size = "16M",
  extra = "",
  cache?: string,
  options: Record<string, unknown> = {},
): Promise<{ conf: string; image: string; node: BlockNode }> {
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, size);
  const node = await open({ driver: "rbd", filename: rbdFilename(conf, image, extra), ...options }, { cache });
  return { conf, image, node };
}

function rbdInstance(node: BlockNode): RbdInstance {
  return node.instance as RbdInstance;
}

Deno.test({ name: "rbd node writes patterns that rbd export reads back byte for byte", ignore }, async () => {
  await using dir = await tempDir();
  const { conf, image, node } = await fresh();
  try {
    assert.equal(node.driver.name, "rbd");
    assert.equal(node.length, 16 * MiB);
    await node.pwrite(0, pattern(4096, 0xa1));
    await node.pwrite(5 * MiB + 3, pattern(70000, 0xb2));
    await node.pwrite(16 * MiB - 512, pattern(512, 0xc3));
    await node.flush();
    const back = new Uint8Array(70000);
    await node.pread(5 * MiB + 3, back);
    assert.deepEqual(back, pattern(70000, 0xb2));
  } finally {
    await node.close();
  }
  const bytes = await rbdExport(conf, image, dir.path);
  const want = new Uint8Array(16 * MiB);
  want.fill(0xa1, 0, 4096);
  want.fill(0xb2, 5 * MiB + 3, 5 * MiB + 3 + 70000);
  want.fill(0xc3, 16 * MiB - 512);
  assert.ok(bytes.length === want.length && bytes.every((b, i) => b === want[i]), "rbd export differs from what was written");
});

Deno.test({ name: "rbd node reads what qemu-io wrote through QEMU's rbd driver", ignore: ignore || skipUnless("qemu-io") }, async () => {
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "8M");
  await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 1000 300000", "-c", "write -P 0x11 7M 64k", rbdFilename(conf, image)]);
  await using img = await open(rbdFilename(conf, image), { format: "raw" });
  const a = new Uint8Array(300002);
  await img.pread(999, a);
  assert.deepEqual([a[0], a[1], a[300000], a[300001]], [0, 0x5a, 0x5a, 0]);
  assert.ok(a.subarray(1, 300001).every((b) => b === 0x5a));
  const b = new Uint8Array(65536);
  await img.pread(7 * MiB, b);
  assert.ok(b.every((x) => x === 0x11));
});

Deno.test({ name: "qemu-io verifies a pattern the rbd node wrote", ignore: ignore || skipUnless("qemu-io") }, async () => {
  const { conf, image, node } = await fresh("8M");
  await node.pwrite(12345, pattern(100000, 0x77));
  await node.close();
  const r = await run("qemu-io", [
    "-f",
    "raw",
    "-r",
    "-c",
    "read -P 0x77 12345 100000",
    "-c",
    "read -P 0 0 12345",
    rbdFilename(conf, image),
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /Pattern verification failed/);
});

for (const completion of ["socket", "eventfd"] as const) {
  Deno.test(
    { name: `rbd node (${completion} completions) keeps 64 requests in flight and wakes less often than it completes`, ignore },
    async () => {
      const { node } = await fresh("16M", "", undefined, { "x-completion": completion });
      try {
        assert.equal(rbdInstance(node).aioStats.notifier, completion);
        const writes = [];
        for (let i = 0; i < 64; i++) writes.push(node.pwrite(i * 65536, pattern(65536, i + 1)));
        // Let the requests reach librbd (microtasks only: no completion is taken meanwhile), then keep
        // the event loop busy while the cluster works: the completions pile up behind one wake-up.
        for (let i = 0; i < 10000 && rbdInstance(node).aioStats.submitted < 64; i++) await Promise.resolve();
        assert.equal(rbdInstance(node).aioStats.submitted, 64);
        const until = performance.now() + 300;
        while (performance.now() < until) { /* busy */ }
        await Promise.all(writes);
        const st = rbdInstance(node).aioStats;
        assert.equal(st.completed, st.submitted);
        assert.ok(st.wakeups < st.completed, `wakeups ${st.wakeups}, completions ${st.completed}`);
        const back = new Uint8Array(65536);
        for (const i of [0, 17, 63]) {
          await node.pread(i * 65536, back);
          assert.ok(back.every((b) => b === i + 1), `block ${i}`);
        }
      } finally {
        await node.close();
      }
    },
  );
}

Deno.test({ name: "rbd node asked for socket completions falls back to the eventfd without the net permission", ignore }, async () => {
  const conf = await cephConf();
  const image = imageName();
  await rbdCreate(conf, image, "1M");
  const mod = new URL("../../../mod.ts", import.meta.url).href;
  const code = `import { open } from "${mod}";
const b = new Uint8Array(512);
for (const mode of ["socket", "auto"]) {
  const n = await open({ driver: "rbd", filename: ${JSON.stringify(rbdFilename(conf, image))}, "x-completion": mode });
  await n.pwrite(0, new Uint8Array(512).fill(3));
  await Promise.all([n.pread(0, b), n.pread(512, new Uint8Array(512))]);
  const st = (n.instance as { aioStats: { notifier: string; descriptor: string } }).aioStats;
  console.log(st.notifier, st.descriptor, b[511]);
  await n.close();
}`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-ffi", "--allow-read", "--allow-env", "--no-check", "-"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(code));
  await w.close();
  const r = await child.output();
  assert.equal(new TextDecoder().decode(r.stdout).trim(), "eventfd eventfd 3\nauto eventfd 3", new TextDecoder().decode(r.stderr));
});

Deno.test({ name: "rbd node reads zeros past a short read and past its end (for a parent's requests)", ignore }, async () => {
  const { node } = await fresh("1M");
  node.allowBeyondEof = true; // as under a parent; the node a user holds refuses (EIO), as QEMU's BlockBackend
  try {
    const buf = new Uint8Array(8192).fill(0xee);
    await node.pread(MiB - 4096, buf);
    assert.ok(buf.every((b) => b === 0));
  } finally {
    await node.close();
  }
});

Deno.test({ name: "rbd node grows the image for a write past its end, as QEMU does", ignore }, async () => {
  const { conf, image, node } = await fresh("1M");
  node.allowBeyondEof = true; // as under a parent (qcow2 on rbd)
  try {
    await node.pwrite(2 * MiB, pattern(1000, 9));
    assert.equal(node.length, 2 * MiB + 1000);
    assert.equal((await rbdInfo(conf, image)).size, 2 * MiB + 1000);
  } finally {
    await node.close();
  }
});

Deno.test({ name: "rbd node truncates with rbd_resize and refuses preallocation", ignore }, async () => {
  const { conf, image, node } = await fresh("4M");
  try {
    await node.truncate(10 * MiB);
    assert.equal((await rbdInfo(conf, image)).size, 10 * MiB);
    await node.truncate(MiB);
    assert.equal(node.length, MiB);
    assert.equal((await rbdInfo(conf, image)).size, MiB);
    await assert.rejects(
      node.truncate(2 * MiB, { prealloc: "full" }),
      (e: BlockError) => e.code === "ENOTSUP" && /preallocation mode 'full'/.test(e.message),
    );
  } finally {
    await node.close();
  }
});

Deno.test({ name: "rbd node write-zeroes and discard leave zeros that rbd export sees", ignore }, async () => {
  await using dir = await tempDir();
  const { conf, image, node } = await fresh("12M");
  try {
    await node.pwrite(0, pattern(12 * MiB, 0x42));
    await node.pwriteZeroes(100, 5000);
    await node.pwriteZeroes(4 * MiB, 4 * MiB, { mayUnmap: true });
    await node.pdiscard(8 * MiB, 4 * MiB);
    await node.flush();
  } finally {
    await node.close();
  }
  const bytes = await rbdExport(conf, image, dir.path);
  assert.equal(bytes[99], 0x42);
  assert.ok(bytes.subarray(100, 5100).every((b) => b === 0));
  assert.equal(bytes[5100], 0x42);
  assert.ok(bytes.subarray(4 * MiB, 12 * MiB).every((b) => b === 0));
});

Deno.test({ name: "rbd node block status matches qemu-img map on the same image", ignore: ignore || skipUnless("qemu-img") }, async () => {
  const { conf, image, node } = await fresh("64M");
  const map: { start: number; length: number; data: boolean; zero: boolean }[] = [];
  try {
    await node.pwrite(4 * MiB + 100, pattern(4096, 1));
    await node.pwrite(40 * MiB, pattern(9 * MiB, 2));
    await node.flush();
    for (let off = 0; off < node.length;) {
      const st = await node.blockStatus(off, node.length - off);
      const last = map[map.length - 1];
      if (last && last.data === st.data && last.zero === st.zero) last.length += st.length;
      else map.push({ start: off, length: st.length, data: st.data, zero: st.zero });
      off += st.length;
    }
    // A query from inside an object reports from there on.
    const mid = await node.blockStatus(4 * MiB + 1000, MiB);
    assert.deepEqual([mid.offset, mid.length, mid.data], [4 * MiB + 1000, MiB, true]);
  } finally {
    await node.close();
  }
  const q = JSON.parse((await runOk("qemu-img", ["map", "--output=json", "-f", "raw", rbdFilename(conf, image)])).stdout);
  assert.deepEqual(
    map,
    q.map((e: { start: number; length: number; data: boolean; zero: boolean }) => ({
      start: e.start,
      length: e.length,
      data: e.data,
      zero: e.zero,
    })),
  );
  assert.equal(map.length, 5);
});

Deno.test({ name: "cache=none sets rbd_cache=false and the default cache mode keeps it on, as QEMU", ignore }, async () => {
  const a = await fresh("1M", "", "none");
  const b = await fresh("1M");
  try {
    assert.equal((await a.node.info())["rbd-cache"], false);
    assert.equal((await b.node.info())["rbd-cache"], true);
  } finally {
    await a.node.close();
    await b.node.close();
  }
});

Deno.test({ name: "a write then flush reaches the cluster before the flush resolves (another client sees it)", ignore }, async () => {
  await using dir = await tempDir();
  const { conf, image, node } = await fresh("4M", ":rbd_cache_policy=writeback:rbd_cache_max_dirty_age=60");
  try {
    await node.pwrite(MiB, pattern(4096, 0x99));
    await node.flush();
    // The node stays open and keeps its lock: the exporter reads what the OSD has.
    const bytes = await rbdExport(conf, image, dir.path);
    assert.ok(bytes.subarray(MiB, MiB + 4096).every((b) => b === 0x99));
  } finally {
    await node.close();
  }
});

Deno.test({ name: "rbd node caches writes from the first one (no writethrough until a first flush), as the rbd CLI", ignore }, async () => {
  await using dir = await tempDir();
  const { conf, image, node } = await fresh("4M", ":rbd_cache_policy=writeback:rbd_cache_max_dirty_age=60");
  try {
    await node.pwrite(MiB, pattern(4096, 0x98));
    // Still in librbd's cache: another client reads the old bytes until the flush.
    assert.equal((await rbdExport(conf, image, dir.path))[MiB], 0);
    await node.flush();
    assert.equal((await rbdExport(conf, image, dir.path))[MiB], 0x98);
  } finally {
    await node.close();
  }
});

Deno.test({ name: "rbd node fails a request on a closed image with EIO, never a crash", ignore }, async () => {
  const { node } = await fresh("1M");
  await node.close();
  await assert.rejects(node.pread(0, new Uint8Array(512)), isCode("EIO"));
});
