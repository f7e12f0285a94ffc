import assert from "node:assert/strict";
import { type BlockNode, open, runCrashExploration } from "../../../mod.ts";
import { durabilityOracle, qcow2Dirty, qemuImgStructure, readGuest, recoveryOracle } from "../../../filters/crash/mod.ts";
import { getRecorder } from "../../../filters/recorder.ts";
import { runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const SIZE = 8 * 512;

async function workload(guest: BlockNode): Promise<void> {
  await guest.pwrite(0, new Uint8Array(1024).fill(1));
  await guest.flush();
  await guest.pwrite(512, new Uint8Array(1024).fill(2));
  await guest.pwrite(3072, new Uint8Array(512).fill(3), { fua: true });
  await guest.flush();
  await guest.pwrite(2048, new Uint8Array(512).fill(4));
}

/** guest recorder → raw → host recorder → memory; returns both logs after the workload. */
async function recordRaw(hostNoFlush: boolean) {
  const host = hostNoFlush
    ? { driver: "recorder", cache: { "no-flush": true }, file: { driver: "memory", size: SIZE } }
    : { driver: "recorder", file: { driver: "memory", size: SIZE } };
  await using guest = await open({ driver: "recorder", file: { driver: "raw", file: host } });
  await workload(guest);
  const hostNode = guest.file!.file!;
  return { guestLog: [...getRecorder(guest).log], hostLog: [...getRecorder(hostNode).log] };
}

Deno.test("durabilityOracle() accepts every crash state of a raw image whose flushes reach the disk", async () => {
  const { guestLog, hostLog } = await recordRaw(false);
  const oracle = durabilityOracle({ guestLog, guestBase: new Uint8Array(SIZE), read: (b) => Promise.resolve(b.slice()) });
  const r = await runCrashExploration(new Uint8Array(SIZE), hostLog, [oracle], {
    extraPoints: guestLog.filter((o) => o.op === "flush").map((o) => o.complete!),
    pointKey: String,
  });
  assert.ok(r.states > 4);
  assert.deepEqual(r.failures, []);
});

Deno.test("durabilityOracle() catches flushed data lost when flushes never reach the disk", async () => {
  const { guestLog, hostLog } = await recordRaw(true);
  assert.equal(hostLog.filter((o) => o.op === "flush").length, 0);
  const oracle = durabilityOracle({ guestLog, guestBase: new Uint8Array(SIZE), read: (b) => Promise.resolve(b.slice()) });
  const r = await runCrashExploration(new Uint8Array(SIZE), hostLog, [oracle], {
    extraPoints: guestLog.filter((o) => o.op === "flush").map((o) => o.complete!),
    pointKey: String,
  });
  assert.ok(r.failures.length > 0);
  assert.match(r.failures[0].message, /value as of the last completed guest flush/);
});

Deno.test("durabilityOracle() strict mode rejects data never written, non-strict allows it where a write was in flight", async () => {
  const write = {
    op: "write" as const,
    offset: 0,
    length: 512,
    fua: false,
    data: new Uint8Array(512).fill(7),
    submit: 1,
    complete: 2,
    time: 0,
  };
  const read = (b: Uint8Array) => Promise.resolve(b);
  const garbage = new Uint8Array(1024).fill(0x99, 0, 512);
  const strict = durabilityOracle({ guestLog: [write], guestBase: new Uint8Array(1024), read });
  const lax = durabilityOracle({ guestLog: [write], guestBase: new Uint8Array(1024), read, strict: false });
  const recipe = { crashPoint: 2, applied: [] };
  assert.match((await strict.check(garbage, recipe))!, /guest byte 0 \(sector 0\) is 0x99/);
  assert.equal(await lax.check(garbage, recipe), undefined);
  const wrongElsewhere = new Uint8Array(1024).fill(0x99, 512);
  assert.match((await lax.check(wrongElsewhere, recipe))!, /guest byte 512/);
});

Deno.test("recoveryOracle() writes into every chunk of the state and checks the result", async () => {
  const seen: number[] = [];
  const oracle = recoveryOracle({ driver: "raw" }, (bytes) => {
    for (let off = 0; off < bytes.length; off += 1024) seen.push(bytes[off]);
    return Promise.resolve(undefined);
  }, 1024);
  assert.equal(await oracle.check(new Uint8Array(4096), { crashPoint: 0, applied: [] }), undefined);
  assert.deepEqual(seen, [0xc3, 0xc3, 0xc3, 0xc3]);
});

Deno.test("recoveryOracle() reports a state the format cannot open", async () => {
  const oracle = recoveryOracle({ driver: "no-such-format" }, () => Promise.resolve(undefined));
  assert.match((await oracle.check(new Uint8Array(512), { crashPoint: 0, applied: [] }))!, /recovery failed at open: Unknown driver/);
});

Deno.test("readGuest() reads the whole virtual disk of a state", async () => {
  const bytes = new Uint8Array(2048).fill(5);
  assert.deepEqual(await readGuest(bytes, { driver: "raw" }), bytes);
});

Deno.test("qemuImgStructure() passes a fresh qcow2 and rejects a broken refcount table", { ignore: skipUnless("qemu-img") }, async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.qcow2`;
  await runOk("qemu-img", ["create", "-f", "qcow2", "-o", "cluster_size=512", path, "1M"]);
  await runOk("qemu-io", ["-c", "write -P 1 0 4k", path]);
  const bytes = await Deno.readFile(path);
  assert.equal(qcow2Dirty(bytes), false);
  assert.equal(await qemuImgStructure(bytes, dir.path), undefined);
  // Zero the first refcount block: every cluster is then in use with refcount 0.
  const v = new DataView(bytes.buffer);
  const rt = Number(v.getBigUint64(48));
  const rb = Number(new DataView(bytes.buffer, rt).getBigUint64(0));
  bytes.fill(0, rb, rb + 512);
  assert.match((await qemuImgStructure(bytes, dir.path))!, /qemu-img check exited/);
});
