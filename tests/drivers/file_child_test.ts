import assert from "node:assert/strict";
import { type BlockError, open } from "../../mod.ts";
import { hasTool, run, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { MiB, openFile, withFile } from "./_file_helpers.ts";

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
    assert.match(String(res.message), /Could not open '.*disk\.img': Permission denied/);
  });
});

Deno.test({
  name: "file refuses a directory with qemu-io's messages (read-write: 'Is a directory'; read-only: not a regular file)",
  ignore: skipUnless("qemu-io"),
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      for (const readOnly of [false, true]) {
        const q = await run("qemu-io", ["-f", "raw", ...(readOnly ? ["-r"] : []), "-c", "quit", dir]);
        const reason = q.stderr.replace(`qemu-io: can't open device ${dir}: `, "").trim();
        await assert.rejects(open({ driver: "file", filename: dir }, { readOnly }), (e: Error) => e.message === reason);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
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

/** A child-script prologue: a seccomp filter on this thread that fails `io_uring_setup` with EPERM (as a container's profile may). */
const NO_URING = `
const libc = Deno.dlopen("libc.so.6", { prctl: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "i32" } });
const filter = new Uint8Array(32);
const fv = new DataView(filter.buffer);
// ld [nr]; jeq #425 (io_uring_setup), 0, 1; ret ERRNO|EPERM; ret ALLOW
[[0x20, 0, 0, 0], [0x15, 0, 1, 425], [0x06, 0, 0, 0x50001], [0x06, 0, 0, 0x7fff0000]].forEach(([code, jt, jf, k], i) => {
  fv.setUint16(i * 8, code, true); fv.setUint8(i * 8 + 2, jt); fv.setUint8(i * 8 + 3, jf); fv.setUint32(i * 8 + 4, k, true);
});
const prog = new Uint8Array(16);
new DataView(prog.buffer).setUint16(0, 4, true);
new DataView(prog.buffer).setBigUint64(8, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(filter))), true);
if (libc.symbols.prctl(38, 1n, 0n, 0n, 0n) !== 0) throw new Error("PR_SET_NO_NEW_PRIVS failed");
if (libc.symbols.prctl(22, 2n, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(prog))), 0n, 0n) !== 0) throw new Error("PR_SET_SECCOMP failed");
`;

Deno.test("where seccomp refuses io_uring, cache=none falls back to worker threads, and an explicit aio=io_uring says so once", async () => {
  await withFile(MiB, async (path) => {
    await using dir = await tempDir("blkgraph-child-");
    const script = `${dir.path}/child.ts`;
    await Deno.writeTextFile(
      script,
      `import { open } from ${JSON.stringify(MOD)};\nconst path = ${JSON.stringify(path)};\n${NO_URING}
const out = {};
for (const aio of [undefined, "io_uring"]) {
  await using n = await open({ driver: "file", filename: path, ...(aio ? { aio } : {}) }, { cache: "none" });
  await n.pwrite(4096, new Uint8Array(4096).fill(9));
  const b = new Uint8Array(4096);
  await n.pread(4096, b);
  out[aio ?? "default"] = { aio: (await n.info()).aio, byte: b[4095] };
}
console.log(JSON.stringify(out));`,
    );
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-config", "--quiet", "-A", script],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    const stdout = new TextDecoder().decode(r.stdout).trim();
    const stderr = new TextDecoder().decode(r.stderr).trim();
    assert.equal(r.code, 0, stderr);
    assert.deepEqual(JSON.parse(stdout), { default: { aio: "threads", byte: 9 }, io_uring: { aio: "threads", byte: 9 } });
    assert.equal(stderr, `file: aio=io_uring is unavailable for '${path}' (io_uring_setup: EPERM); using aio=threads`);
  });
});
