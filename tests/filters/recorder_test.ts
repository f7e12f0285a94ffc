import assert from "node:assert/strict";
import { type BlockNode, open } from "../../mod.ts";
import { getRecorder } from "../../filters/recorder.ts";

async function recorderOver(size = 65536): Promise<BlockNode> {
  return await open({ driver: "recorder", file: { driver: "memory", size } });
}

Deno.test("recorder forwards writes so they read back", async () => {
  await using node = await recorderOver();
  await node.pwrite(1000, new Uint8Array(100).fill(0x5a));
  const back = new Uint8Array(100);
  await node.pread(1000, back);
  assert.deepEqual(back, new Uint8Array(100).fill(0x5a));
});

Deno.test("recorder logs a copy of the written data", async () => {
  await using node = await recorderOver();
  const data = new Uint8Array(512).fill(1);
  await node.pwrite(512, data);
  data.fill(2);
  const [op] = getRecorder(node).log;
  assert.equal(op.op, "write");
  assert.equal(op.offset, 512);
  assert.equal(op.length, 512);
  assert.deepEqual(op.data, new Uint8Array(512).fill(1));
});

Deno.test("recorder stamps submit before completion on one increasing clock", async () => {
  await using node = await recorderOver();
  await node.pwrite(0, new Uint8Array(512));
  await node.flush();
  await node.pwrite(512, new Uint8Array(512));
  const log = getRecorder(node).log;
  assert.deepEqual(log.map((o) => o.op), ["write", "flush", "write"]);
  for (const op of log) assert.ok(op.complete! > op.submit);
  assert.ok(log[1].submit > log[0].complete!);
  assert.ok(log[2].submit > log[1].complete!);
});

Deno.test("recorder logs the FUA flag", async () => {
  await using node = await recorderOver();
  await node.pwrite(0, new Uint8Array(512), { fua: true });
  assert.equal(getRecorder(node).log[0].fua, true);
});

Deno.test("recorder logs write-zeroes, discard and truncate", async () => {
  await using node = await recorderOver(8192);
  await node.pwriteZeroes(0, 1024);
  await node.pdiscard(1024, 1024);
  await node.truncate(16384);
  const log = getRecorder(node).log;
  assert.deepEqual(log.map((o) => [o.op, o.offset, o.length]), [["write-zeroes", 0, 1024], ["discard", 1024, 1024], [
    "truncate",
    16384,
    0,
  ]]);
  assert.equal(log[2].oldLength, 8192);
  assert.equal(node.length, 16384);
});

Deno.test("recorder mark() adds a label and clear() empties the log", async () => {
  await using node = await recorderOver();
  const rec = getRecorder(node);
  await node.pwrite(0, new Uint8Array(1));
  rec.mark("here");
  assert.equal(rec.log.at(-1)?.label, "here");
  rec.clear();
  assert.equal(rec.log.length, 0);
});

Deno.test("recorder logs a failed write with its error and no completion", async () => {
  await using node = await open({ driver: "recorder", file: { driver: "memory", size: 4096, "read-only": true } });
  await assert.rejects(node.pwrite(0, new Uint8Array(512)));
  const [op] = getRecorder(node).log;
  assert.equal(op.complete, undefined);
  assert.match(op.error ?? "", /read-only/);
});

Deno.test("getRecorder() rejects a node that is not a recorder", async () => {
  await using node = await open({ driver: "memory", size: 4096 });
  assert.throws(() => getRecorder(node), /not a recorder node/);
});
