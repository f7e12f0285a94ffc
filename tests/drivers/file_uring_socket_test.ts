import assert from "node:assert/strict";
import { Uring } from "../../drivers/_file_uring.ts";
import { alignedBuffer, type Libc, loadLibc, O_CLOEXEC, O_CREAT, O_RDWR } from "../../drivers/_file_libc.ts";
import { pattern } from "../_helpers/qemu.ts";
import { MiB, openFile, withFile } from "./_file_helpers.ts";

// The notification socket: each request hard-linked to a 1-byte IORING_OP_SEND the event loop's own poller reads.
const probe = Uring.open(4);
const hasUring = probe instanceof Uring;
if (probe instanceof Uring) await probe.close();
const ignore = !hasUring;

const libc = loadLibc() as Libc;

/** Opens `path` through libc with O_DIRECT: reads go to the disk and complete after the JS thread went back to sleep in epoll. */
function directFd(path: string): number {
  const fd = libc.open(path, O_RDWR | O_CREAT | O_CLOEXEC | libc.O_DIRECT, 0o644);
  assert.ok(fd >= 0, `open ${path}: ${fd}`);
  return fd;
}

/**
 * `p`, or a failure after `ms`: a completion whose linked send never ran
 * would leave the wait on the socket hanging (IOSQE_IO_LINK instead of
 * HARDLINK after a short request; COOP_TASKRUN or DEFER_TASKRUN setup
 * flags, under which the send waits for the JS thread's next system call).
 */
async function within<T>(p: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no completion within ${ms} ms (its linked send never woke the event loop)`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test({ name: "O_DIRECT completions wake the event loop through the socket, with no eventfd read", ignore }, async () => {
  await withFile(0, async (path) => {
    await Deno.writeFile(path, pattern(MiB, 5));
    const ring = Uring.open(8) as Uring;
    const fd = directFd(path);
    try {
      assert.equal(ring.stats.notifier, "socket");
      const buf = alignedBuffer(libc, 4096, 4096);
      // One at a time: the JS thread sleeps in epoll_wait each time, and only the kernel's send can wake it.
      for (let i = 0; i < 20; i++) {
        assert.equal(await within(ring.read(fd, buf, i * 4096), `read ${i}`), 4096);
        assert.deepEqual(buf, pattern(MiB, 5).subarray(i * 4096, (i + 1) * 4096));
      }
      const s = ring.stats;
      assert.equal(s.eventfdReads, 0);
      assert.equal(s.completed, 20);
      // Every completion's linked send ran; a read the kernel finished inside io_uring_enter is reaped at once, with no wake-up
      // (seen on a loaded machine: 0 wake-ups in 20), so the wake-ups are not counted here: a missing one fails `within` above.
      assert.equal(s.sends, 20, JSON.stringify(s));
      assert.ok(s.signals >= s.wakeups, JSON.stringify(s));
      assert.equal(s.sendErrors, 0);
    } finally {
      libc.close(fd);
      await ring.close();
    }
  });
});

Deno.test({ name: "a short O_DIRECT read still signals the socket (IOSQE_IO_HARDLINK)", ignore }, async () => {
  await withFile(0, async (path) => {
    // 5 blocks and a bit: a read of 8 blocks at block 4 is short (the link of IOSQE_IO_LINK would be cancelled).
    await Deno.writeFile(path, pattern(5 * 4096 + 100, 9));
    const ring = Uring.open(8) as Uring;
    const fd = directFd(path);
    try {
      const buf = alignedBuffer(libc, 8 * 4096, 4096);
      for (let i = 0; i < 5; i++) {
        assert.equal(await within(ring.read(fd, buf, 4 * 4096), `short read ${i}`), 4096 + 100);
        assert.equal(await within(ring.read(fd, buf, 6 * 4096), `read past the end ${i}`), 0);
      }
      assert.ok(ring.stats.wakeups >= 1, JSON.stringify(ring.stats));
      assert.equal(ring.stats.eventfdReads, 0);
    } finally {
      libc.close(fd);
      await ring.close();
    }
  });
});

Deno.test({ name: "one socket wake-up carries many completions at depth 16", ignore }, async () => {
  await withFile(0, async (path) => {
    await Deno.writeFile(path, pattern(4 * MiB, 3));
    const ring = Uring.open(32) as Uring;
    const fd = directFd(path);
    try {
      const bufs = Array.from({ length: 16 }, () => alignedBuffer(libc, 4096, 4096));
      for (let round = 0; round < 8; round++) {
        const res = await within(Promise.all(bufs.map((b, i) => ring.read(fd, b, (round * 16 + i) * 8192))), `round ${round}`);
        assert.deepEqual(res, bufs.map(() => 4096));
      }
      const s = ring.stats;
      assert.equal(s.completed, 128);
      // 16 submitted in one io_uring_enter per round; their completions reaped in a few wake-ups, not one each.
      assert.equal(s.enters, 8);
      assert.ok(s.wakeups * 2 <= s.completed, `${s.completed} completions in ${s.wakeups} wake-ups`);
    } finally {
      libc.close(fd);
      await ring.close();
    }
  });
});

Deno.test({ name: "closing a ring with O_DIRECT requests in flight resolves them all", ignore }, async () => {
  await withFile(8 * MiB, async (path) => {
    const fd = directFd(path);
    try {
      for (let round = 0; round < 5; round++) {
        const ring = Uring.open(16) as Uring;
        const big = alignedBuffer(libc, MiB, 4096).fill(round);
        const res = Array.from({ length: 24 }, (_, i) => ring.write(fd, big.subarray(0, 65536 * (1 + (i % 4))), i * 262144));
        assert.ok(ring.inFlight > 0);
        await within(ring.close(), `close ${round}`);
        assert.equal(ring.inFlight, 0);
        assert.deepEqual(await Promise.all(res), res.map((_, i) => 65536 * (1 + (i % 4))));
        assert.equal(await ring.read(fd, big, 0), -5);
      }
    } finally {
      libc.close(fd);
    }
  });
});

Deno.test({ name: "a ring holds two sockets (the C end and the accepted end) and closing it closes both", ignore }, async () => {
  await withFile(MiB, async (path) => {
    // Counted in a process of its own: other test files in this one open and close sockets at any moment.
    const child = new URL("./_uring_sockets_child.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", child, path], stdout: "piped", stderr: "piped" }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const { before, open, closed, got } = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.deepEqual({ open: open - before, closed: closed - before, got }, { open: 2, closed: 0, got: 4096 });
  });
});

Deno.test({ name: "a node on cache=none says its ring completes through the socket", ignore }, async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path, {}, "none");
    await Promise.all(Array.from({ length: 8 }, (_, i) => n.pwrite(i * 4096, pattern(4096, i))));
    const stats = (await n.info()).uring as { notifier: string; eventfdReads: number; completed: number };
    assert.deepEqual([stats.notifier, stats.eventfdReads, stats.completed], ["socket", 0, 8]);
  });
});

Deno.test({ name: "without the net permission the ring falls back to its eventfd, visibly", ignore }, async () => {
  await withFile(0, async (path) => {
    await Deno.writeFile(path, pattern(MiB, 7));
    const code = `
      import { Uring } from ${JSON.stringify(new URL("../../drivers/_file_uring.ts", import.meta.url).href)};
      import { alignedBuffer, loadLibc, O_CLOEXEC, O_RDWR } from ${
      JSON.stringify(new URL("../../drivers/_file_libc.ts", import.meta.url).href)
    };
      const libc = loadLibc();
      const fd = libc.open(${JSON.stringify(path)}, O_RDWR | O_CLOEXEC | libc.O_DIRECT, 0);
      const ring = Uring.open(8);
      const buf = alignedBuffer(libc, 4096, 4096);
      const res = [];
      for (let i = 0; i < 4; i++) res.push(await ring.read(fd, buf, i * 4096));
      const stats = { ...ring.stats };
      await ring.close();
      console.log(JSON.stringify({ res, stats, byte: buf[0] }));
    `;
    const file = `${path}.child.ts`;
    await Deno.writeTextFile(file, code);
    // --allow-ffi only: the libc calls work, Deno.listen (the socket's other end) is denied.
    const out = await new Deno.Command(Deno.execPath(), { args: ["run", "--allow-ffi", file], stdout: "piped", stderr: "piped" }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const r = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.deepEqual(r.res, [4096, 4096, 4096, 4096]);
    assert.equal(r.byte, 7);
    assert.equal(r.stats.notifier, "eventfd");
    assert.equal(r.stats.signals, 0);
    assert.equal(r.stats.completed, 4);
  });
});

Deno.test(
  { name: "linked sends never wait in the kernel for a reader, even when requests complete inline (page cache)", ignore },
  async () => {
    await withFile(MiB, async (path) => {
      const fd = libc.open(path, O_RDWR | O_CLOEXEC, 0);
      const ring = Uring.open(8) as Uring;
      try {
        // Page-cached reads complete inside io_uring_enter and are reaped there: no wait reads the socket, which fills up after a
        // few hundred bytes. A send that waited for room (no MSG_DONTWAIT) would stay in the kernel, one more per request.
        const buf = new Uint8Array(4096);
        for (let i = 0; i < 3000; i++) assert.equal(await ring.read(fd, buf, (i % 256) * 4096), 4096);
        const s = ring.stats;
        assert.equal(s.completed, 3000);
        assert.ok(s.sends >= 2990, `only ${s.sends} of 3000 linked sends completed (${s.sendErrors} failed)`);
        assert.ok(s.sendErrors > 0, JSON.stringify(s));
      } finally {
        libc.close(fd);
        await ring.close();
      }
    });
  },
);
