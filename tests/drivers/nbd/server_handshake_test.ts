import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { open } from "../../../mod.ts";
import { serveNbd } from "../../../drivers/nbd/mod.ts";
import { CMD, FLAG_C_FIXED_NEWSTYLE, getU64, INFO, OPT, REP, TF, view } from "../../../drivers/nbd/_protocol.ts";
import { encodeInfoRequest, encodeMetaContextRequest, encodeOption } from "../../../drivers/nbd/_handshake_codecs.ts";
import { tempDir } from "../../_helpers/qemu.ts";
import { RawClient } from "./_helpers.ts";
import { go, request, simple, withServer } from "./_server_helpers.ts";

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
