/**
 * blkgraph's NBD server under the real clients (qemu-img, qemu-io, nbdinfo,
 * nbdcopy, nbdsh, nbdfuse): each runs against `blkgraph nbd` and against
 * qemu-nbd with the same flags on copies of the same image, and the outputs
 * (socket paths normalised) and resulting images must be equal.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { hasTool, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { blkgraphNbd, normalise, qemuNbd, type ServerProcess, sockPath } from "./_helpers.ts";

const QEMU = skipUnless("qemu-img", "qemu-io", "qemu-nbd");

/** A qcow2 overlay over a qcow2 base with data, a zero range and unallocated space. */
async function makeChain(dir: string): Promise<string> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${dir}/base.qcow2`, "16M"]);
  await runOk("qemu-io", ["-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 4M 64k", `${dir}/base.qcow2`]);
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${dir}/top.qcow2`]);
  await runOk("qemu-io", ["-c", "write -P 0x33 512k 1M", "-c", "write -z 8M 1M", `${dir}/top.qcow2`]);
  return `${dir}/top.qcow2`;
}

/** Runs `fn` against blkgraph's and qemu-nbd's server (same flags, each on its own copy of `file`). */
async function onBoth<T>(
  dir: string,
  args: string[],
  file: string,
  fn: (s: ServerProcess, copy: string) => Promise<T>,
): Promise<[T, T]> {
  const out: T[] = [];
  for (const [tag, start] of [["b", blkgraphNbd], ["q", qemuNbd]] as const) {
    const copy = `${dir}/${tag}-${file.split("/").pop()}`;
    await Deno.copyFile(file, copy);
    // Written back, so both servers see the same extents (dirty page-cache pages read as data to SEEK_DATA).
    using f = await Deno.open(copy, { read: true, write: true });
    await f.sync();
    const s = await start(sockPath(dir, tag), args, copy);
    try {
      out.push(await fn(s, copy));
    } finally {
      await s.stop();
    }
  }
  return [out[0], out[1]];
}

Deno.test({
  name: "blkgraph nbd: nbdinfo --json, --map and --map=qemu:allocation-depth equal qemu-nbd's on a backing chain",
  ignore: QEMU || skipUnless("nbdinfo"),
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-tools-");
    const top = await makeChain(dir.path);
    const [a, b] = await onBoth(dir.path, ["-r", "-A", "-t", "-e", "4"], top, async (s) => {
      const outs = [];
      for (const extra of [["--json"], ["--map"], ["--map=qemu:allocation-depth"], ["--list"]]) {
        outs.push(normalise((await runOk("nbdinfo", [...extra, s.uri])).stdout, s.sock));
      }
      return outs;
    });
    assertEquals(a, b);
    ok(a[0].includes('"qemu:allocation-depth"'));
  },
});

Deno.test({
  name: "blkgraph nbd: qemu-img info, map and convert give what they give against qemu-nbd",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-tools-");
    const top = await makeChain(dir.path);
    const [a, b] = await onBoth(dir.path, ["-r", "-t"], top, async (s) => {
      const info = normalise((await runOk("qemu-img", ["info", "--output=json", s.uri])).stdout, s.sock);
      const map = (await runOk("qemu-img", ["map", "--output=json", "-f", "raw", s.uri])).stdout;
      const dst = `${s.sock}.qcow2`;
      await runOk("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", s.uri, dst]);
      const same = await run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", dst, top]);
      return { info, map, same: same.code };
    });
    assertEquals(a, b);
    assertEquals(a.same, 0);
  },
});

Deno.test({
  name: "blkgraph nbd: qemu-io write, read -P, write -z, discard, flush and aio give qemu-nbd's output and image",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-tools-");
    const img = `${dir.path}/d.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "8M"]);
    const cmds = [
      "write -P 0xab 0 64k",
      "write -P 0xcd -F 1M 4k",
      "read -P 0xab 0 64k",
      "write -z 64k 64k",
      "read -P 0 64k 64k",
      "discard 1M 4k",
      "aio_write -P 0x77 2M 128k",
      "aio_flush",
      "read -P 0x77 2M 128k",
      "read -P 0x77 2M 4k",
      "flush",
      "read -v 2M 16",
      "write -P 1 8388096 1k",
    ];
    const [a, b] = await onBoth(dir.path, ["--discard=unmap", "-t"], img, async (s, copy) => {
      const r = await run("qemu-io", ["-f", "raw", ...cmds.flatMap((c) => ["-c", c]), s.uri]);
      const out = (r.stdout + r.stderr).replace(/ \d+ ops; .*$/gm, " N ops; TIME");
      await s.stop();
      return { out, code: r.code, copy };
    });
    assertEquals(normalise(a.out, a.copy), normalise(b.out, b.copy));
    ok(a.out.includes("Input/output error") || a.out.includes("No space") || a.out.includes("Invalid argument"));
    assertEquals((await run("qemu-img", ["compare", a.copy, b.copy])).code, 0);
  },
});

Deno.test({
  name: "blkgraph nbd: qemu-img bench reads and writes at depth 16 and leaves the image qemu-nbd leaves",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-tools-");
    const img = `${dir.path}/d.raw`;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", img, "16M"]);
    const [a, b] = await onBoth(dir.path, ["-f", "raw", "-t"], img, async (s, copy) => {
      const w = await runOk("qemu-img", ["bench", "-f", "raw", "-w", "-c", "2000", "-d", "16", "-s", "4k", "--pattern=92", s.uri]);
      const r = await runOk("qemu-img", ["bench", "-f", "raw", "-c", "2000", "-d", "16", "-s", "64k", s.uri]);
      await s.stop();
      const strip = (t: string) => normalise(t.replace(/Run completed in .*$/m, "Run completed in T"), s.sock);
      return { w: strip(w.stdout), r: strip(r.stdout), copy };
    });
    assertEquals([a.w, a.r], [b.w, b.r]);
    assertEquals((await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", a.copy, b.copy])).code, 0);
  },
});

Deno.test({
  name: "blkgraph nbd: nbdcopy copies out of and into the export like qemu-nbd",
  ignore: QEMU || skipUnless("nbdcopy"),
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-tools-");
    const top = await makeChain(dir.path);
    const src = `${dir.path}/src.raw`;
    await runOk("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", top, src]);
    const empty = `${dir.path}/empty.raw`;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", empty, "16M"]);
    const [a, b] = await onBoth(dir.path, ["-f", "raw", "-t", "-e", "4"], empty, async (s, copy) => {
      await runOk("nbdcopy", [src, s.uri]);
      const out = `${copy}.out`;
      await runOk("nbdcopy", [s.uri, out]);
      await s.stop();
      return { out: await Deno.readFile(out), image: await Deno.readFile(copy) };
    });
    const want = await Deno.readFile(src);
    ok(a.image.every((v, i) => v === want[i]), "nbdcopy into blkgraph nbd changed the data");
    ok(a.out.every((v, i) => v === b.out[i]) && a.out.length === b.out.length);
    assertEquals(a.image.length, b.image.length);
  },
});

Deno.test({
  name: "blkgraph nbd: an nbdsh script (pwrite, pread, zero, trim, block_status, flush) prints what it prints for qemu-nbd",
  ignore: QEMU || !hasTool("python3") || skipUnless("nbdsh"),
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-tools-");
    const img = `${dir.path}/d.raw`;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", img, "4M"]);
    const script = `
h.pwrite(b"\\x42" * 8192, 65536)
print(h.pread(16, 65536 + 8180))
h.zero(4096, 65536)
h.zero(4096, 131072, nbd.CMD_FLAG_NO_HOLE)
h.trim(4096, 1048576)
h.flush()
print(h.get_size(), h.can_flush(), h.can_fua(), h.can_trim(), h.can_zero(), h.can_fast_zero(), h.is_read_only(), h.can_meta_context("base:allocation"))
try:
    h.pread(4096, 4194304 - 2048)
except nbd.Error as e:
    print("error", e.errno)
`;
    // nbdsh execs python3: /usr/bin first, as the distribution's Python has the module.
    const env = `PATH=/usr/bin:${Deno.env.get("PATH")}`;
    const [a, b] = await onBoth(dir.path, ["-f", "raw", "-t"], img, async (s) => {
      const r = await runOk("env", [env, "nbdsh", "--base-allocation", "-u", s.uri, "-c", script]);
      // Block status on a fresh connection (qemu-nbd answers "data" for ranges its status cache saw on the same one).
      const status = `ents = []
h.block_status(4194304, 0, lambda ctx, off, e, err: ents.append((ctx, off, list(e))) or 0)
print(ents)`;
      const r2 = await runOk("env", [env, "nbdsh", "--base-allocation", "-u", s.uri, "-c", status]);
      return r.stdout + r2.stdout;
    });
    assertEquals(a, b);
    ok(a.includes("BBBB"));
  },
});

Deno.test({
  name: "blkgraph nbd: a file written and read through nbdfuse holds what it holds through qemu-nbd",
  ignore: QEMU || skipUnless("nbdfuse", "fusermount3") || !exists("/dev/fuse"),
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-tools-");
    const img = `${dir.path}/d.raw`;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", img, "4M"]);
    const data = new Uint8Array(196608);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7919) & 0xff;
    await Deno.writeFile(`${dir.path}/in.bin`, data);
    const [a, b] = await onBoth(dir.path, ["-f", "raw", "-t", "-e", "8"], img, async (s, copy) => {
      const mnt = `${s.sock}.mnt`;
      await Deno.mkdir(mnt);
      const fuse = new Deno.Command("nbdfuse", { args: [mnt, s.uri], stdout: "null", stderr: "piped" }).spawn();
      try {
        let up = false;
        for (let i = 0; i < 250 && !up; i++) {
          up = exists(`${mnt}/nbd`);
          if (!up) await new Promise((r) => setTimeout(r, 20));
        }
        ok(up, "nbdfuse did not mount");
        await runOk("dd", [`if=${dir.path}/in.bin`, `of=${mnt}/nbd`, "bs=64k", "seek=3", "conv=notrunc,fsync", "status=none"]);
        await runOk("dd", [`if=${mnt}/nbd`, `of=${copy}.back`, "bs=64k", "skip=2", "count=5", "status=none"]);
      } finally {
        await run("fusermount3", ["-u", mnt]);
        try {
          fuse.kill("SIGTERM");
        } catch { /* exited */ }
        await fuse.status;
        await fuse.stderr.cancel().catch(() => {});
      }
      await s.stop();
      return { back: await Deno.readFile(`${copy}.back`), image: await Deno.readFile(copy) };
    });
    ok(a.back.subarray(65536, 65536 + data.length).every((v, i) => v === data[i]));
    ok(a.back.every((v, i) => v === b.back[i]));
    ok(a.image.every((v, i) => v === b.image[i]));
  },
});

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
