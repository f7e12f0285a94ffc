import assert from "node:assert/strict";
import { registerDriver } from "../../../mod.ts";
import { isAligned } from "../../../core/_io_buffer.ts";
import { CMD } from "../../../drivers/nbd/_protocol.ts";
import { RawClient } from "./_helpers.ts";
import { chunk, go, request, simple, withServer } from "./_server_helpers.ts";

/** For each read the `test-nbd-align` driver served: whether its buffer started at a page. */
const probed: boolean[] = [];
registerDriver({
  name: "test-nbd-align",
  kind: "protocol",
  open() {
    const data = new Uint8Array(1 << 20).fill(9);
    return Promise.resolve({
      getLength: () => data.length,
      pread: (o: number, b: Uint8Array) => {
        probed.push(isAligned(b, 4096)!);
        b.set(data.subarray(o, o + b.length));
      },
    });
  },
});

for (const structured of [false, true]) {
  Deno.test(`NBD server reads a READ's payload into a page-aligned buffer behind the ${structured ? "chunk" : "simple reply"} header`, async () => {
    await withServer({}, async (_s, _node, sock) => {
      const c = await RawClient.unix(sock);
      try {
        await go(c, structured);
        probed.length = 0;
        // Several sizes, reused buffers included (the pool hands the same ones out again).
        const sizes = [4096, 65536, 4096, 512, 65536, 1 << 20];
        for (let i = 0; i < sizes.length; i++) {
          await c.write(request(CMD.READ, 0, sizes[i], i + 1));
          if (structured) {
            const ch = await chunk(c);
            assert.equal(ch.cookie, i + 1);
            assert.equal(ch.payload.length, 8 + sizes[i]);
            assert.ok(ch.payload.subarray(8).every((x) => x === 9));
          } else {
            assert.deepEqual(await simple(c), [0, i + 1]);
            assert.ok((await c.read(sizes[i]))!.every((x) => x === 9));
          }
        }
        assert.deepEqual(probed, sizes.map(() => true));
      } finally {
        c.close();
      }
    }, { driver: "test-nbd-align" });
  });
}
