/**
 * The quorum driver: reads vote on the children's data, writes and flushes
 * need `vote-threshold` successes, outvoted or failing children are
 * reported (quorum-report-bad / quorum-failure events), option errors are
 * qemu-io's, and its name and directory follow QEMU's quorum.
 */

import assert from "node:assert/strict";
import { BlockError, type BlockNode, type DriverInstance, type NodeEvent, open, registerDriver } from "../../mod.ts";
import { nodeDirname, refreshFilename } from "../../core/_filename.ts";
import { qemuIo } from "../../cli/qemu-io.ts";
import { hasTool, run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

/** Per-tag faults of the test driver below: which operations fail with EIO. */
const faults = new Map<string, Set<string>>();

// A memory protocol node whose reads, writes and flushes fail while its tag says so.
registerDriver({
  name: "test-quorum-faulty",
  kind: "protocol",
  open(ctx): Promise<DriverInstance> {
    const tag = String(ctx.options.tag);
    const set = new Set<string>();
    faults.set(tag, set);
    const data = new Uint8Array(Number(ctx.options.size ?? 65536));
    const fail = (op: string) => {
      if (set.has(op)) throw new BlockError("EIO", `injected ${op} failure on ${tag}`);
    };
    return Promise.resolve({
      getLength: () => data.length,
      pread(offset, buf) {
        fail("read");
        buf.set(data.subarray(offset, offset + buf.length));
      },
      pwrite(offset, d) {
        fail("write");
        data.set(d, offset);
      },
      pwriteZeroes(offset, length) {
        fail("write");
        data.fill(0, offset, offset + length);
      },
      flush() {
        fail("flush");
      },
    });
  },
});

const child = (tag: string) => ({ driver: "test-quorum-faulty", tag, size: 65536, "node-name": tag });

async function quorum(n: number, extra: Record<string, unknown>): Promise<{ q: BlockNode; events: NodeEvent[] }> {
  const q = await open({ driver: "quorum", children: Array.from({ length: n }, (_, i) => child(`c${i}`)), ...extra });
  const events: NodeEvent[] = [];
  q.addListener((e) => {
    if (e.kind === "quorum-report-bad" || e.kind === "quorum-failure") events.push(e);
  });
  return { q, events };
}

const kid = (q: BlockNode, i: number) => q.children.get(`children.${i}`)!;
const fill = (byte: number, n = 512) => new Uint8Array(n).fill(byte);
const brief = (events: NodeEvent[]) =>
  events.map((e) =>
    e.kind === "quorum-report-bad"
      ? `bad ${e.type} ${e.child} ${e.sectorNum}+${e.sectorsCount}${e.error ? ` ${e.error}` : ""}`
      : e.kind === "quorum-failure"
      ? `failure ${e.sectorNum}+${e.sectorsCount}`
      : e.kind
  );

Deno.test("quorum read: the majority's data wins and the outvoted child is reported", async () => {
  const { q, events } = await quorum(3, { "vote-threshold": 2 });
  await using _ = q;
  await q.pwrite(1024, fill(5));
  await kid(q, 1).pwrite(1024, fill(9));
  const buf = new Uint8Array(512);
  await q.pread(1024, buf);
  assert.deepEqual(buf, fill(5));
  assert.deepEqual(brief(events), ["bad read c1 2+1"]);
  // Not rewritten without rewrite-corrupted.
  await kid(q, 1).pread(1024, buf);
  assert.equal(buf[0], 9);
});

Deno.test("quorum read with rewrite-corrupted writes the winning data back to the outvoted child", async () => {
  const { q } = await quorum(3, { "vote-threshold": 2, "rewrite-corrupted": true });
  await using _ = q;
  await q.pwrite(0, fill(5));
  await kid(q, 2).pwrite(0, fill(9));
  await q.pread(0, new Uint8Array(512));
  const buf = new Uint8Array(512);
  await kid(q, 2).pread(0, buf);
  assert.deepEqual(buf, fill(5));
});

Deno.test("quorum read: no version with vote-threshold votes fails with EIO and a quorum-failure event", async () => {
  const { q, events } = await quorum(3, { "vote-threshold": 2 });
  await using _ = q;
  await kid(q, 0).pwrite(0, fill(1));
  await kid(q, 1).pwrite(0, fill(2));
  await kid(q, 2).pwrite(0, fill(3));
  await assert.rejects(q.pread(0, new Uint8Array(512)), (e) => e instanceof BlockError && e.code === "EIO");
  assert.deepEqual(brief(events), ["failure 0+1"]);
});

Deno.test("quorum read: failed children do not vote; too few successes fail with their error", async () => {
  const { q, events } = await quorum(3, { "vote-threshold": 2 });
  await using _ = q;
  await q.pwrite(0, fill(4));
  faults.get("c0")!.add("read");
  const buf = new Uint8Array(512);
  await q.pread(0, buf);
  assert.deepEqual(buf, fill(4));
  faults.get("c1")!.add("read");
  await assert.rejects(q.pread(0, buf), (e) => e instanceof BlockError && e.code === "EIO" && e.message.includes("injected read"));
  assert.deepEqual(brief(events), [
    "bad read c0 0+1 Input/output error",
    "bad read c0 0+1 Input/output error",
    "bad read c1 0+1 Input/output error",
    "failure 0+1",
  ]);
});

Deno.test("quorum write succeeds when vote-threshold children succeed, and fails below it", async () => {
  const { q, events } = await quorum(3, { "vote-threshold": 2 });
  await using _ = q;
  faults.get("c2")!.add("write");
  await q.pwrite(0, fill(7));
  await q.pwriteZeroes(512, 512);
  faults.get("c1")!.add("write");
  await assert.rejects(q.pwrite(0, fill(8)), (e) => e instanceof BlockError && e.code === "EIO");
  assert.deepEqual(brief(events), [
    "bad write c2 0+1 Input/output error",
    "bad write c2 1+1 Input/output error",
    "bad write c1 0+1 Input/output error",
    "bad write c2 0+1 Input/output error",
    "failure 0+1",
  ]);
});

Deno.test("quorum flush succeeds when vote-threshold children flush, and fails below it", async () => {
  const { q, events } = await quorum(2, { "vote-threshold": 1 });
  await using _ = q;
  faults.get("c0")!.add("flush");
  await q.pwrite(0, fill(1));
  await q.flush();
  faults.get("c1")!.add("flush");
  await q.pwrite(0, fill(2));
  await assert.rejects(q.flush(), (e) => e instanceof BlockError && e.code === "EIO");
  assert.deepEqual(brief(events), [
    "bad flush c0 0+0 Input/output error",
    "bad flush c0 0+0 Input/output error",
    "bad flush c1 0+0 Input/output error",
  ]);
});

Deno.test("quorum read-pattern=fifo reads the first child, and the next one when it fails", async () => {
  const { q, events } = await quorum(2, { "vote-threshold": 1, "read-pattern": "fifo" });
  await using _ = q;
  await kid(q, 0).pwrite(0, fill(1));
  await kid(q, 1).pwrite(0, fill(2));
  const buf = new Uint8Array(512);
  await q.pread(0, buf);
  assert.equal(buf[0], 1);
  faults.get("c0")!.add("read");
  await q.pread(0, buf);
  assert.equal(buf[0], 2);
  assert.deepEqual(brief(events), ["bad read c0 0+1 Input/output error"]);
});

Deno.test("quorum blkverify fails a read where the two children differ, naming the offset", async () => {
  const { q } = await quorum(2, { "vote-threshold": 2, blkverify: true });
  await using _ = q;
  await kid(q, 1).pwrite(600, fill(1, 1));
  await assert.rejects(
    q.pread(512, new Uint8Array(512)),
    (e) => e instanceof BlockError && e.message === "quorum: offset=512 bytes=512 contents mismatch at offset 600",
  );
});

Deno.test("quorum: children of different lengths fail the open with EIO", async () => {
  await assert.rejects(
    open({ driver: "quorum", "vote-threshold": 1, children: [child("l0"), { ...child("l1"), size: 4096 }] }),
    (e) => e instanceof BlockError && e.code === "EIO" && e.qemuMessage === "Could not refresh total sector count: Input/output error",
  );
});

Deno.test("quorum's name is json: with its children as a list, and it has no directory", async () => {
  const spec = { driver: "quorum", "vote-threshold": 1, children: [{ driver: "null-co" }, { driver: "null-co", size: 1 << 30 }] };
  await using q = await open(spec);
  const name =
    `json:{"children": [{"driver": "null-co"}, {"driver": "null-co", "size": 1073741824}], "driver": "quorum", "vote-threshold": 1}`;
  assert.equal(refreshFilename(q).filename, name);
  if (hasTool("qemu-img")) {
    assert.equal((await runOk("qemu-img", ["info", `json:${JSON.stringify(spec)}`])).stdout.split("\n")[0], `image: ${name}`);
  }
  assert.throws(() => nodeDirname(q), (e) => e instanceof BlockError && e.message === "Cannot generate a base directory for quorum nodes");
});

Deno.test({
  name: "quorum option errors are qemu-io's",
  ignore: skipUnless("qemu-io"),
  async fn() {
    await using d = await tempDir();
    const files = ["a", "b"].map((n) => `${d.path}/${n}.raw`);
    for (const f of files) await Deno.writeFile(f, new Uint8Array(65536));
    const kids = files.map((f) => ({ driver: "file", filename: f }));
    const cases: Record<string, unknown>[] = [
      {},
      { "vote-threshold": 0 },
      { "vote-threshold": 3 },
      { "vote-threshold": "x" },
      { "vote-threshold": 1, blkverify: true },
      { "vote-threshold": 2, blkverify: true, "rewrite-corrupted": true },
      { "vote-threshold": 1, "read-pattern": "x" },
      { "vote-threshold": 1, "read-pattern": "fifo", "rewrite-corrupted": true },
      { "vote-threshold": 1, children: [] },
    ];
    for (const c of cases) {
      const spec = `json:${JSON.stringify({ driver: "quorum", children: kids, ...c })}`;
      const theirs = await run("qemu-io", ["-c", "read 0 512", spec]);
      let out = "";
      const code = await qemuIo(["-c", "read 0 512", spec], { stdout: (s) => void (out += s), stderr: (s) => void (out += s) });
      const norm = (s: string) => s.replace(/ \d+ ops; .*$/gm, "");
      assert.deepEqual([code, norm(out)], [theirs.code, norm(theirs.stdout + theirs.stderr)], JSON.stringify(c));
    }
  },
});
