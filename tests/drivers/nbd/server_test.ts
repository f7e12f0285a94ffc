import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { BlockError, type BlockNode, open, registerDriver, serveNbd } from "../../../mod.ts";
import type { NbdServeOptions, NbdServer } from "../../../drivers/nbd/server.ts";
import {
  CMD,
  CMD_FLAG,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
  FLAG_C_FIXED_NEWSTYLE,
  getU64,
  INFO,
  OPT,
  REP,
  REPLY_FLAG_DONE,
  REPLY_TYPE,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  TF,
  view,
} from "../../../drivers/nbd/_protocol.ts";
import { tempDir } from "../../_helpers/qemu.ts";
import { RawClient, sockPath } from "./_helpers.ts";

// A protocol driver that can only read and write: no fast write-zeroes.
registerDriver({
  name: "test-nozero",
  kind: "protocol",
  open(ctx) {
    const data = new Uint8Array(Number(ctx.options.size ?? 65536));
    return Promise.resolve({
      getLength: () => data.length,
      pread: (o, b) => void b.set(data.subarray(o, o + b.length)),
      pwrite: (o, d) => void data.set(d, o),
    });
  },
});

// A memory driver whose writes wait until the test opens the gate.
let gate: Promise<void> = Promise.resolve();
let gateEntered = 0;
registerDriver({
  name: "test-gate",
  kind: "protocol",
  open(ctx) {
    const data = new Uint8Array(Number(ctx.options.size ?? 65536));
    return Promise.resolve({
      getLength: () => data.length,
      pread: (o, b) => void b.set(data.subarray(o, o + b.length)),
      pwrite: async (o, d) => {
        gateEntered++;
        await gate;
        data.set(d, o);
      },
      flush: () => {},
    });
  },
});

async function withServer(
  opts: NbdServeOptions,
  fn: (s: NbdServer, node: BlockNode, sock: string) => Promise<void>,
  spec: Record<string, unknown> = { driver: "memory", size: 1 << 20 },
): Promise<void> {
  await using dir = await tempDir("blkgraph-nbd-");
  const node = await open(spec);
  const sock = sockPath(dir.path);
  const s = await serveNbd(node, { socket: sock, closeNode: true, ...opts });
  try {
    await fn(s, node, sock);
  } finally {
    await s.close();
  }
}

/** Handshake up to transmission; returns the export flags. */
async function go(c: RawClient, structured = true, contexts: string[] = []): Promise<number> {
  await c.greet();
  if (structured) assertEquals((await c.option(OPT.STRUCTURED_REPLY)).type, REP.ACK);
  if (contexts.length) {
    let r = await c.option(OPT.SET_META_CONTEXT, encodeMetaContextRequest("", contexts));
    while (r.type === REP.META_CONTEXT) r = await c.reply(OPT.SET_META_CONTEXT);
    assertEquals(r.type, REP.ACK);
  }
  let r = await c.option(OPT.GO, encodeInfoRequest("", [INFO.BLOCK_SIZE]));
  let flags = -1;
  while (r.type === REP.INFO) {
    if (view(r.data).getUint16(0) === INFO.EXPORT) flags = view(r.data).getUint16(10);
    r = await c.reply(OPT.GO);
  }
  assertEquals(r.type, REP.ACK);
  return flags;
}

function request(type: number, offset: number, length: number, cookie: number, flags = 0, data?: Uint8Array): Uint8Array {
  const b = new Uint8Array(28 + (data?.length ?? 0));
  encodeRequest(view(b), 0, { flags, type, cookieHi: 0, cookieLo: cookie, offset, length });
  if (data) b.set(data, 28);
  return b;
}

/** Reads a simple reply: [error, cookie]. */
async function simple(c: RawClient): Promise<[number, number]> {
  const h = (await c.read(16))!;
  assertEquals(view(h).getUint32(0), SIMPLE_REPLY_MAGIC);
  return [view(h).getUint32(4), view(h).getUint32(12)];
}

/** Reads one structured chunk. */
async function chunk(c: RawClient): Promise<{ flags: number; type: number; cookie: number; payload: Uint8Array }> {
  const h = (await c.read(20))!;
  const dv = view(h);
  assertEquals(dv.getUint32(0), STRUCTURED_REPLY_MAGIC);
  const len = dv.getUint32(16);
  return { flags: dv.getUint16(4), type: dv.getUint16(6), cookie: dv.getUint32(12), payload: (await c.read(len))! };
}

Deno.test("serveNbd() answers ERR_UNSUP to an unknown option and keeps parsing", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await c.greet();
    const r = await c.option(77, new Uint8Array([1, 2, 3]));
    assertEquals(r.type, REP.ERR_UNSUP);
    assertEquals((await c.option(OPT.STRUCTURED_REPLY)).type, REP.ACK);
    c.close();
  });
});

Deno.test("serveNbd() lists its export with the description for NBD_OPT_LIST", async () => {
  await withServer({ name: "disk0", description: "test disk" }, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await c.greet();
    const r = await c.option(OPT.LIST);
    assertEquals(r.type, REP.SERVER);
    const len = view(r.data).getUint32(0);
    assertEquals(new TextDecoder().decode(r.data.subarray(4, 4 + len)), "disk0");
    assertEquals(new TextDecoder().decode(r.data.subarray(4 + len)), "test disk");
    assertEquals((await c.reply(OPT.LIST)).type, REP.ACK);
    assertEquals((await c.option(OPT.LIST, new Uint8Array(1))).type, REP.ERR_INVALID);
    c.close();
  });
});

Deno.test("serveNbd() answers NBD_OPT_INFO with export, block size and description, and ERR_UNKNOWN for other names", async () => {
  await withServer({ name: "a", description: "desc" }, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await c.greet();
    let r = await c.option(OPT.INFO, encodeInfoRequest("a", [INFO.DESCRIPTION, INFO.BLOCK_SIZE]));
    const seen = new Map<number, Uint8Array>();
    while (r.type === REP.INFO) {
      seen.set(view(r.data).getUint16(0), r.data);
      r = await c.reply(OPT.INFO);
    }
    assertEquals(r.type, REP.ACK);
    assertEquals(getU64(view(seen.get(INFO.EXPORT)!), 2, "size"), 1 << 20);
    assertEquals(new TextDecoder().decode(seen.get(INFO.DESCRIPTION)!.subarray(2)), "desc");
    assertEquals([...seen.get(INFO.BLOCK_SIZE)!.subarray(2)].length, 12);
    assertEquals((await c.option(OPT.INFO, encodeInfoRequest("b", []))).type, REP.ERR_UNKNOWN);
    assertEquals((await c.option(OPT.GO, new Uint8Array([0, 0, 0, 9, 1]))).type, REP.ERR_INVALID);
    c.close();
  });
});

Deno.test("serveNbd() acknowledges NBD_OPT_ABORT and closes", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await c.greet();
    assertEquals((await c.option(OPT.ABORT)).type, REP.ACK);
    ok(await c.closedByServer());
  });
});

Deno.test("serveNbd() sends 124 zero bytes after NBD_OPT_EXPORT_NAME unless NO_ZEROES was negotiated", async () => {
  await withServer({}, async (_s, _n, sock) => {
    for (const [flags, extra] of [[FLAG_C_FIXED_NEWSTYLE, 124], [FLAG_C_FIXED_NEWSTYLE | 2, 0]]) {
      const c = await RawClient.unix(sock);
      await c.greet(flags);
      await c.write(encodeOption(OPT.EXPORT_NAME));
      const b = (await c.read(10 + extra))!;
      assertEquals(getU64(view(b), 0, "size"), 1 << 20);
      ok(view(b).getUint16(8) & TF.HAS_FLAGS);
      await c.write(request(CMD.READ, 0, 512, 5));
      assertEquals(await simple(c), [0, 5]);
      assertEquals((await c.read(512))!.length, 512);
      c.close();
    }
  });
});

Deno.test("serveNbd() drops a client that sends unknown client flags or a bad option magic", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await c.greet(0x80);
    ok(await c.closedByServer());
    const d = await RawClient.unix(sock);
    await d.greet();
    const opt = encodeOption(OPT.LIST);
    opt[0] ^= 0xff;
    await d.write(opt);
    ok(await d.closedByServer());
  });
});

Deno.test("serveNbd() refuses an oversized option with ERR_TOO_BIG and stays in sync", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await c.greet();
    assertEquals((await c.option(OPT.INFO, new Uint8Array(200 << 10))).type, REP.ERR_TOO_BIG);
    assertEquals((await c.option(OPT.STRUCTURED_REPLY)).type, REP.ACK);
    c.close();
  });
});

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

Deno.test("serveNbd() lists meta contexts by namespace and sets only exact names", async () => {
  await withServer({ allocationDepth: true }, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await c.greet();
    assertEquals((await c.option(OPT.LIST_META_CONTEXT, encodeMetaContextRequest("", []))).type, REP.ERR_INVALID);
    await c.option(OPT.STRUCTURED_REPLY);
    const names = async (opt: number, q: string[]) => {
      const out: string[] = [];
      let r = await c.option(opt, encodeMetaContextRequest("", q));
      while (r.type === REP.META_CONTEXT) {
        out.push(new TextDecoder().decode(r.data.subarray(4)));
        r = await c.reply(opt);
      }
      assertEquals(r.type, REP.ACK);
      return out;
    };
    assertEquals(await names(OPT.LIST_META_CONTEXT, []), ["base:allocation", "qemu:allocation-depth"]);
    assertEquals(await names(OPT.LIST_META_CONTEXT, ["qemu:"]), ["qemu:allocation-depth"]);
    assertEquals(await names(OPT.SET_META_CONTEXT, ["qemu:", "base:allocation", "x-other:thing"]), ["base:allocation"]);
    c.close();
  });
});

Deno.test("serveNbd() advertises CAN_MULTI_CONN unless one client at a time, and a flush on one connection flushes the node", async () => {
  await using dir = await tempDir("blkgraph-nbd-");
  await Deno.writeFile(`${dir.path}/f.raw`, new Uint8Array(1 << 20));
  await withServer({}, async (_s, node, sock) => {
    const a = await RawClient.unix(sock);
    const b = await RawClient.unix(sock);
    ok((await go(a, false)) & TF.CAN_MULTI_CONN);
    await go(b, false);
    await a.write(request(CMD.WRITE, 0, 512, 1, 0, new Uint8Array(512).fill(9)));
    assertEquals(await simple(a), [0, 1]);
    const before = node.flushCount;
    await b.write(request(CMD.FLUSH, 0, 0, 2));
    assertEquals(await simple(b), [0, 2]);
    ok(node.flushCount > before);
    a.close();
    b.close();
  }, { driver: "raw", file: { driver: "file", filename: `${dir.path}/f.raw` } });
  await withServer({ maxConnections: 1 }, async (_s, _n, sock) => {
    const a = await RawClient.unix(sock);
    ok(!((await go(a, false)) & TF.CAN_MULTI_CONN));
    a.close();
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
  gate = new Promise((r) => (open_ = r));
  await c.write(request(CMD.WRITE, 0, 4096, 1, 0, new Uint8Array(4096).fill(5)));
  for (let i = 0; i < 1000 && gateEntered === 0; i++) await new Promise((r) => setTimeout(r, 2));
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

Deno.test("serveNbd() drops a client that does not finish the handshake in time", async () => {
  await withServer({ handshakeTimeout: 100 }, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await c.read(18);
    ok(await c.closedByServer());
  });
});

Deno.test("serveNbd() refuses -B for a bitmap it does not have, naming it", async () => {
  const node = await open({ driver: "memory", size: 65536 });
  try {
    await serveNbd(node, { socket: "/nonexistent/x.sock", bitmaps: ["b0"] });
    ok(false);
  } catch (e) {
    assertEquals((e as Error).message, "Bitmap 'b0' is not found");
  } finally {
    await node.close();
  }
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

Deno.test("serveNbd() with maxConnections leaves further clients waiting until a slot frees", async () => {
  await withServer({ maxConnections: 1 }, async (s, _n, sock) => {
    const a = await RawClient.unix(sock);
    await go(a, false);
    const b = await RawClient.unix(sock);
    // A round trip on A: the accept loop has had its turns, and still only A was accepted.
    await a.write(request(CMD.FLUSH, 0, 0, 1));
    assertEquals(await simple(a), [0, 1]);
    assertEquals(s.stats.accepted, 1);
    a.close();
    await b.greet();
    assertEquals(s.stats.accepted, 2);
    b.close();
  });
});

Deno.test("serveNbd() without persistence stops after its last client leaves", async () => {
  await withServer({ persistent: false }, async (s, node, sock) => {
    const a = await RawClient.unix(sock);
    await go(a, false);
    a.close();
    await s.finished;
    ok(node.closed);
  });
});

// Reads fail with EIO from 64 KiB on.
registerDriver({
  name: "test-faulty",
  kind: "protocol",
  open() {
    return Promise.resolve({
      getLength: () => 1 << 20,
      pread: (o: number, b: Uint8Array) => {
        if (o + b.length > 65536) throw new BlockError("EIO", `Cannot read ${b.length} bytes at offset ${o}: injected`);
        b.fill(1);
      },
    });
  },
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
