/**
 * The nbd client against an oldstyle server (the handshake the iotests'
 * nbd-fault-injector.py --classic-negotiation speaks): a tiny one here,
 * memory-backed, simple replies only. blkgraph's client and qemu-io get the
 * same answers and the same refusals from it.
 */

import { deepStrictEqual as assertEquals, rejects } from "node:assert/strict";
import { type BlockError, open } from "../../../mod.ts";
import { cli, normaliseTimes } from "../../cli/_run.ts";
import { run, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const NBDMAGIC = 0x4e42444d41474943n;
const CLIENT_MAGIC = 0x00420281861253n;

async function readFull(conn: Deno.Conn, n: number): Promise<Uint8Array | undefined> {
  const buf = new Uint8Array(n);
  for (let at = 0; at < n;) {
    const r = await conn.read(buf.subarray(at));
    if (r === null) return undefined;
    at += r;
  }
  return buf;
}

/** Serves `disk` with the oldstyle handshake on a Unix socket, one client at a time, until closed. */
function oldstyleServer(path: string, disk: Uint8Array, opts: { dropWrites?: number } = {}): { close(): Promise<void> } {
  const listener = Deno.listen({ transport: "unix", path });
  // The first `dropWrites` writes are taken and the connection closed without a reply (nbd-fault-injector's "data" rule).
  let drop = opts.dropWrites ?? 0;
  const serve = async (conn: Deno.Conn) => {
    const hello = new Uint8Array(152);
    const dv = new DataView(hello.buffer);
    dv.setBigUint64(0, NBDMAGIC);
    dv.setBigUint64(8, CLIENT_MAGIC);
    dv.setBigUint64(16, BigInt(disk.length));
    dv.setUint32(24, 1); // NBD_FLAG_HAS_FLAGS
    await conn.write(hello);
    for (;;) {
      const h = await readFull(conn, 28);
      if (!h) break;
      const r = new DataView(h.buffer);
      const type = r.getUint16(6), offset = Number(r.getBigUint64(16)), len = r.getUint32(24);
      const reply = new Uint8Array(16);
      const w = new DataView(reply.buffer);
      w.setUint32(0, 0x67446698);
      reply.set(h.subarray(8, 16), 8);
      if (type === 2) break; // NBD_CMD_DISC
      if (type === 1) {
        const data = (await readFull(conn, len))!;
        if (drop > 0) {
          drop--;
          break;
        }
        disk.set(data, offset);
      }
      await conn.write(reply);
      if (type === 0) await conn.write(disk.subarray(offset, offset + len));
    }
    conn.close();
  };
  const loop = (async () => {
    for await (const conn of listener) await serve(conn).catch(() => {});
  })();
  return {
    async close() {
      listener.close();
      await loop.catch(() => {});
    },
  };
}

Deno.test("nbd client: reads and writes an oldstyle server's one export (size and flags from the oldstyle greeting)", async () => {
  await using d = await tempDir();
  const disk = new Uint8Array(1 << 20).fill(3);
  const server = oldstyleServer(`${d.path}/s`, disk);
  try {
    await using n = await open({ driver: "nbd", "server.type": "unix", "server.path": `${d.path}/s` });
    assertEquals(n.length, 1 << 20);
    await n.pwrite(4096, new Uint8Array(512).fill(9));
    const back = new Uint8Array(1024);
    await n.pread(3584, back);
    assertEquals([back[0], back[511], back[512], back[1023]], [3, 3, 9, 9]);
    assertEquals(disk[4096], 9);
  } finally {
    await server.close();
  }
});

Deno.test("nbd client: an oldstyle server refuses an export name, with QEMU's message", async () => {
  await using d = await tempDir();
  const server = oldstyleServer(`${d.path}/s`, new Uint8Array(65536));
  try {
    await rejects(
      open({ driver: "nbd", "server.type": "unix", "server.path": `${d.path}/s`, export: "x" }),
      (e: BlockError) => e.message.includes("Server does not support non-empty export names"),
    );
  } finally {
    await server.close();
  }
});

Deno.test({
  name: "nbd client: qemu-io and blkgraph io print the same for the same commands on an oldstyle server",
  ignore: skipUnless("qemu-io"),
  async fn() {
    await using d = await tempDir();
    const sock = `${d.path}/s`;
    const server = oldstyleServer(sock, new Uint8Array(1 << 20));
    try {
      const cmds = ["write -P 7 0 64k", "read -P 7 0 64k", "read -P 0 64k 64k"].flatMap((c) => ["-c", c]);
      const spec = `driver=nbd,server.type=unix,server.path=${sock}`;
      const theirs = await run("qemu-io", [...cmds, "--image-opts", spec]);
      const ours = await cli(["io", ...cmds, "--image-opts", spec]);
      assertEquals(ours.code, theirs.code);
      assertEquals(normaliseTimes(ours.stdout), normaliseTimes(theirs.stdout));
      const q = await run("qemu-io", ["-c", "read 0 512", "--image-opts", `${spec},export=x`]);
      const r = await cli(["io", "-c", "read 0 512", "--image-opts", `${spec},export=x`]);
      assertEquals(r.stderr.replace(/^[^:]*: /, ""), q.stderr.replace(/^[^:]*: /, ""));
    } finally {
      await server.close();
    }
  },
});

Deno.test("nbd client: with reconnect-delay, a write whose connection drops is sent again on a new connection", async () => {
  await using d = await tempDir();
  const disk = new Uint8Array(65536);
  const server = oldstyleServer(`${d.path}/s`, disk, { dropWrites: 1 });
  try {
    await using n = await open({ driver: "nbd", "server.type": "unix", "server.path": `${d.path}/s`, "reconnect-delay": 2 });
    await n.pwrite(0, new Uint8Array(4096).fill(7));
    assertEquals(disk[4095], 7);
  } finally {
    await server.close();
  }
});

Deno.test("nbd client: without reconnect-delay, a dropped connection fails the write with EIO", async () => {
  await using d = await tempDir();
  const server = oldstyleServer(`${d.path}/s`, new Uint8Array(65536), { dropWrites: 1 });
  try {
    await using n = await open({ driver: "nbd", "server.type": "unix", "server.path": `${d.path}/s` });
    await rejects(n.pwrite(0, new Uint8Array(4096).fill(7)), (e: BlockError) => e.code === "EIO");
  } finally {
    await server.close();
  }
});

Deno.test({
  name: "nbd client: qemu-io with reconnect-delay also writes through a dropped connection, and prints what blkgraph io prints",
  ignore: skipUnless("qemu-io"),
  async fn() {
    await using d = await tempDir();
    const outs: string[] = [];
    for (const tool of ["qemu-io", "blkgraph"]) {
      const disk = new Uint8Array(65536);
      const sock = `${d.path}/${tool}`;
      const server = oldstyleServer(sock, disk, { dropWrites: 1 });
      try {
        const args = ["-c", "write -P 7 0 4k", "--image-opts", `driver=nbd,server.type=unix,server.path=${sock},reconnect-delay=2`];
        const r = tool === "qemu-io" ? await run("qemu-io", args) : await cli(["io", ...args]);
        outs.push(normaliseTimes(r.stdout));
        assertEquals(disk[4095], 7, tool);
      } finally {
        await server.close();
      }
    }
    assertEquals(outs[1], outs[0]);
  },
});
