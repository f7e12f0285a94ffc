import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { open } from "../../../mod.ts";
import { serveNbd } from "../../../drivers/nbd/mod.ts";
import { CMD, CMD_FLAG, getU64, REPLY_FLAG_DONE, REPLY_TYPE, TF, view } from "../../../drivers/nbd/_protocol.ts";
import { tempDir } from "../../_helpers/qemu.ts";
import { RawClient, sockPath } from "./_helpers.ts";
import { chunk, gates, go, request, simple, withServer } from "./_server_helpers.ts";

Deno.test("serveNbd() answers EINVAL past the end for reads and ENOSPC for writes", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, false);
    await c.write(request(CMD.READ, (1 << 20) - 512, 1024, 1));
    assertEquals(await simple(c), [22, 1]);
    await c.write(request(CMD.WRITE, 1 << 20, 512, 2, 0, new Uint8Array(512)));
    assertEquals(await simple(c), [28, 2]);
    await c.write(request(CMD.WRITE_ZEROES, 2 ** 52, 512, 3));
    assertEquals(await simple(c), [28, 3]);
    c.close();
  });
});

Deno.test("serveNbd() answers EINVAL to an unknown command and to unknown flags, and carries on", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, true);
    await c.write(request(42, 0, 0, 7));
    const e = await chunk(c);
    assertEquals([e.type, e.cookie, view(e.payload).getUint32(0)], [REPLY_TYPE.ERROR, 7, 22]);
    await c.write(request(CMD.FLUSH, 0, 0, 8, CMD_FLAG.REQ_ONE));
    assertEquals(view((await chunk(c)).payload).getUint32(0), 22);
    await c.write(request(CMD.FLUSH, 0, 0, 9));
    assertEquals(await simple(c), [0, 9]);
    c.close();
  });
});

Deno.test("serveNbd() refuses writes on a read-only export with EPERM and advertises READ_ONLY", async () => {
  await withServer({ readOnly: true }, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    const flags = await go(c, false);
    ok(flags & TF.READ_ONLY);
    ok(!(flags & TF.SEND_TRIM));
    await c.write(request(CMD.WRITE, 0, 4, 1, 0, new Uint8Array(4)));
    assertEquals(await simple(c), [1, 1]);
    await c.write(request(CMD.TRIM, 0, 4096, 2));
    assertEquals(await simple(c), [1, 2]);
    c.close();
  });
});

Deno.test("serveNbd() answers a write longer than the maximum payload, then drops the connection", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, false);
    await c.write(request(CMD.WRITE, 0, (32 << 20) + 1, 1));
    assertEquals(await simple(c), [22, 1]);
    ok(await c.closedByServer());
  });
});

Deno.test("serveNbd() does not apply a write whose payload was cut off, and keeps completed writes", async () => {
  await withServer({ persistent: true }, async (_s, node, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, false);
    await c.write(request(CMD.WRITE, 0, 512, 1, 0, new Uint8Array(512).fill(0xaa)));
    assertEquals(await simple(c), [0, 1]);
    await c.write(request(CMD.WRITE, 4096, 4096, 2, 0, new Uint8Array(1000).fill(0xbb)).subarray(0, 28 + 1000));
    c.close();
    // A fresh client sees the completed write and nothing of the cut-off one.
    const d = await RawClient.unix(sock);
    await go(d, false);
    await d.write(request(CMD.READ, 0, 8192, 3));
    assertEquals(await simple(d), [0, 3]);
    const data = (await d.read(8192))!;
    assertEquals(data[0], 0xaa);
    assertEquals(data[4096], 0);
    d.close();
    assertEquals(node.stats.writes, 1);
  });
});

Deno.test("serveNbd() answers a structured read of unwritten space with a hole chunk", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, true);
    await c.write(request(CMD.WRITE, 0, 4096, 1, 0, new Uint8Array(4096).fill(3)));
    assertEquals(await simple(c), [0, 1]);
    await c.write(request(CMD.READ, 0, 8192, 2));
    const ch = await chunk(c);
    assertEquals([ch.type, ch.flags & REPLY_FLAG_DONE, ch.payload.length], [REPLY_TYPE.OFFSET_DATA, REPLY_FLAG_DONE, 8 + 8192]);
    c.close();
  }, { driver: "memory", size: 1 << 20 });
  // A file node knows its holes (SEEK_DATA): the unwritten half is a hole chunk.
  await using dir = await tempDir("blkgraph-nbd-");
  await Deno.writeFile(`${dir.path}/f.raw`, new Uint8Array(0));
  await Deno.truncate(`${dir.path}/f.raw`, 1 << 20);
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, true);
    await c.write(request(CMD.WRITE, 0, 4096, 1, 0, new Uint8Array(4096).fill(3)));
    assertEquals(await simple(c), [0, 1]);
    await c.write(request(CMD.READ, 0, 1 << 20, 2));
    const a = await chunk(c);
    const b = await chunk(c);
    assertEquals([a.type, a.flags, a.payload.length], [REPLY_TYPE.OFFSET_DATA, 0, 8 + 4096]);
    assertEquals([b.type, b.flags, getU64(view(b.payload), 0, "o"), view(b.payload).getUint32(8)], [
      REPLY_TYPE.OFFSET_HOLE,
      REPLY_FLAG_DONE,
      4096,
      (1 << 20) - 4096,
    ]);
    c.close();
  }, { driver: "raw", file: { driver: "file", filename: `${dir.path}/f.raw` } });
});

Deno.test("serveNbd() answers NBD_CMD_BLOCK_STATUS per selected context, with REQ_ONE one extent", async () => {
  await using dir = await tempDir("blkgraph-nbd-");
  await Deno.writeFile(`${dir.path}/f.raw`, new Uint8Array(0));
  await Deno.truncate(`${dir.path}/f.raw`, 1 << 20);
  await withServer({ allocationDepth: true }, async (_s, node, sock) => {
    await node.pwrite(65536, new Uint8Array(65536).fill(1));
    const c = await RawClient.unix(sock);
    await go(c, true, ["base:allocation", "qemu:allocation-depth"]);
    await c.write(request(CMD.BLOCK_STATUS, 0, 1 << 20, 1));
    const a = await chunk(c);
    const b = await chunk(c);
    const ext = (p: Uint8Array) =>
      Array.from({ length: (p.length - 4) / 8 }, (_, i) => [view(p).getUint32(4 + 8 * i), view(p).getUint32(8 + 8 * i)]);
    assertEquals(ext(a.payload), [[65536, 3], [65536, 0], [(1 << 20) - 131072, 3]]);
    assertEquals(ext(b.payload), [[1 << 20, 1]]);
    assertEquals(b.flags & REPLY_FLAG_DONE, REPLY_FLAG_DONE);
    await c.write(request(CMD.BLOCK_STATUS, 0, 4096, 2, CMD_FLAG.REQ_ONE));
    assertEquals(ext((await chunk(c)).payload), [[4096, 3]]);
    assertEquals(ext((await chunk(c)).payload), [[4096, 1]]);
    c.close();
  }, { driver: "raw", file: { driver: "file", filename: `${dir.path}/f.raw` } });
});

Deno.test("serveNbd() answers block status without a selected context with EINVAL", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, true);
    await c.write(request(CMD.BLOCK_STATUS, 0, 4096, 1));
    assertEquals(view((await chunk(c)).payload).getUint32(0), 22);
    c.close();
  });
});

Deno.test("serveNbd() close() finishes requests in flight, answers new ones ESHUTDOWN, flushes and closes the node", async () => {
  await using dir = await tempDir("blkgraph-nbd-");
  const node = await open({ driver: "test-gate", size: 1 << 20 });
  const sock = sockPath(dir.path);
  const s = await serveNbd(node, { socket: sock, closeNode: true });
  const c = await RawClient.unix(sock);
  await go(c, false);
  let open_!: () => void;
  gates.gate = new Promise((r) => (open_ = r));
  await c.write(request(CMD.WRITE, 0, 4096, 1, 0, new Uint8Array(4096).fill(5)));
  for (let i = 0; i < 1000 && gates.entered === 0; i++) await new Promise((r) => setTimeout(r, 2));
  const closing = s.close();
  await c.write(request(CMD.READ, 0, 512, 2));
  assertEquals(await simple(c), [108, 2]);
  ok(!node.closed);
  open_();
  assertEquals(await simple(c), [0, 1]);
  await closing;
  ok(node.closed);
  assertEquals(node.stats.writes, 1);
  ok(await c.closedByServer());
  await s.finished;
});

Deno.test("serveNbd() passes FUA, trims with discard=unmap and refuses FAST_ZERO without a fast path", async () => {
  await withServer({ discard: "unmap" }, async (_s, node, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, false);
    await c.write(request(CMD.WRITE, 0, 512, 1, CMD_FLAG.FUA, new Uint8Array(512).fill(1)));
    assertEquals(await simple(c), [0, 1]);
    await c.write(request(CMD.TRIM, 0, 512, 2));
    assertEquals(await simple(c), [0, 2]);
    assertEquals(node.stats.discards, 1);
    await c.write(request(CMD.WRITE_ZEROES, 0, 4096, 3, CMD_FLAG.FAST_ZERO));
    assertEquals(await simple(c), [0, 3]);
    c.close();
  });
  await withServer({}, async (_s, node, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, false);
    await c.write(request(CMD.TRIM, 0, 512, 2));
    assertEquals(await simple(c), [0, 2]);
    assertEquals(node.stats.discards, 0);
    c.close();
  });
  // A filter without write-zeroes over a driver without it: FAST_ZERO must fail with ENOTSUP, not write.
  await withServer({}, async (_s, node, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, false);
    await c.write(request(CMD.WRITE_ZEROES, 0, 4096, 3, CMD_FLAG.FAST_ZERO));
    assertEquals(await simple(c), [95, 3]);
    assertEquals(node.stats.writes, 0);
    c.close();
  }, { driver: "raw", file: { driver: "test-nozero", size: 1 << 20 } });
});

Deno.test("serveNbd() answers a failing read with an error chunk (structured) or an error without payload (simple), then goes on", async () => {
  await withServer({ readOnly: true }, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, true);
    await c.write(request(CMD.READ, 61440, 8192, 1));
    const e = await chunk(c);
    assertEquals([e.type, e.flags, e.cookie, view(e.payload).getUint32(0)], [REPLY_TYPE.ERROR, REPLY_FLAG_DONE, 1, 5]);
    ok(new TextDecoder().decode(e.payload.subarray(6)).includes("injected"));
    await c.write(request(CMD.READ, 0, 4096, 2));
    const d = await chunk(c);
    assertEquals([d.type, d.payload.length, d.payload[8]], [REPLY_TYPE.OFFSET_DATA, 8 + 4096, 1]);
    c.close();
    const s2 = await RawClient.unix(sock);
    await go(s2, false);
    await s2.write(request(CMD.READ, 61440, 8192, 3));
    assertEquals(await simple(s2), [5, 3]);
    await s2.write(request(CMD.READ, 0, 16, 4));
    assertEquals(await simple(s2), [0, 4]);
    assertEquals((await s2.read(16))![0], 1);
    s2.close();
  }, { driver: "test-faulty" });
});
