import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import { BlockError, open, registerDriver } from "../../../mod.ts";
import { serveNbd } from "../../../drivers/nbd/mod.ts";
import { parseNbdFilename } from "../../../drivers/nbd/client.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { cli, normaliseTimes } from "../../cli/_run.ts";
import { nbdkit, qemuNbd, sockPath } from "./_helpers.ts";

const QEMU = skipUnless("qemu-img", "qemu-io", "qemu-nbd");
const NBDKIT = skipUnless("nbdkit");

Deno.test("parseNbdFilename() reads nbd://, nbd+unix:// and QEMU's legacy nbd: forms", () => {
  assertEquals(parseNbdFilename("nbd://127.0.0.1:10810/disk%20a"), {
    "server.type": "inet",
    "server.host": "127.0.0.1",
    "server.port": "10810",
    export: "disk a",
    filename: "nbd://127.0.0.1:10810/disk%20a",
  });
  assertEquals(parseNbdFilename("nbd://[::1]/"), {
    "server.type": "inet",
    "server.host": "::1",
    "server.port": "10809",
    // No export option for an empty name, as QEMU's nbd_parse_uri (the refreshed name has no slash then).
    filename: "nbd://[::1]:10809",
  });
  assertEquals(parseNbdFilename("nbd+unix:///x?socket=/run/s.sock"), {
    "server.type": "unix",
    "server.path": "/run/s.sock",
    export: "x",
    filename: "nbd+unix:///x?socket=/run/s.sock",
  });
  assertEquals(parseNbdFilename("nbd:localhost:10809:exportname=e"), {
    "server.type": "inet",
    "server.host": "localhost",
    "server.port": "10809",
    export: "e",
    filename: "nbd://localhost:10809/e",
  });
  assertEquals(parseNbdFilename("nbd:unix:/tmp/s:exportname=e"), {
    "server.type": "unix",
    "server.path": "/tmp/s",
    export: "e",
    filename: "nbd+unix:///e?socket=/tmp/s",
  });
  for (const bad of ["nbd+unix:///x", "nbd+unix://host/x?socket=/s", "nbd://", "nbd://h/x?y=1", "nbd:"]) {
    try {
      parseNbdFilename(bad);
      ok(false, bad);
    } catch (e) {
      ok(e instanceof BlockError && e.code === "EINVAL" && e.message.includes(bad), (e as Error).message);
    }
  }
});

Deno.test("nbd driver: many requests in flight against blkgraph's server come back right", async () => {
  await using dir = await tempDir("blkgraph-nbd-c-");
  const disk = await open({ driver: "memory", size: 8 << 20 });
  const server = await serveNbd(disk, { socket: sockPath(dir.path), closeNode: true });
  const remote = await open(server.uri);
  await Promise.all(Array.from({ length: 128 }, (_, i) => remote.pwrite(i * 65536, new Uint8Array(65536).fill(i + 1))));
  const bufs = Array.from({ length: 128 }, () => new Uint8Array(65536));
  await Promise.all(bufs.map((b, i) => remote.pread(i * 65536, b)));
  ok(bufs.every((b, i) => b[0] === i + 1 && b[65535] === i + 1));
  // Larger than the 32 MiB payload limit: the core splits at the server's maximum.
  const big = new Uint8Array(8 << 20);
  await remote.pread(0, big);
  assertEquals(big[(8 << 20) - 1], 128);
  await remote.close();
  await server.close();
});

// A memory driver with 4 KiB request alignment, to see block sizes travel to the client.
registerDriver({
  name: "test-align4k",
  kind: "protocol",
  open(ctx) {
    const data = new Uint8Array(Number(ctx.options.size ?? 65536));
    return Promise.resolve({
      limits: { requestAlignment: 4096 },
      getLength: () => data.length,
      pread: (o, b) => {
        if (o % 4096 || b.length % 4096) throw new BlockError("EINVAL", `unaligned read ${o}+${b.length}`);
        b.set(data.subarray(o, o + b.length));
      },
      pwrite: (o, d) => {
        if (o % 4096 || d.length % 4096) throw new BlockError("EINVAL", `unaligned write ${o}+${d.length}`);
        data.set(d, o);
      },
    });
  },
});

Deno.test("nbd driver: takes the server's minimum block size as its request alignment", async () => {
  await using dir = await tempDir("blkgraph-nbd-c-");
  const disk = await open({ driver: "test-align4k", size: 1 << 20 });
  const server = await serveNbd(disk, { socket: sockPath(dir.path), closeNode: true });
  const remote = await open(server.uri);
  // The URL opens a probed raw node on the nbd protocol node, as in QEMU.
  assertEquals(remote.driver.name, "raw");
  assertEquals(remote.file!.limits.requestAlignment, 4096);
  await remote.pwrite(100, new Uint8Array([1, 2, 3]));
  const b = new Uint8Array(5);
  await remote.pread(99, b);
  assertEquals([...b], [0, 1, 2, 3, 0]);
  await remote.close();
  await server.close();
});

Deno.test("nbd driver: names the export the server does not have, and refuses a read-only export read-write", async () => {
  await using dir = await tempDir("blkgraph-nbd-c-");
  const disk = await open({ driver: "memory", size: 65536 });
  const server = await serveNbd(disk, { socket: sockPath(dir.path), name: "a", readOnly: true, closeNode: true });
  await rejects(open(server.uri.replace("///a", "///b")), (e: BlockError) => e.code === "ENOENT" && e.message.includes("'b'"));
  await rejects(open(server.uri), (e: BlockError) => e.code === "EROFS" && e.message.includes("read-only"));
  const ro = await open(server.uri, { readOnly: true });
  assertEquals(ro.length, 65536);
  await ro.close();
  await server.close();
  await rejects(open(server.uri), (e: BlockError) => e.code === "ENOENT" && e.message.includes("Cannot connect to NBD server"));
});

Deno.test({
  name: "nbd driver: reads a qemu-nbd -A backing chain as qemu-img does, with blkgraph map equal to qemu-img map",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-c-");
    const d = dir.path;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${d}/base.qcow2`, "8M"]);
    await runOk("qemu-io", ["-c", "write -P 0x11 0 1M", `${d}/base.qcow2`]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${d}/top.qcow2`]);
    await runOk("qemu-io", ["-c", "write -P 0x33 512k 64k", "-c", "write -z 4M 1M", `${d}/top.qcow2`]);
    const s = await qemuNbd(sockPath(d, "q"), ["-r", "-A", "-t", "-e", "4"], `${d}/top.qcow2`);
    try {
      // qemu-img 7.2 has no "compressed" field yet.
      const ours = await cli(["map", "--output=json", "-f", "raw", s.uri]);
      ours.stdout = ours.stdout.replaceAll(/, "compressed": (true|false)/g, "");
      const theirs = await runOk("qemu-img", ["map", "--output=json", "-f", "raw", s.uri]);
      assertEquals(ours.stdout, theirs.stdout);
      await runOk("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", `${d}/top.qcow2`, `${d}/want.raw`]);
      const want = await Deno.readFile(`${d}/want.raw`);
      const node = await open(s.uri, { readOnly: true });
      const got = new Uint8Array(want.length);
      await node.pread(0, got);
      ok(got.every((v, i) => v === want[i]));
      // Like any protocol node (and QEMU's client), depth 0 everywhere by default.
      for (const off of [512 << 10, 0, 6 << 20]) assertEquals((await node.file!.blockStatus(off, 4096)).depth, 0);
      await node.close();
      const strict = await open({ driver: "nbd", "server.type": "unix", "server.path": s.sock, "allocation-depth": "on" }, {
        readOnly: true,
      });
      // With allocation-depth=on: 1 in the overlay, 2 in the base, 0 where no layer allocates.
      const depths = [];
      for (const off of [512 << 10, 0, 6 << 20]) depths.push((await strict.blockStatus(off, 4096)).depth);
      assertEquals(depths, [0, 1, 0]);
      assertEquals((await strict.blockStatus(6 << 20, 4096)).allocated, false);
      assertEquals((await strict.blockStatus(0, 4096)).allocated, true);
      await strict.close();
    } finally {
      await s.stop();
    }
  },
});

Deno.test({
  name: "nbd driver: map of the bare node, plain and with x-dirty-bitmap=qemu:allocation-depth, equals qemu-img map (depth 0)",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-c-");
    const d = dir.path;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${d}/base.qcow2`, "4M"]);
    await runOk("qemu-io", ["-c", "write 0 2M", `${d}/base.qcow2`]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${d}/top.qcow2`, "4M"]);
    await runOk("qemu-io", ["-c", "write 1M 2M", `${d}/top.qcow2`]);
    const s = await qemuNbd(sockPath(d, "a"), ["-r", "-A", "-t", "-f", "qcow2"], `${d}/top.qcow2`);
    try {
      const img = `driver=nbd,server.type=unix,server.path=${s.sock}`;
      for (const spec of [img, `${img},x-dirty-bitmap=qemu:allocation-depth`]) {
        const ours = await cli(["map", "--output=json", "--image-opts", spec]);
        ours.stdout = ours.stdout.replaceAll(/, "compressed": (true|false)/g, "");
        const theirs = await runOk("qemu-img", ["map", "--output=json", "--image-opts", spec]);
        assertEquals(ours.stdout, theirs.stdout, spec);
      }
    } finally {
      await s.stop();
    }
  },
});

Deno.test({
  name: "nbd driver: -f qcow2 on an nbdkit file export reads what qemu-io reads",
  ignore: QEMU || NBDKIT,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-c-");
    const img = `${dir.path}/d.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "4M"]);
    await runOk("qemu-io", ["-c", "write -P 0x42 64k 128k", img]);
    const s = await nbdkit(sockPath(dir.path, "k"), ["file", img]);
    try {
      // The last write needs a new cluster past the export's end: ENOSPC, for qemu-io too.
      const cmds = ["read -P 0x42 64k 128k", "read -P 0 0 64k", "write -P 7 1M 4k"].flatMap((c) => ["-c", c]);
      const ours = await cli(["io", "-f", "qcow2", ...cmds, s.uri]);
      const theirs = await run("qemu-io", ["-f", "qcow2", ...cmds, s.uri]);
      assertEquals(normaliseTimes(ours.stdout + ours.stderr), normaliseTimes(theirs.stdout + theirs.stderr));
      ok(ours.stdout.includes("read 131072/131072 bytes at offset 65536"));
      const check = await run("qemu-img", ["check", "-U", img]);
      assertEquals(check.code, 0, check.stdout + check.stderr);
    } finally {
      await s.stop();
    }
  },
});

Deno.test({
  name: "nbd driver: writes, zeroes, trims and flushes on nbdkit memory, and block status sees the zeroes",
  ignore: NBDKIT,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-c-");
    const s = await nbdkit(sockPath(dir.path, "k"), ["memory", "4M"]);
    try {
      const node = await open(s.uri);
      await node.pwrite(0, new Uint8Array(1 << 20).fill(9), { fua: true });
      await node.pwriteZeroes(65536, 65536, { mayUnmap: true });
      await node.pdiscard(1 << 19, 4096);
      await node.flush();
      const b = new Uint8Array(65536);
      await node.pread(65536, b);
      ok(b.every((v) => v === 0));
      await node.pread(0, b);
      ok(b.every((v) => v === 9));
      const st = await node.blockStatus(65536, 1 << 20);
      assertEquals([st.data, st.zero, st.length], [false, true, 65536]);
      assertEquals((await node.blockStatus(2 << 20, 4096)).zero, true);
      await node.close();
    } finally {
      await s.stop();
    }
  },
});

Deno.test({
  name: "nbd driver: an nbdkit error-filter failure is an EIO naming the server, and the connection stays usable",
  ignore: NBDKIT,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-c-");
    const file = `${dir.path}/trigger`;
    const s = await nbdkit(sockPath(dir.path, "k"), [
      "--filter=error",
      "memory",
      "1M",
      "error=EIO",
      "error-pread-rate=100%",
      `error-pread-file=${file}`,
    ]);
    try {
      const node = await open(s.uri);
      const b = new Uint8Array(4096);
      await node.pread(0, b);
      await Deno.writeTextFile(file, "");
      await rejects(node.pread(0, b), (e: BlockError) => e.code === "EIO" && e.message.includes(s.sock));
      await Deno.remove(file);
      await node.pread(0, b);
      await node.close();
    } finally {
      await s.stop();
    }
  },
});

Deno.test({
  name: "nbd driver: requests in flight on an nbdkit delay-filter export fail with EIO when the server dies, later ones too",
  ignore: NBDKIT,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-c-");
    const s = await nbdkit(sockPath(dir.path, "k"), ["--filter=delay", "memory", "1M", "rdelay=20"]);
    // An explicit format: probing would read (and wait 20 s).
    const node = await open(s.uri, { format: "raw" });
    const reads = Array.from({ length: 8 }, (_, i) => node.pread(i * 4096, new Uint8Array(4096)).then(() => "ok", (e) => e));
    // Give the reads time to reach nbdkit (they must fail with EIO whether they did or not).
    await new Promise((r) => setTimeout(r, 50));
    Deno.kill(s.pid, "SIGKILL");
    await s.status;
    const results = await Promise.all(reads);
    ok(results.every((r) => r instanceof BlockError && r.code === "EIO" && r.message.includes(s.sock)), String(results[0]));
    await rejects(node.pwrite(0, new Uint8Array(512)), (e: BlockError) => e.code === "EIO");
    await node.close();
    await s.stop();
  },
});

Deno.test({
  name: "nbd driver: blkgraph info, map and convert on an nbd:// URL print what qemu-img prints",
  ignore: QEMU,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-c-");
    const img = `${dir.path}/d.raw`;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", img, "4M"]);
    await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 1M 64k", img]);
    const node = await open({ driver: "raw", file: { driver: "file", filename: img } }, { readOnly: true });
    const server = await serveNbd(node, { hostname: "127.0.0.1", port: 0, closeNode: true });
    try {
      const uri = server.uri;
      for (const args of [["info", uri], ["map", "--output=json", "-f", "raw", uri], ["map", "-f", "raw", uri]]) {
        const ours = await cli(args);
        ours.stdout = ours.stdout.replaceAll(/, "compressed": (true|false)/g, "");
        const theirs = await runOk("qemu-img", args);
        assertEquals(ours.stdout, theirs.stdout, args.join(" "));
      }
      const out = await cli(["convert", "-f", "raw", "-O", "qcow2", uri, `${dir.path}/out.qcow2`]);
      assertEquals(out.code, 0, out.stderr);
      assertEquals((await runOk("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", img, `${dir.path}/out.qcow2`])).code, 0);
    } finally {
      await server.close();
    }
  },
});
