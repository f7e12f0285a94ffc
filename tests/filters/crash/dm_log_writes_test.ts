import assert from "node:assert/strict";
import { getRecorder, type RecordedOp } from "../../../filters/recorder.ts";
import { open } from "../../../mod.ts";
import { readDmLogWrites, writeDmLogWrites } from "../../../filters/crash/mod.ts";
import { runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

async function recordedLog(): Promise<RecordedOp[]> {
  await using node = await open({ driver: "recorder", file: { driver: "memory", size: 1 << 20 } });
  const rec = getRecorder(node);
  await node.pwrite(0, new Uint8Array(4096).fill(0x11));
  await node.flush();
  await node.pwrite(8192, new Uint8Array(1024).fill(0x22), { fua: true });
  rec.mark("middle");
  await node.pwriteZeroes(65536, 4096);
  await node.pdiscard(131072, 4096);
  await node.truncate(2 << 20);
  await node.flush();
  return [...rec.log];
}

/** Replays a log onto a memory node and returns its content. */
async function replay(ops: readonly RecordedOp[], size: number): Promise<Uint8Array> {
  await using node = await open({ driver: "memory", size });
  for (const op of ops) {
    if (op.op === "write") await node.pwrite(op.offset, op.data!);
    else if (op.op === "write-zeroes") await node.pwriteZeroes(op.offset, op.length);
    else if (op.op === "discard") await node.pdiscard(op.offset, op.length);
    else if (op.op === "truncate") await node.truncate(op.offset);
  }
  const out = new Uint8Array(node.length);
  await node.pread(0, out);
  return out;
}

Deno.test("writeDmLogWrites() then readDmLogWrites() keeps kinds, ranges, flags and data", async () => {
  const log = await recordedLog();
  const back = readDmLogWrites(writeDmLogWrites(log));
  assert.deepEqual(
    back.map((o) => [o.op, o.offset, o.length, o.fua, o.label]),
    [
      ["write", 0, 4096, false, undefined],
      ["flush", 0, 0, false, undefined],
      ["write", 8192, 1024, true, undefined],
      ["mark", 0, 0, false, "middle"],
      ["write", 65536, 4096, false, undefined],
      ["discard", 131072, 4096, false, undefined],
      ["truncate", 2 << 20, 0, false, undefined],
      ["flush", 0, 0, false, undefined],
    ],
  );
  assert.deepEqual(back[2].data, new Uint8Array(1024).fill(0x22));
  assert.deepEqual(await replay(back, 1 << 20), await replay(log, 1 << 20));
});

Deno.test("writeDmLogWrites() uses the given sector size in the super block and entries", async () => {
  const log = await recordedLog();
  const bytes = writeDmLogWrites(log.slice(0, 2), 4096);
  assert.equal(new DataView(bytes.buffer).getUint32(24, true), 4096);
  // Entry 0 sits in log sector 1 and addresses device sector 0 with one 4 KiB sector.
  assert.equal(new DataView(bytes.buffer).getBigUint64(4096 + 8, true), 1n);
});

Deno.test("writeDmLogWrites() rejects a write not aligned to the log sector", () => {
  const op: RecordedOp = { op: "write", offset: 100, length: 512, fua: false, data: new Uint8Array(512), submit: 1, complete: 2, time: 0 };
  assert.throws(() => writeDmLogWrites([op]), /offset 100 .*not aligned to the 512-byte log sector/);
});

Deno.test("readDmLogWrites() rejects a bad magic", () => {
  assert.throws(() => readDmLogWrites(new Uint8Array(512)), /super block magic is 0x0/);
});

Deno.test("readDmLogWrites() rejects an entry count past the end of the log", () => {
  const bytes = writeDmLogWrites([]);
  new DataView(bytes.buffer).setBigUint64(16, 5n, true);
  assert.throws(() => readDmLogWrites(bytes), /entry 0 of 5 .* past the end of the log/);
});

Deno.test(
  "readDmLogWrites() reads a QEMU blklogwrites log that replays to QEMU's image",
  { ignore: skipUnless("qemu-io", "qemu-img") },
  async () => {
    await using dir = await tempDir();
    const img = `${dir.path}/disk.raw`;
    const logFile = `${dir.path}/disk.log`;
    await runOk("qemu-img", ["create", "-f", "raw", img, "1M"]);
    await Deno.writeFile(logFile, new Uint8Array(0));
    await runOk("qemu-io", [
      "-c",
      "write -P 0x11 0 4k",
      "-c",
      "flush",
      "-c",
      "write -P 0x22 8k 1k",
      "-c",
      "write -z 64k 4k",
      "-c",
      "write -P 0x33 66k 512",
      "-c",
      "flush",
      "--image-opts",
      `driver=blklogwrites,file.driver=file,file.filename=${img},log.driver=file,log.filename=${logFile}`,
    ]);
    const ops = readDmLogWrites(await Deno.readFile(logFile));
    assert.deepEqual(ops.filter((o) => o.op === "flush").length >= 2, true);
    assert.deepEqual(ops.filter((o) => o.op === "write").map((o) => [o.offset, o.length]), [[0, 4096], [8192, 1024], [65536, 4096], [
      67584,
      512,
    ]]);
    assert.deepEqual(await replay(ops, 1 << 20), await Deno.readFile(img));
  },
);
