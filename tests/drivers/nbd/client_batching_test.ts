import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { open, registerDriver } from "../../../mod.ts";
import { serveNbd } from "../../../drivers/nbd/mod.ts";
import { tempDir } from "../../_helpers/qemu.ts";
import { sockPath } from "./_helpers.ts";

/** NBD request magic, the first four bytes of every request the client writes. */
const REQUEST_MAGIC = [0x25, 0x60, 0x95, 0x13];

// A memory driver whose reads wait for the test to release them, a batch at a time: the server then answers a batch of
// requests at once, as a busy server does.
const batch = { entered: 0, release: () => {}, gate: Promise.resolve() };
registerDriver({
  name: "test-batch-gate",
  kind: "protocol",
  open(ctx) {
    const data = new Uint8Array(Number(ctx.options.size ?? 65536));
    return Promise.resolve({
      getLength: () => data.length,
      pread: async (o, b) => {
        batch.entered++;
        await batch.gate;
        b.set(data.subarray(o, o + b.length));
      },
    });
  },
});

Deno.test("nbd driver: requests sent while a batch of replies is handled go out in one socket write, not one each", async () => {
  await using dir = await tempDir("blkgraph-nbd-cb-");
  const socket = sockPath(dir.path);
  const server = await serveNbd(await open({ driver: "test-batch-gate", size: 1 << 20 }), { socket, closeNode: true });
  const remote = await open({ driver: "nbd", "server.type": "unix", "server.path": socket });
  // Every socket write in this process that starts with a request is counted (the server's replies start otherwise).
  const probe = await Deno.connect({ transport: "unix", path: socket });
  const proto = Object.getPrototypeOf(probe) as { write(p: Uint8Array): Promise<number> };
  probe.close();
  const write = proto.write;
  let writes = 0;
  proto.write = function (this: unknown, p: Uint8Array) {
    if (REQUEST_MAGIC.every((b, i) => p[i] === b)) writes++;
    return write.call(this, p);
  };
  const callers = 16, rounds = 4;
  const perRound: number[] = [];
  try {
    batch.gate = new Promise((r) => batch.release = r);
    // 16 callers, each sending its next read as soon as the previous one completed (as `bench -d 16` does).
    const all = Promise.all(Array.from({ length: callers }, async (_, w) => {
      const buf = new Uint8Array(4096);
      for (let i = 0; i < rounds; i++) await remote.pread((w * rounds + i) * 4096, buf);
    }));
    for (let round = 1; round <= rounds; round++) {
      while (batch.entered < callers * round) await new Promise((r) => setTimeout(r, 1));
      perRound.push(writes);
      writes = 0;
      const release = batch.release;
      batch.gate = new Promise((r) => batch.release = r);
      release();
    }
    batch.release();
    await all;
  } finally {
    proto.write = write;
    batch.release();
    await remote.close();
    await server.close();
  }
  // Rounds after the first: the 16 requests sent from the completions of one batch of replies.
  assertEquals(perRound.length, rounds);
  ok(perRound.slice(1).every((n) => n <= 2), `socket writes per round of ${callers} requests: ${perRound.join(", ")}`);
});
