import assert from "node:assert/strict";
import { type BlockError, type BlockNode, open } from "../../mod.ts";
import { Uring } from "../../drivers/_file_uring.ts";
import { alignedBuffer, type Libc, loadLibc, O_CLOEXEC, O_CREAT, O_RDWR } from "../../drivers/_file_libc.ts";
import { pattern, tempDir } from "../_helpers/qemu.ts";
import { MiB, openFile, withFile } from "./_file_helpers.ts";

// Whether this machine lets a process set up a ring (a seccomp filter or io_uring_disabled may not).
const probe = Uring.open(4);
const hasUring = probe instanceof Uring;
if (probe instanceof Uring) await probe.close();
else console.warn(`SKIP: io_uring is unavailable here (${probe.step}: errno ${probe.errno}); the io_uring tests are skipped`);
const ignore = !hasUring;
const hasShm = (() => {
  try {
    return Deno.statSync("/dev/shm").isDirectory;
  } catch {
    return false;
  }
})();

const libc = loadLibc() as Libc;

/** Opens `path` through libc (O_DIRECT when asked) for the ring-level tests. */
function rawFd(path: string, direct: boolean): number {
  const fd = libc.open(path, O_RDWR | O_CREAT | O_CLOEXEC | (direct ? libc.O_DIRECT : 0), 0o644);
  assert.ok(fd >= 0, `open ${path}: ${fd}`);
  return fd;
}

/** Distinct 4 KiB-aligned slots in a file of `size` bytes. */
function scatteredSlots(n: number, size: number, len: number): number[] {
  const slots = new Set<number>();
  while (slots.size < n) slots.add(Math.floor(Math.random() * (size / len)) * len);
  return [...slots];
}

async function roundTripAtDepth(n: BlockNode, path: string, len: number): Promise<void> {
  const offsets = scatteredSlots(64, 8 * MiB, len);
  // 64 writes in flight at once (the core's own queue depth is the caller's), then 64 reads.
  await Promise.all(offsets.map((o, i) => n.pwrite(o, pattern(len, i + 1))));
  const back = offsets.map(() => new Uint8Array(len));
  await Promise.all(offsets.map((o, i) => n.pread(o, back[i])));
  offsets.forEach((_, i) => assert.deepEqual(back[i], pattern(len, i + 1), `request ${i}`));
  await n.flush();
  const file = await Deno.readFile(path);
  offsets.forEach((o, i) => assert.deepEqual(file.subarray(o, o + len), pattern(len, i + 1), `file at ${o}`));
}

Deno.test({ name: "cache=none uses io_uring by default, and info() says so", ignore }, async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path, {}, "none");
    const info = await n.info();
    assert.equal(info.aio, "io_uring");
    assert.equal(info.direct, true);
    assert.equal((info.uring as { entries: number }).entries, 128);
  });
});

Deno.test({ name: "cache=none with aio=threads keeps the worker threads", ignore }, async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path, { aio: "threads" }, "none");
    assert.equal((await n.info()).aio, "threads");
  });
});

Deno.test({ name: "cache=none on io_uring: 64 writes in flight read back, in the node and in the file", ignore }, async () => {
  await withFile(8 * MiB, async (path) => {
    await using n = await openFile(path, {}, "none");
    await roundTripAtDepth(n, path, 4096);
    await roundTripAtDepth(n, path, 65536);
    const stats = (await n.info()).uring as { maxInFlight: number; completed: number };
    assert.ok(stats.maxInFlight > 1, `at most ${stats.maxInFlight} in flight`);
  });
});

Deno.test({ name: "aio=io_uring on the page cache: unaligned requests in flight read back", ignore }, async () => {
  await withFile(8 * MiB, async (path) => {
    await using n = await openFile(path, { aio: "io_uring" });
    assert.equal((await n.info()).aio, "io_uring");
    assert.equal((await n.info()).direct, false);
    await roundTripAtDepth(n, path, 4096);
    // Odd sizes and offsets: nothing is aligned on the page cache.
    const reqs = Array.from({ length: 20 }, (_, i) => ({ o: 12345 + i * 7777, len: 1000 + i * 3 }));
    await Promise.all(reqs.map((r, i) => n.pwrite(r.o, pattern(r.len, 0x40 + i))));
    for (const [i, r] of reqs.entries()) {
      const b = new Uint8Array(r.len);
      await n.pread(r.o, b);
      // Later requests overlap earlier ones' tails only past their own length: compare the unshadowed head.
      const keep = i + 1 < reqs.length ? Math.min(r.len, reqs[i + 1].o - r.o) : r.len;
      assert.deepEqual(b.subarray(0, keep), pattern(r.len, 0x40 + i).subarray(0, keep), `request ${i}`);
    }
  });
});

Deno.test({ name: "io_uring short reads at the end of a file read zeros after the data", ignore }, async () => {
  for (const cache of ["none", "writeback"]) {
    await withFile(0, async (path) => {
      await Deno.writeFile(path, pattern(5000, 0x17));
      await using n = await openFile(path, { aio: "io_uring" }, cache);
      n.allowBeyondEof = true; // as for a parent's requests
      const buf = new Uint8Array(8192).fill(0xee);
      await n.pread(0, buf);
      assert.deepEqual(buf.subarray(0, 5000), pattern(5000, 0x17), cache);
      assert.deepEqual(buf.subarray(5000), new Uint8Array(3192), cache);
    });
  }
});

Deno.test({ name: "a failed io_uring write is a typed error naming the request (ENOSPC from /dev/full)", ignore }, async () => {
  await using n = await open({ driver: "host_device", filename: "/dev/full", aio: "io_uring", locking: "off" });
  n.allowBeyondEof = true; // a character device has no length
  assert.equal((await n.info()).aio, "io_uring");
  await assert.rejects(
    n.pwrite(0, new Uint8Array(4096)),
    (e: BlockError) => e.code === "ENOSPC" && /Cannot write 4096 bytes at offset 0 of '\/dev\/full': No space left/.test(e.message),
  );
});

Deno.test({
  name: "the ring returns -EINVAL for a misaligned O_DIRECT request, -EBADF for a closed fd, and short reads at the end",
  ignore,
}, async () => {
  await withFile(MiB, async (path) => {
    // Written data: O_DIRECT reads of a hole are zero-filled without an alignment check.
    await Deno.writeFile(path, pattern(MiB, 3));
    const ring = Uring.open(8) as Uring;
    const fd = rawFd(path, true);
    try {
      const buf = alignedBuffer(libc, 8192, 4096);
      assert.equal(await ring.read(fd, buf.subarray(0, 4096), 0), 4096);
      assert.equal(await ring.read(fd, buf.subarray(0, 4096), 1), -22);
      assert.equal(await ring.read(fd, buf.subarray(0, 100), 0), -22);
      // A read across the end of the file is short: the bytes that are there.
      assert.equal(await ring.read(fd, buf, MiB - 4096), 4096);
      assert.equal(await ring.read(fd, buf, MiB), 0);
      const closed = rawFd(path, false);
      libc.close(closed);
      assert.equal(await ring.read(closed, buf.subarray(0, 512), 0), -9);
    } finally {
      libc.close(fd);
      await ring.close();
    }
  });
});

Deno.test({ name: "requests issued in one tick share one io_uring_enter", ignore }, async () => {
  await withFile(MiB, async (path) => {
    const ring = Uring.open(32) as Uring;
    const fd = rawFd(path, false);
    try {
      const bufs = Array.from({ length: 16 }, () => new Uint8Array(4096));
      const res = await Promise.all(bufs.map((b, i) => ring.write(fd, b.fill(i), i * 4096)));
      assert.deepEqual(res, bufs.map(() => 4096));
      assert.equal(ring.stats.submitted, 16);
      assert.equal(ring.stats.enters, 1);
      // More than the ring holds: the rest wait in order and go in as slots free up.
      const many = Array.from({ length: 100 }, (_, i) => ring.read(fd, new Uint8Array(512), (i % 16) * 4096));
      assert.ok((await Promise.all(many)).every((r) => r === 512));
      assert.ok(ring.stats.maxInFlight <= 32);
      console.log(`NOTE: ${ring.stats.completed} completions in ${ring.stats.wakeups} ${ring.stats.notifier} wake-ups`);
    } finally {
      libc.close(fd);
      await ring.close();
    }
  });
});

Deno.test({ name: "an io_uring flush resolves only after the writes the node had already started", ignore }, async () => {
  await withFile(32 * MiB, async (path) => {
    await using n = await openFile(path, {}, "none");
    for (let round = 0; round < 3; round++) {
      // A completed write, so the flush has something to make durable (the core skips a flush when no write completed since
      // the last one, as QEMU's write_gen does; writes still in flight are the caller's to wait for).
      await n.pwrite(30 * MiB, pattern(4096, round));
      const order: string[] = [];
      const big = pattern(MiB, round + 1);
      const writes = Array.from({ length: 12 }, (_, i) => n.pwrite(i * 2 * MiB, big).then(() => void order.push(`w${i}`)));
      // The writes are on the ring by the next macrotask (and 1 MiB O_DIRECT writes are still in flight).
      await new Promise((r) => setTimeout(r, 0));
      const flushes = n.stats.flushes;
      const flush = n.flush().then(() => void order.push("flush"));
      await Promise.all([...writes, flush]);
      assert.equal(n.stats.flushes, flushes + 1);
      assert.equal(order.at(-1), "flush", `round ${round}: ${order.join(" ")}`);
    }
  });
});

Deno.test({
  name: "the ring's fdatasync starts only after every request submitted before it (IOSQE_IO_DRAIN)",
  ignore: ignore || !hasShm,
}, async () => {
  await withFile(32 * MiB, async (path) => {
    // The fdatasync goes to a file on tmpfs, where it has nothing to wait for: undrained, it would complete long before
    // 2 MiB O_DIRECT writes to the disk (the drain is ring-wide, whatever the file).
    const quick = await Deno.makeTempFile({ dir: "/dev/shm", prefix: "blkgraph-uring-" });
    const ring = Uring.open(32) as Uring;
    const fd = rawFd(path, true);
    const qfd = rawFd(quick, false);
    try {
      const big = alignedBuffer(libc, 2 * MiB, 4096).fill(7);
      for (let round = 0; round < 3; round++) {
        const order: string[] = [];
        const writes = Array.from({ length: 12 }, (_, i) => ring.write(fd, big, i * 2 * MiB).then(() => void order.push(`w${i}`)));
        const sync = ring.fdatasync(qfd).then((r) => void order.push(`sync=${r}`));
        await Promise.all([...writes, sync]);
        assert.equal(order.at(-1), "sync=0", `round ${round}: ${order.join(" ")}`);
      }
    } finally {
      libc.close(fd);
      libc.close(qfd);
      await ring.close();
      await Deno.remove(quick);
    }
  });
});

Deno.test({ name: "closing a node with io_uring requests in flight completes them first", ignore }, async () => {
  await withFile(8 * MiB, async (path) => {
    const n = await openFile(path, {}, "none");
    const writes = Array.from({ length: 32 }, (_, i) => n.pwrite(i * 65536, pattern(65536, i + 1)));
    const reads = Array.from({ length: 16 }, (_, i) => n.pread(4 * MiB + i * 4096, new Uint8Array(4096)));
    await n.close();
    const settled = await Promise.allSettled([...writes, ...reads]);
    assert.deepEqual(settled.filter((s) => s.status === "rejected"), []);
    const file = await Deno.readFile(path);
    for (let i = 0; i < 32; i++) assert.deepEqual(file.subarray(i * 65536, (i + 1) * 65536), pattern(65536, i + 1), `write ${i}`);
  });
});

Deno.test({ name: "closing a ring with requests in flight waits for their completions", ignore }, async () => {
  await withFile(MiB, async (path) => {
    const fd = rawFd(path, false);
    try {
      // Page-cached writes complete inside io_uring_enter: a wait left on the eventfd would hang close (seen before the fix).
      for (let round = 0; round < 20; round++) {
        const ring = Uring.open(8) as Uring;
        const res = Array.from({ length: 20 }, (_, i) => ring.write(fd, new Uint8Array(4096).fill(i), i * 4096));
        await ring.close();
        assert.equal(ring.inFlight, 0);
        assert.deepEqual(await Promise.all(res), res.map(() => 4096));
        // A closed ring takes nothing more.
        assert.equal(await ring.read(fd, new Uint8Array(512), 0), -5);
      }
    } finally {
      libc.close(fd);
    }
  });
});

// In a child process: /proc/self/fd counts the whole process, and `deno test --parallel` runs other test files in it at the same time.
Deno.test({ name: "many nodes, each with its own ring, work side by side and leave no descriptors behind", ignore }, async () => {
  await using dir = await tempDir();
  const code = `
    import { open } from ${JSON.stringify(new URL("../../mod.ts", import.meta.url).href)};
    // Ours: the image files, the rings, their eventfds, and the accepted ends of their notification sockets (named
    // after the listener, "@blkgraph-uring-…", in /proc/net/unix; Deno's own descriptors come and go).
    const link = (n) => { try { return Deno.readLinkSync("/proc/self/fd/" + n); } catch { return ""; } };
    const named = () => new Set(Deno.readTextFileSync("/proc/net/unix").split("\\n").filter((l) => l.includes("@blkgraph-uring-"))
      .map((l) => \`socket:[\${l.trim().split(/\\s+/)[6]}]\`));
    const ours = (l, socks) => l.startsWith(${JSON.stringify(dir.path)}) || l === "anon_inode:[io_uring]" || l === "anon_inode:[eventfd]" ||
      socks.has(l);
    const fds = () => {
      const socks = named();
      return [...Deno.readDirSync("/proc/self/fd")].filter((e) => ours(link(e.name), socks)).length;
    };
    const pattern = (n, b) => new Uint8Array(n).fill(b & 255);
    const before = fds();
    const nodes = [];
    for (let i = 0; i < 48; i++) {
      await Deno.writeFile(\`${dir.path}/d\${i}.img\`, new Uint8Array(${MiB}));
      nodes.push(await open({ driver: "file", filename: \`${dir.path}/d\${i}.img\` }, { cache: "none" }));
    }
    const aio = new Set(await Promise.all(nodes.map(async (n) => (await n.info()).aio)));
    const opened = fds() - before;
    await Promise.all(nodes.map((n, i) => Promise.all([0, 1, 2, 3].map((k) => n.pwrite(k * 65536, pattern(65536, i + k))))));
    let bad = 0;
    await Promise.all(nodes.map(async (n, i) => {
      for (const k of [0, 1, 2, 3]) {
        const b = new Uint8Array(65536);
        await n.pread(k * 65536, b);
        if (!b.every((x) => x === ((i + k) & 255))) bad++;
      }
    }));
    for (const n of nodes) await n.close();
    console.log(JSON.stringify({ aio: [...aio], opened, bad, left: fds() - before }));
  `;
  const out = await new Deno.Command(Deno.execPath(), { args: ["eval", code], stdout: "piped", stderr: "piped" }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const r = JSON.parse(new TextDecoder().decode(out.stdout));
  assert.deepEqual(r.aio, ["io_uring"]);
  assert.ok(r.opened >= 48, `48 nodes opened only ${r.opened} descriptors`);
  assert.deepEqual([r.bad, r.left], [0, 0]);
});
