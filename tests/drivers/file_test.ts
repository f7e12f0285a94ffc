import assert from "node:assert/strict";
import { type BlockError, type BlockNode, open } from "../../mod.ts";
import { hasTool, pattern, run, skipUnless, tempDir } from "../_helpers/qemu.ts";

const MiB = 1 << 20;
const isCode = (code: string) => (e: BlockError) => e.code === code;

async function withFile(size: number, fn: (path: string) => Promise<void>): Promise<void> {
  await using dir = await tempDir();
  const path = `${dir.path}/disk.img`;
  const f = await Deno.open(path, { create: true, write: true });
  await f.truncate(size);
  f.close();
  await fn(path);
}

function openFile(path: string, extra: Record<string, unknown> = {}, cache?: string): Promise<BlockNode> {
  return open({ driver: "file", filename: path, ...extra }, { cache });
}

/** Bytes actually allocated on disk. */
async function allocated(path: string): Promise<number> {
  return ((await Deno.stat(path)).blocks ?? 0) * 512;
}

Deno.test("file node uses FFI positional I/O and OFD locks when --allow-ffi is granted", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path);
    assert.deepEqual(await n.info(), { backend: "ffi", locking: "ofd", direct: false, aio: "sync", requestAlignment: 1 });
  });
});

Deno.test("file node round-trips patterns at scattered offsets", async () => {
  await withFile(4 * MiB, async (path) => {
    await using n = await openFile(path);
    const offsets = [0, 6000, 20003, 65537, 3 * MiB + 17];
    for (const [i, o] of offsets.entries()) await n.pwrite(o, pattern(5000, 0x10 + i));
    for (const [i, o] of offsets.entries()) {
      const buf = new Uint8Array(5000);
      await n.pread(o, buf);
      assert.deepEqual(buf, pattern(5000, 0x10 + i), `offset ${o}`);
    }
  });
});

Deno.test("file node data is in the host file", async () => {
  await withFile(MiB, async (path) => {
    {
      await using n = await openFile(path);
      await n.pwrite(8192, pattern(4096, 0xc3));
    }
    const bytes = await Deno.readFile(path);
    assert.deepEqual(bytes.subarray(8192, 8192 + 4096), pattern(4096, 0xc3));
  });
});

Deno.test("pread() and pwrite() past the end of the file node you hold fail with EIO, as in qemu-io", async () => {
  await withFile(4096, async (path) => {
    await using n = await openFile(path);
    await assert.rejects(n.pread(4096, new Uint8Array(512)), (e: BlockError) => e.code === "EIO" && /past the end/.test(e.message));
    await assert.rejects(n.pwrite(4096, new Uint8Array(512)), (e: BlockError) => e.code === "EIO");
    await assert.rejects(n.pwriteZeroes(4000, 512), (e: BlockError) => e.code === "EIO");
    assert.equal((await Deno.stat(path)).size, 4096);
    await n.close();
    if (hasTool("qemu-io")) {
      const r = await run("qemu-io", ["-c", "read 4096 512", "-c", "write 4096 512", `json:{"driver":"file","filename":"${path}"}`]);
      assert.equal(r.stdout, "read failed: Input/output error\nwrite failed: Input/output error\n");
    }
  });
});

Deno.test("pread() past the end of a file reads zeros", async () => {
  await withFile(4096, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwrite(0, pattern(4096, 0xff));
    const buf = new Uint8Array(8192).fill(0xee);
    await n.pread(2048, buf);
    assert.deepEqual(buf.subarray(0, 2048), pattern(2048, 0xff));
    assert.deepEqual(buf.subarray(2048), new Uint8Array(6144));
  });
});

Deno.test("pwrite() past the end grows the file", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwrite(MiB, pattern(100, 1));
    assert.equal(n.length, MiB + 100);
    assert.equal((await Deno.stat(path)).size, MiB + 100);
  });
});

Deno.test("truncate() shrinks and grows the file", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path);
    await n.pwrite(0, pattern(8192, 0x77));
    await n.truncate(4096);
    assert.equal((await Deno.stat(path)).size, 4096);
    await n.truncate(8192);
    assert.equal(n.length, 8192);
    const buf = new Uint8Array(8192);
    await n.pread(0, buf);
    assert.deepEqual(buf.subarray(4096), new Uint8Array(4096), "grown part reads zeros");
  });
});

Deno.test("truncate() with prealloc falloc allocates the grown part", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    await n.truncate(4 * MiB, { prealloc: "falloc" });
    assert.equal((await Deno.stat(path)).size, 4 * MiB);
    assert.ok(await allocated(path) >= 4 * MiB);
  });
});

Deno.test("truncate() with prealloc full writes zeros over the grown part", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    await n.truncate(2 * MiB + 100, { prealloc: "full" });
    assert.equal((await Deno.stat(path)).size, 2 * MiB + 100);
    assert.ok(await allocated(path) >= 2 * MiB);
  });
});

Deno.test("truncate() with prealloc metadata fails with ENOTSUP", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    await assert.rejects(n.truncate(MiB, { prealloc: "metadata" }), (e: BlockError) => e.code === "ENOTSUP" && /metadata/.test(e.message));
  });
});

Deno.test("pwriteZeroes() with mayUnmap punches a hole that reads zeros", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwrite(0, pattern(4 * MiB, 0x5a));
    await n.flush();
    const before = await allocated(path);
    await n.pwriteZeroes(MiB, 2 * MiB, { mayUnmap: true });
    assert.ok(await allocated(path) <= before - 2 * MiB, "blocks were freed");
    const buf = new Uint8Array(2 * MiB);
    await n.pread(MiB, buf);
    assert.deepEqual(buf, new Uint8Array(2 * MiB));
    assert.equal(n.length, 4 * MiB);
  });
});

Deno.test("pwriteZeroes() without mayUnmap zeroes the range and keeps it allocated", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwrite(0, pattern(MiB, 0x5a));
    await n.pwriteZeroes(4096, 8192);
    const buf = new Uint8Array(16384);
    await n.pread(0, buf);
    assert.deepEqual(buf.subarray(0, 4096), pattern(4096, 0x5a));
    assert.deepEqual(buf.subarray(4096, 12288), new Uint8Array(8192));
    assert.deepEqual(buf.subarray(12288), pattern(4096, 0x5a));
    assert.equal((await n.blockStatus(4096, 8192)).data, true);
  });
});

Deno.test("pwriteZeroes() past the end grows the file", async () => {
  await withFile(4096, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwriteZeroes(4096, MiB, { mayUnmap: true });
    assert.equal(n.length, MiB + 4096);
    assert.equal((await Deno.stat(path)).size, MiB + 4096);
  });
});

Deno.test("pdiscard() punches a hole", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path);
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    await n.pwrite(0, pattern(2 * MiB, 0x11));
    await n.pdiscard(0, MiB);
    const st = await n.blockStatus(0, 2 * MiB);
    assert.deepEqual([st.length, st.data, st.zero], [MiB, false, true]);
  });
});

Deno.test("blockStatus() reports data and holes from SEEK_DATA/SEEK_HOLE", async () => {
  await withFile(4 * MiB, async (path) => {
    await using n = await openFile(path);
    await n.pwrite(MiB, pattern(MiB, 1));
    const hole = await n.blockStatus(0, 4 * MiB);
    assert.deepEqual([hole.offset, hole.length, hole.data, hole.zero], [0, MiB, false, true]);
    const data = await n.blockStatus(MiB, 3 * MiB);
    assert.deepEqual([data.offset, data.length, data.data, data.zero], [MiB, MiB, true, false]);
    const tail = await n.blockStatus(2 * MiB, 2 * MiB);
    assert.deepEqual([tail.length, tail.data], [2 * MiB, false]);
  });
});

Deno.test("blockStatus() agrees with qemu-img map", { ignore: skipUnless("qemu-img") }, async () => {
  await withFile(8 * MiB, async (path) => {
    const ours: { start: number; length: number; data: boolean }[] = [];
    {
      await using n = await openFile(path);
      for (const o of [0, 3 * MiB, 7 * MiB]) await n.pwrite(o, pattern(MiB / 2, 9));
      for (let o = 0; o < n.length;) {
        const st = await n.blockStatus(o, n.length - o);
        const last = ours.at(-1);
        if (last && last.data === st.data) last.length += st.length;
        else ours.push({ start: o, length: st.length, data: st.data });
        o += st.length;
      }
    }
    const r = await run("qemu-img", ["map", "--output=json", "-f", "raw", path]);
    const theirs = (JSON.parse(r.stdout) as { start: number; length: number; data: boolean }[])
      .map(({ start, length, data }) => ({ start, length, data }));
    assert.deepEqual(ours, theirs);
  });
});

Deno.test("cache=unsafe makes flush a no-op on a file node", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path, {}, "unsafe");
    await n.pwrite(0, pattern(4096, 1));
    await n.flush();
    assert.equal(n.stats.flushes, 0);
    assert.equal(n.stats.flushesSkipped, 1);
  });
});

Deno.test("cache=writeback flushes once per batch of writes", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path);
    await n.pwrite(0, pattern(4096, 1));
    await n.pwrite(4096, pattern(4096, 1));
    await n.flush();
    await n.flush();
    assert.equal(n.stats.flushes, 1);
  });
});

Deno.test("cache=none opens with O_DIRECT and a probed request alignment", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path, {}, "none");
    const info = await n.info();
    assert.equal(info.direct, true);
    assert.ok([512, 1024, 2048, 4096].includes(n.limits.requestAlignment), `alignment ${n.limits.requestAlignment}`);
  });
});

Deno.test("cache=none round-trips unaligned requests through aligned bounce buffers", async () => {
  await withFile(MiB, async (path) => {
    {
      await using n = await openFile(path, {}, "none");
      await n.pwrite(100, pattern(10000, 0x42));
      const buf = new Uint8Array(10002);
      await n.pread(99, buf);
      assert.equal(buf[0], 0);
      assert.deepEqual(buf.subarray(1, 10001), pattern(10000, 0x42));
      assert.equal(buf[10001], 0);
    }
    const bytes = await Deno.readFile(path);
    assert.deepEqual(bytes.subarray(100, 10100), pattern(10000, 0x42));
  });
});

Deno.test("cache=none reads zeros past the end of an unaligned file", async () => {
  await withFile(0, async (path) => {
    await Deno.writeFile(path, pattern(1000, 0x17));
    await using n = await openFile(path, {}, "none");
    n.allowBeyondEof = true; // as for a parent's requests (the default refuses, as QEMU's BlockBackend)
    const buf = new Uint8Array(4096).fill(0xee);
    await n.pread(0, buf);
    assert.deepEqual(buf.subarray(0, 1000), pattern(1000, 0x17));
    assert.deepEqual(buf.subarray(1000), new Uint8Array(3096));
  });
});

Deno.test("cache=none truncate() with prealloc full to an unaligned size writes zeros", async () => {
  await withFile(0, async (path) => {
    await using n = await openFile(path, {}, "none");
    await n.truncate(MiB + 100, { prealloc: "full" });
    assert.equal((await Deno.stat(path)).size, MiB + 100);
    assert.ok(await allocated(path) >= MiB);
  });
});

Deno.test("cache=directsync writes each request through to the disk", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path, {}, "directsync");
    await n.pwrite(0, pattern(4096, 1));
    await n.pwrite(8192, pattern(4096, 1));
    assert.equal(n.stats.flushes, 2);
  });
});

Deno.test("opening a missing file fails with ENOENT naming it", async () => {
  await using dir = await tempDir();
  await assert.rejects(
    openFile(`${dir.path}/nope.img`),
    (e: BlockError) => e.code === "ENOENT" && e.message.includes("nope.img") && /No such file/.test(e.message),
  );
});

Deno.test("opening a directory fails with EINVAL", async () => {
  await using dir = await tempDir();
  await assert.rejects(openFile(dir.path), (e: BlockError) => e.code === "EINVAL" && /directory/.test(e.message));
});

Deno.test("create=on creates a missing file", async () => {
  await using dir = await tempDir();
  await using n = await openFile(`${dir.path}/new.img`, { create: true });
  assert.equal(n.length, 0);
  assert.ok((await Deno.stat(`${dir.path}/new.img`)).isFile);
});

Deno.test("a read-only node of a read-only file reads and refuses writes with EROFS", async () => {
  await withFile(MiB, async (path) => {
    await Deno.chmod(path, 0o444);
    await using n = await open({ driver: "file", filename: path, "read-only": true });
    await n.pread(0, new Uint8Array(512));
    await assert.rejects(n.pwrite(0, pattern(512, 1)), isCode("EROFS"));
  });
});

Deno.test("a second writable open of the same file fails with EBUSY", async () => {
  await withFile(MiB, async (path) => {
    await using _n = await openFile(path);
    await assert.rejects(
      openFile(path),
      (e: BlockError) => e.code === "EBUSY" && e.message.includes(path) && /locked by another process/.test(e.message),
    );
  });
});

Deno.test("closing a node releases its lock", async () => {
  await withFile(MiB, async (path) => {
    const n = await openFile(path);
    await n.close();
    await using again = await openFile(path);
    assert.equal(again.length, MiB);
  });
});

Deno.test("a read-only node does not share writing with a writer, as QEMU's readers", async () => {
  await withFile(MiB, async (path) => {
    await using _w = await openFile(path);
    await assert.rejects(
      open({ driver: "file", filename: path }, { readOnly: true }),
      (e: BlockError) => e.code === "EBUSY" && /Failed to get shared "write" lock/.test(e.message),
    );
  });
});

Deno.test("a read-only node with force-share opens an image a writer holds", async () => {
  await withFile(MiB, async (path) => {
    await using _w = await openFile(path);
    await using r = await open({ driver: "file", filename: path }, { readOnly: true, forceShare: true });
    assert.equal(r.length, MiB);
    await using r2 = await open({ driver: "file", filename: path, "read-only": true, "force-share": true });
    assert.equal(r2.length, MiB);
  });
});

Deno.test("force-share on a writable node is refused", async () => {
  await withFile(MiB, async (path) => {
    await assert.rejects(
      open({ driver: "file", filename: path, "force-share": true }),
      /force-share=on can only be used with read-only images/,
    );
  });
});

Deno.test("locking=off opens a file another node holds", async () => {
  await withFile(MiB, async (path) => {
    await using _n = await openFile(path);
    await using n2 = await openFile(path, { locking: "off" });
    assert.equal((await n2.info()).locking, "none");
  });
});

Deno.test("qemu-io cannot write an image blkgraph holds for writing", { ignore: skipUnless("qemu-io") }, async () => {
  await withFile(MiB, async (path) => {
    await using _n = await openFile(path);
    const r = await run("qemu-io", ["-f", "raw", "-c", "write 0 512", path]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Failed to get "write" lock/);
  });
});

Deno.test("qemu-img convert needs -U while blkgraph holds the source for writing", { ignore: skipUnless("qemu-img") }, async () => {
  await withFile(MiB, async (path) => {
    await using _n = await openFile(path);
    const out = `${path}.copy`;
    const plain = await run("qemu-img", ["convert", "-f", "raw", "-O", "raw", path, out]);
    assert.match(plain.stderr, /Failed to get shared "write" lock/);
    const shared = await run("qemu-img", ["convert", "-U", "-f", "raw", "-O", "raw", path, out]);
    assert.equal(shared.code, 0, shared.stderr);
  });
});

Deno.test("locking=on takes the QEMU lock bytes", async () => {
  await withFile(MiB, async (path) => {
    await using n = await openFile(path, { locking: "on" });
    assert.equal((await n.info()).locking, "ofd");
    await assert.rejects(openFile(path, { locking: "on" }), isCode("EBUSY"));
  });
});

Deno.test("qemu-io can read an image blkgraph holds read-only, but not write it", { ignore: skipUnless("qemu-io") }, async () => {
  await withFile(MiB, async (path) => {
    {
      await using _n = await open({ driver: "file", filename: path }, { readOnly: true });
      const r = await run("qemu-io", ["-r", "-f", "raw", "-c", "read 0 512", path]);
      assert.equal(r.code, 0, r.stderr);
      const w = await run("qemu-io", ["-f", "raw", "-c", "write -P 0x33 0 512", path]);
      assert.notEqual(w.code, 0);
      assert.match(w.stderr, /Failed to get "write" lock/);
    }
    await using _shared = await open({ driver: "file", filename: path }, { readOnly: true, forceShare: true });
    const w = await run("qemu-io", ["-f", "raw", "-c", "write -P 0x33 0 512", path]);
    assert.equal(w.code, 0, w.stderr);
  });
});

Deno.test("blkgraph cannot open for writing an image qemu-io holds", { ignore: skipUnless("qemu-io") }, async () => {
  await withFile(MiB, async (path) => {
    const child = new Deno.Command("qemu-io", { args: ["-f", "raw", path], stdin: "piped", stdout: "piped", stderr: "piped" })
      .spawn();
    const w = child.stdin.getWriter();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    try {
      // Once qemu-io answers a command, the image is open and locked.
      await w.write(new TextEncoder().encode("read 0 512\n"));
      let out = "";
      while (!/read 512\/512 bytes/.test(out)) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`qemu-io exited early: ${out}`);
        out += value;
      }
      await assert.rejects(openFile(path), (e: BlockError) => e.code === "EBUSY" && /Failed to get (shared )?"write" lock/.test(e.message));
    } finally {
      await w.write(new TextEncoder().encode("quit\n")).catch(() => {});
      await w.close().catch(() => {});
      await reader.cancel().catch(() => {});
      await child.stderr.cancel().catch(() => {});
      await child.status;
    }
  });
});

// ---- without FFI, and as an unprivileged user: a child Deno process -------------

const MOD = new URL("../../mod.ts", import.meta.url).href;

/** Runs `body` (which sees `open`, `path` and prints a JSON result) in a child Deno. */
async function childDeno(body: string, path: string, opts: { ffi: boolean; asNobody?: boolean }): Promise<Record<string, unknown>> {
  await using dir = await tempDir("blkgraph-child-");
  await Deno.chmod(dir.path, 0o777);
  const script = `${dir.path}/child.ts`;
  await Deno.writeTextFile(
    script,
    `import { open } from ${JSON.stringify(MOD)};\nconst path = ${JSON.stringify(path)};\n` +
      `try {\n${body}\n} catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }\n`,
  );
  await Deno.chmod(script, 0o644);
  const perms = opts.ffi ? ["-A"] : ["--allow-read", "--allow-write"];
  const deno = Deno.execPath();
  const args = ["run", "--no-config", "--quiet", ...perms, script];
  const env: Record<string, string> = opts.asNobody ? { DENO_DIR: `${dir.path}/deno`, HOME: dir.path } : {};
  const r = opts.asNobody
    ? await new Deno.Command("setpriv", {
      args: ["--reuid=65534", "--regid=65534", "--clear-groups", deno, ...args],
      env,
      stdout: "piped",
      stderr: "piped",
    }).output()
    : await new Deno.Command(deno, { args, stdout: "piped", stderr: "piped" }).output();
  const out = new TextDecoder().decode(r.stdout).trim();
  try {
    return JSON.parse(out.split("\n").at(-1) ?? "");
  } catch {
    throw new Error(`child failed: ${out}\n${new TextDecoder().decode(r.stderr)}`);
  }
}

Deno.test("without FFI the node falls back to node:fs and flock", async () => {
  await withFile(MiB, async (path) => {
    const res = await childDeno(
      `await using n = await open({ driver: "file", filename: path });
       await n.pwrite(4096, new Uint8Array(512).fill(7));
       const b = new Uint8Array(512); await n.pread(4096, b);
       let second = "";
       try { await open({ driver: "file", filename: path }); } catch (e) { second = e.code; }
       console.log(JSON.stringify({ info: await n.info(), byte: b[0], second }));`,
      path,
      { ffi: false },
    );
    assert.deepEqual(res, { info: { backend: "node:fs", locking: "flock", direct: false, requestAlignment: 1 }, byte: 7, second: "EBUSY" });
  });
});

Deno.test("cache=none without FFI fails with ENOTSUP naming the option", async () => {
  await withFile(MiB, async (path) => {
    const res = await childDeno(`await open({ driver: "file", filename: path }, { cache: "none" });`, path, { ffi: false });
    assert.equal(res.code, "ENOTSUP");
    assert.match(String(res.message), /cache\.direct.*--allow-ffi/);
  });
});

/** Whether user nobody can run a child Deno on this checkout (for the permission test as root). */
function nobodyCanRun(): boolean {
  if (!hasTool("setpriv")) return false;
  let dir = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
  try {
    if ((Deno.statSync(`${dir}/mod.ts`).mode ?? 0) & 0o004) {
      for (; dir; dir = dir.slice(0, dir.lastIndexOf("/"))) {
        if (!((Deno.statSync(dir).mode ?? 0) & 0o001)) {
          console.warn(`SKIP: ${dir} is not world-traversable, so the checkout cannot run as nobody; the root permission test is skipped`);
          return false;
        }
      }
      return true;
    }
    console.warn("SKIP: the checkout is not world-readable, so it cannot run as nobody; the root permission test is skipped");
  } catch (e) {
    console.warn(`SKIP: cannot tell whether the checkout can run as nobody (${e}); the root permission test is skipped`);
  }
  return false;
}

Deno.test("opening a file without write permission fails with EACCES", { ignore: Deno.uid() === 0 && !nobodyCanRun() }, async () => {
  await withFile(MiB, async (path) => {
    await Deno.chmod(path, 0o444);
    if (Deno.uid() !== 0) {
      await assert.rejects(openFile(path), (e: BlockError) => e.code === "EACCES" && /Permission denied/.test(e.message));
      return;
    }
    // root ignores file modes: try as nobody.
    await Deno.chmod(path.slice(0, path.lastIndexOf("/")), 0o755);
    const res = await childDeno(`await open({ driver: "file", filename: path });`, path, { ffi: true, asNobody: true });
    assert.equal(res.code, "EACCES");
    assert.match(String(res.message), /Cannot open '.*disk\.img': Permission denied/);
  });
});

Deno.test({
  name: "file node with aio=threads does its reads and writes on worker threads, and they land in the file",
  ignore: skipUnless("strace"),
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/disk.img`;
    const script = `${dir.path}/io.ts`;
    const mod = new URL("../../mod.ts", import.meta.url).href;
    // 12345-byte requests: no other pread/pwrite in the process has that size.
    await Deno.writeTextFile(
      script,
      `import { open } from "${mod}";
const [path, aio] = Deno.args;
await using n = await open({ driver: "file", filename: path, create: true, ...(aio ? { aio } : {}) });
console.log((await n.info()).aio, Deno.pid);
await n.pwrite(8192, new Uint8Array(12345).fill(0x5a));
const back = new Uint8Array(12345);
await n.pread(8192, back);
if (!back.every((b) => b === 0x5a)) throw new Error("read back differs");
`,
    );
    for (const aio of ["", "threads"]) {
      const r = await run("strace", ["-f", "-e", "trace=pread64,pwrite64", Deno.execPath(), "run", "-A", script, path, aio]);
      assert.equal(r.code, 0, r.stderr);
      const [mode, pid] = r.stdout.trim().split(" ");
      assert.equal(mode, aio || "sync");
      const tids = [...r.stderr.matchAll(/^(?:\[pid +(\d+)\] )?p(?:read|write)64\(\d+, .*, 12345, 8192\)/gm)].map((m) => m[1] ?? pid);
      assert.equal(tids.length, 2, r.stderr.slice(-2000));
      if (aio) assert.ok(tids.every((t) => t !== pid), `aio=threads: calls came from ${tids}, the main thread is ${pid}`);
      else assert.ok(tids.every((t) => t === pid), `sync: calls came from ${tids}, the main thread is ${pid}`);
    }
    const f = await Deno.readFile(path);
    assert.ok(f.subarray(8192, 8192 + 12345).every((b) => b === 0x5a));
  },
});
