import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { registerDriver } from "../../../mod.ts";
import { CMD } from "../../../drivers/nbd/_protocol.ts";
import { REPLY_SETTLE_TURNS } from "../../../drivers/nbd/_io.ts";
import { RawClient } from "./_helpers.ts";
import { gates, go, request, simple, withServer } from "./_server_helpers.ts";

// A memory driver whose writes take 0–3 timer ticks and copy the payload only when they finish, as a
// slow disk or a throttle does: a server that hands a payload buffer to the next request too early
// gets another request's bytes stored.
registerDriver({
  name: "test-slow",
  kind: "protocol",
  open(ctx) {
    const data = new Uint8Array(Number(ctx.options.size ?? 65536));
    return Promise.resolve({
      getLength: () => data.length,
      pread: (o, b) => void b.set(data.subarray(o, o + b.length)),
      pwrite: async (o, d) => {
        await new Promise((r) => setTimeout(r, (o >> 12) % 4));
        data.set(d, o);
      },
    });
  },
});

const pattern = (i: number, n: number) => Uint8Array.from({ length: n }, (_, k) => (i * 31 + k * 7 + (k >> 8)) & 0xff);

Deno.test("serveNbd() keeps every write payload until its node write finished (pooled buffers are not reused early)", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, false);
    // Many writes of the same and of different sizes, sent at once, so the server has them all in flight.
    const sizes = [4096, 65536, 8192, 65536, 4096, 32768];
    const writes: { offset: number; data: Uint8Array }[] = [];
    let offset = 0;
    for (let i = 0; i < 96; i++) {
      const n = sizes[i % sizes.length];
      writes.push({ offset, data: pattern(i, n) });
      offset += n;
    }
    const reqs = writes.map((w, i) => request(CMD.WRITE, w.offset, w.data.length, i + 1, 0, w.data));
    const all = new Uint8Array(reqs.reduce((a, r) => a + r.length, 0));
    reqs.reduce((at, r) => (all.set(r, at), at + r.length), 0);
    await c.write(all);
    const done = new Set<number>();
    for (let i = 0; i < writes.length; i++) {
      const [err, cookie] = await simple(c);
      assertEquals(err, 0);
      done.add(cookie);
    }
    assertEquals(done.size, writes.length);
    for (let i = 0; i < writes.length; i++) {
      const w = writes[i];
      await c.write(request(CMD.READ, w.offset, w.data.length, 1000 + i));
      assertEquals(await simple(c), [0, 1000 + i]);
      const got = (await c.read(w.data.length))!;
      ok(got.every((b, k) => b === w.data[k]), `write ${i} (${w.data.length} bytes at ${w.offset}) read back different bytes`);
    }
    c.close();
  }, { driver: "test-slow", size: 4 << 20 });
});

Deno.test("serveNbd() answers a request sent with others at once while one of them is still on the node", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, false);
    let open_!: () => void;
    gates.gate = new Promise((r) => (open_ = r));
    const w = request(CMD.WRITE, 0, 4096, 1, 0, new Uint8Array(4096).fill(9));
    const r = request(CMD.READ, 8192, 512, 2);
    const both = new Uint8Array(w.length + r.length);
    both.set(w);
    both.set(r, w.length);
    await c.write(both);
    // The read's reply must not wait for the gated write that arrived in the same packet.
    assertEquals(await simple(c), [0, 2]);
    assertEquals((await c.read(512))!.length, 512);
    open_();
    assertEquals(await simple(c), [0, 1]);
    gates.gate = Promise.resolve();
    c.close();
  }, { driver: "test-gate", size: 1 << 20 });
});

// A memory driver that logs each read, so a test sees what the server did between the socket writes.
const order: string[] = [];
registerDriver({
  name: "test-order",
  kind: "protocol",
  open(ctx) {
    const data = new Uint8Array(Number(ctx.options.size ?? 65536));
    return Promise.resolve({
      getLength: () => data.length,
      pread: (o, b) => {
        order.push(`read ${o}`);
        b.set(data.subarray(o, o + b.length));
      },
    });
  },
});

Deno.test("serveNbd() writes the first reply of a batch of requests before it serves the rest, so the client can go on", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, false);
    // Every socket write of the server (replies are 16 + 512 bytes; the client's requests are smaller) is logged in order.
    const proto = Object.getPrototypeOf(c.conn) as { write(p: Uint8Array): Promise<number> };
    const write = proto.write;
    proto.write = function (this: unknown, p: Uint8Array) {
      if (p.length >= 16 + 512) order.push(`write ${p.length}`);
      return write.call(this, p);
    };
    try {
      const reqs = Array.from({ length: 8 }, (_, i) => request(CMD.READ, i * 4096, 512, i + 1));
      const all = new Uint8Array(reqs.length * reqs[0].length);
      reqs.forEach((r, i) => all.set(r, i * r.length));
      order.length = 0;
      await c.write(all);
      for (let i = 0; i < reqs.length; i++) {
        assertEquals(await simple(c), [0, i + 1]);
        await c.read(512);
      }
    } finally {
      proto.write = write;
    }
    // The first reply went out alone, before the second read was served; the other seven went out together.
    assertEquals(order.slice(0, 3), ["read 0", "write 528", "read 4096"]);
    assertEquals(order.filter((e) => e.startsWith("write")).length, 2, order.join(", "));
    c.close();
  }, { driver: "test-order", size: 1 << 20 });
});

// A memory driver whose every write starts a count of microtask turns, so a test sees how many turns after the node
// finished a write the server's reply reached the socket.
const turns = { n: -1, atReply: [] as number[] };
registerDriver({
  name: "test-turns",
  kind: "protocol",
  open(ctx) {
    const data = new Uint8Array(Number(ctx.options.size ?? 65536));
    return Promise.resolve({
      getLength: () => data.length,
      pread: (o, b) => void b.set(data.subarray(o, o + b.length)),
      pwrite: (o, d) => {
        data.set(d, o);
        turns.n = 0;
        void (async () => {
          while (turns.n >= 0 && turns.n < 1000) {
            await null;
            turns.n++;
          }
        })();
      },
    });
  },
});

Deno.test("serveNbd() writes the reply of the last request in flight without waiting for unrelated microtask turns", async () => {
  await withServer({}, async (_s, _n, sock) => {
    const c = await RawClient.unix(sock);
    await go(c, false);
    const proto = Object.getPrototypeOf(c.conn) as { write(p: Uint8Array): Promise<number> };
    const write = proto.write;
    proto.write = function (this: unknown, p: Uint8Array) {
      // Simple replies are 16 bytes; the client's requests are longer.
      if (p.length % 16 === 0 && p.length < 28 * 4) {
        turns.atReply.push(turns.n);
        turns.n = -1;
      }
      return write.call(this, p);
    };
    try {
      // One at a time (depth 1), then a batch of four sent at once.
      for (let i = 0; i < 3; i++) {
        await c.write(request(CMD.WRITE, i * 4096, 4096, i + 1, 0, new Uint8Array(4096).fill(i)));
        assertEquals(await simple(c), [0, i + 1]);
      }
      const reqs = Array.from({ length: 4 }, (_, i) => request(CMD.WRITE, i * 4096, 4096, 10 + i, 0, new Uint8Array(4096)));
      const all = new Uint8Array(reqs.length * reqs[0].length);
      reqs.forEach((r, i) => all.set(r, i * r.length));
      await c.write(all);
      for (let i = 0; i < 4; i++) assertEquals((await simple(c))[0], 0);
    } finally {
      proto.write = write;
      turns.n = -1;
    }
    // The node's write settles in a few turns through the core; the reply must follow at once, not after the cork's
    // fallback bound (REPLY_SETTLE_TURNS).
    ok(turns.atReply.length >= 4, turns.atReply.join(", "));
    for (const t of turns.atReply) {
      ok(t < REPLY_SETTLE_TURNS / 2, `reply written ${t} turns after the node's write: ${turns.atReply.join(", ")}`);
    }
    c.close();
  }, { driver: "test-turns", size: 1 << 20 });
});
