/**
 * Shared pieces of the server tests: an in-process server on a memory-like
 * node, a raw handshake up to transmission, request encoding and reply
 * reading, and small test drivers (gated writes, no write-zeroes, faulty reads).
 *
 * @module
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { BlockError, type BlockNode, open, registerDriver } from "../../../mod.ts";
import { serveNbd } from "../../../drivers/nbd/mod.ts";
import type { NbdServeOptions, NbdServer } from "../../../drivers/nbd/server.ts";
import { encodeRequest, INFO, OPT, REP, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, view } from "../../../drivers/nbd/_protocol.ts";
import { encodeInfoRequest, encodeMetaContextRequest } from "../../../drivers/nbd/_handshake_codecs.ts";
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
/** Writes of `test-gate` nodes wait for this promise. */
export const gates = { gate: Promise.resolve(), entered: 0 };
registerDriver({
  name: "test-gate",
  kind: "protocol",
  open(ctx) {
    const data = new Uint8Array(Number(ctx.options.size ?? 65536));
    return Promise.resolve({
      getLength: () => data.length,
      pread: (o, b) => void b.set(data.subarray(o, o + b.length)),
      pwrite: async (o, d) => {
        gates.entered++;
        await gates.gate;
        data.set(d, o);
      },
      flush: () => {},
    });
  },
});

export async function withServer(
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
export async function go(c: RawClient, structured = true, contexts: string[] = []): Promise<number> {
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

export function request(type: number, offset: number, length: number, cookie: number, flags = 0, data?: Uint8Array): Uint8Array {
  const b = new Uint8Array(28 + (data?.length ?? 0));
  encodeRequest(view(b), 0, { flags, type, cookieHi: 0, cookieLo: cookie, offset, length });
  if (data) b.set(data, 28);
  return b;
}

/** Reads a simple reply: [error, cookie]. */
export async function simple(c: RawClient): Promise<[number, number]> {
  const h = (await c.read(16))!;
  assertEquals(view(h).getUint32(0), SIMPLE_REPLY_MAGIC);
  return [view(h).getUint32(4), view(h).getUint32(12)];
}

/** Reads one structured chunk. */
export async function chunk(c: RawClient): Promise<{ flags: number; type: number; cookie: number; payload: Uint8Array }> {
  const h = (await c.read(20))!;
  const dv = view(h);
  assertEquals(dv.getUint32(0), STRUCTURED_REPLY_MAGIC);
  const len = dv.getUint32(16);
  return { flags: dv.getUint16(4), type: dv.getUint16(6), cookie: dv.getUint32(12), payload: (await c.read(len))! };
}

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
