/**
 * Socket fuzzer for the NBD server: seeded random and mutated client
 * traffic (bounded in count), then checks that every connection ended, the
 * server still serves a good client, and a read-only export was not changed.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { open } from "../../../mod.ts";
import { serveNbd } from "../../../drivers/nbd/mod.ts";
import { CMD, CMD_FLAG, encodeRequest, INFO, OPT, view } from "../../../drivers/nbd/_protocol.ts";
import { concat, encodeInfoRequest, encodeMetaContextRequest, encodeOption } from "../../../drivers/nbd/_handshake_codecs.ts";
import { tempDir } from "../../_helpers/qemu.ts";
import { sockPath } from "./_helpers.ts";

function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function req(type: number, flags: number, offset: number, length: number, cookie: number, payload = 0): Uint8Array {
  const b = new Uint8Array(28 + payload);
  encodeRequest(view(b), 0, { flags, type, cookieHi: 0, cookieLo: cookie, offset, length });
  b.fill(0x5a, 28);
  return b;
}

/** A well-formed session: client flags, options, then requests. */
function validSession(): Uint8Array {
  const flags = new Uint8Array(4);
  view(flags).setUint32(0, 3);
  return concat([
    flags,
    encodeOption(OPT.STRUCTURED_REPLY),
    encodeOption(OPT.LIST_META_CONTEXT, encodeMetaContextRequest("", [])),
    encodeOption(OPT.SET_META_CONTEXT, encodeMetaContextRequest("", ["base:allocation", "qemu:allocation-depth"])),
    encodeOption(OPT.INFO, encodeInfoRequest("", [INFO.BLOCK_SIZE, INFO.NAME])),
    encodeOption(OPT.GO, encodeInfoRequest("", [INFO.BLOCK_SIZE])),
    req(CMD.READ, 0, 0, 4096, 1),
    req(CMD.WRITE, CMD_FLAG.FUA, 8192, 512, 2, 512),
    req(CMD.BLOCK_STATUS, CMD_FLAG.REQ_ONE, 0, 65536, 3),
    req(CMD.BLOCK_STATUS, 0, 0, 1 << 20, 4),
    req(CMD.WRITE_ZEROES, CMD_FLAG.NO_HOLE, 16384, 4096, 5),
    req(CMD.TRIM, 0, 16384, 4096, 6),
    req(CMD.CACHE, 0, 0, 65536, 7),
    req(CMD.FLUSH, 0, 0, 0, 8),
    req(CMD.READ, CMD_FLAG.DF, 4096, 8192, 9),
    req(CMD.DISC, 0, 0, 0, 10),
  ]);
}

const EDGE = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 0x02000001];

function mutate(base: Uint8Array, rnd: () => number): Uint8Array {
  const b = base.slice();
  const kind = Math.floor(rnd() * 5);
  if (kind === 0) {
    // Random bytes after the client flags.
    const r = new Uint8Array(1 + Math.floor(rnd() * 512));
    for (let i = 0; i < r.length; i++) r[i] = Math.floor(rnd() * 256);
    return concat([b.subarray(0, 4), r]);
  }
  if (kind === 1) return b.subarray(0, Math.floor(rnd() * b.length));
  const flips = 1 + Math.floor(rnd() * 8);
  for (let i = 0; i < flips; i++) {
    const at = Math.floor(rnd() * (b.length - 4));
    if (kind === 2) b[at] ^= 1 << Math.floor(rnd() * 8);
    else if (kind === 3) view(b).setUint32(at, EDGE[Math.floor(rnd() * EDGE.length)]);
    else b[at] = Math.floor(rnd() * 256);
  }
  return b;
}

async function session(sock: string, bytes: Uint8Array, rnd: () => number): Promise<void> {
  const conn = await Deno.connect({ transport: "unix", path: sock });
  const drain = (async () => {
    const buf = new Uint8Array(65536);
    try {
      while ((await conn.read(buf)) !== null) { /* discard */ }
    } catch { /* closed */ }
  })();
  // Send in a few random pieces, so the server sees messages split across reads.
  try {
    for (let at = 0; at < bytes.length;) {
      const n = 1 + Math.floor(rnd() * Math.min(4096, bytes.length - at));
      at += await conn.write(bytes.subarray(at, at + n));
    }
  } catch { /* the server may close first */ }
  conn.close();
  await drain;
}

for (const readOnly of [true, false]) {
  Deno.test(`serveNbd() survives 300 seeded random and mutated sessions (${readOnly ? "read-only" : "writable"})`, async () => {
    await using dir = await tempDir("blkgraph-nbd-fuzz-");
    const node = await open({ driver: "memory", size: 1 << 20 });
    const guard = new Uint8Array(1 << 20);
    for (let i = 0; i < guard.length; i += 4096) guard[i] = (i >> 12) & 0xff;
    await node.pwrite(0, guard);
    const sock = sockPath(dir.path);
    const server = await serveNbd(node, { socket: sock, readOnly, allocationDepth: true, handshakeTimeout: 2000 });
    const rnd = mulberry32(readOnly ? 1234 : 5678);
    const base = validSession();
    for (let i = 0; i < 300; i++) {
      // Four at a time: the server also sees concurrent bad clients.
      await Promise.all([0, 1, 2, 3].map(() => session(sock, i % 10 === 0 ? base : mutate(base, rnd), rnd)));
      i += 3;
    }
    // Bounded wait for the server to notice every close.
    for (let i = 0; i < 500 && server.stats.active > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assertEquals(server.stats.active, 0);
    ok(server.stats.accepted >= 300);
    // Many mutated sessions get past the handshake, so the transmission phase is fuzzed too.
    ok(server.stats.transmissions > 50, `only ${server.stats.transmissions} sessions reached transmission`);
    ok(server.stats.protocolErrors > 20, `only ${server.stats.protocolErrors} protocol errors`);
    // A good client still works.
    const remote = await open(server.uri, { readOnly });
    const back = new Uint8Array(4096);
    await remote.pread(65536, back);
    if (readOnly) {
      const all = new Uint8Array(1 << 20);
      await remote.pread(0, all);
      ok(all.every((v, k) => v === guard[k]), "a read-only export changed");
    } else {
      await remote.pwrite(65536, new Uint8Array(4096).fill(0xee));
      await remote.pread(65536, back);
      assertEquals(back[4095], 0xee);
    }
    await remote.close();
    await server.close();
    await node.close();
  });
}
