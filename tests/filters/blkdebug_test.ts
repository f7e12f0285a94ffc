import assert from "node:assert/strict";
import { type BlkdebugTraceRecord, createTraceLog, getBlkdebug } from "../../filters/blkdebug.ts";
import { type BlockNode, open } from "../../mod.ts";
import { spies } from "../_helpers/test_drivers.ts";

type Rule = Record<string, unknown>;

function openDbg(inject: Rule[] = [], setState: Rule[] = [], extra: Rule = {}): Promise<BlockNode> {
  return open({
    driver: "raw",
    file: { driver: "blkdebug", "inject-error": inject, "set-state": setState, image: { driver: "memory", size: 1 << 20 }, ...extra },
  });
}

const sector = (n = 512) => new Uint8Array(n);

Deno.test("blkdebug: an event arms a rule without failing itself; the next request fails with EIO", async () => {
  await using img = await openDbg([{ event: "l2_update" }]);
  await img.pwrite(0, sector());
  await img.event("l2_update");
  await assert.rejects(img.pwrite(0, sector()), (e: Error & { code?: string }) => {
    assert.equal(e.code, "EIO");
    assert.match(e.message, /Input\/output error \(injected by blkdebug rule for event l2_update\)/);
    return true;
  });
});

Deno.test("blkdebug: a rule without once keeps failing requests", async () => {
  await using img = await openDbg([{ event: "l2_update" }]);
  await img.event("l2_update");
  await assert.rejects(img.pwrite(0, sector()));
  await assert.rejects(img.pread(0, sector()));
});

Deno.test("blkdebug: once removes the rule after its first failure", async () => {
  await using img = await openDbg([{ event: "l2_update", once: true }]);
  await img.event("l2_update");
  await assert.rejects(img.pwrite(0, sector()), { code: "EIO" });
  await img.pwrite(0, sector());
  await img.event("l2_update");
  await img.pwrite(0, sector());
});

Deno.test("blkdebug: the state machine gates rules and set-state runs after inject rules", async () => {
  await using img = await openDbg(
    [{ event: "l2_update", state: 2, errno: "ENOSPC" }, { event: "l1_update", state: 1, errno: 5, once: true }],
    [{ event: "l1_update", state: 1, new_state: 2 }],
  );
  const dbg = getBlkdebug(img);
  await img.event("l2_update");
  await img.pwrite(0, sector()); // state 1: the l2_update rule is not armed
  await img.event("l1_update"); // inject (state 1) is armed, then state becomes 2
  assert.equal(dbg.state, 2);
  await assert.rejects(img.pwrite(0, sector()), { code: "EIO" });
  await img.event("l1_update"); // state 2: neither l1_update rule applies
  assert.equal(dbg.state, 2);
  await img.pwrite(0, sector());
  await img.event("l2_update");
  await assert.rejects(img.pwrite(0, sector()), { code: "ENOSPC" });
});

Deno.test("blkdebug: state 0 rules match in any state", async () => {
  await using img = await openDbg([{ event: "l2_load", state: 0, once: true }], [{ event: "l1_update", new_state: 7 }]);
  await img.event("l1_update");
  assert.equal(getBlkdebug(img).state, 7);
  await img.event("l2_load");
  await assert.rejects(img.pread(0, sector()));
});

Deno.test("blkdebug: sector matching fails only requests covering that sector", async () => {
  await using img = await openDbg([{ event: "l2_update", sector: 8 }]);
  await img.event("l2_update");
  await img.pwrite(0, sector(4096)); // sectors 0-7
  await img.pwrite(4608, sector()); // sector 9
  await assert.rejects(img.pwrite(4096, sector()), { code: "EIO" });
  await assert.rejects(img.pwrite(2048, sector(4096)), { code: "EIO" });
  await img.flush(); // a flush covers no sector
});

Deno.test("blkdebug: iotype limits the request types a rule fails", async () => {
  await using img = await openDbg([{ event: "l2_update", iotype: "read" }]);
  await img.event("l2_update");
  await img.pwrite(0, sector());
  await img.pwriteZeroes(0, 4096);
  await assert.rejects(img.pread(0, sector()), { code: "EIO" });
});

Deno.test("blkdebug: the default iotypes cover write-zeroes, discard and flush but not block-status", async () => {
  await using img = await openDbg([{ event: "l2_update" }]);
  await img.pwrite(0, sector()); // something to flush: QEMU fails only a flush that reaches blkdebug's flush_to_disk
  await img.event("l2_update");
  await assert.rejects(img.pwriteZeroes(0, 4096), { code: "EIO" });
  await assert.rejects(img.pdiscard(0, 4096), { code: "EIO" });
  await assert.rejects(img.flush(), { code: "EIO" });
  await img.blockStatus(0, 4096);
});

Deno.test("blkdebug: iotype block-status fails block status queries", async () => {
  await using img = await openDbg([{ event: "l2_update", iotype: "block-status" }]);
  await img.event("l2_update");
  await assert.rejects(img.blockStatus(0, 4096), { code: "EIO" });
});

Deno.test("blkdebug: errno takes numbers and names", async () => {
  await using img = await openDbg([{ event: "l2_update", errno: 28 }, { event: "l2_load", errno: "EROFS" }]);
  await img.event("l2_update");
  await assert.rejects(img.pwrite(0, sector()), { code: "ENOSPC" });
  await img.event("l2_load");
  await assert.rejects(img.pwrite(0, sector()), { code: "EROFS" });
});

async function failureOrder(immediately: boolean): Promise<string[]> {
  await using img = await openDbg([{ event: "l2_update", immediately }]);
  await img.event("l2_update");
  const order: string[] = [];
  setTimeout(() => order.push("timer"), 0);
  await img.pread(0, sector()).catch(() => order.push("error"));
  await new Promise((r) => setTimeout(r, 0));
  return order;
}

Deno.test("blkdebug: immediately fails without yielding to the event loop", async () => {
  assert.deepEqual(await failureOrder(true), ["error", "timer"]);
});

Deno.test("blkdebug: without immediately the failing request yields first", async () => {
  assert.deepEqual(await failureOrder(false), ["timer", "error"]);
});

Deno.test("blkdebug: a breakpoint holds one request while another completes", async () => {
  await using img = await openDbg();
  img.debug.break("l2_update", "A");
  let done = false;
  const held = (async () => {
    await img.event("l2_update");
    await img.pwrite(0, sector().fill(1));
    done = true;
  })();
  await img.debug.waitBreak("A");
  assert.ok(img.debug.isSuspended("A"));
  await img.pwrite(4096, sector().fill(2));
  await img.event("l2_update"); // the breakpoint fired once and is gone
  assert.equal(done, false);
  img.debug.resume("A");
  await held;
  assert.ok(done);
  assert.ok(!img.debug.isSuspended("A"));
});

Deno.test("blkdebug: a breakpoint on pwritev suspends a write from the core request path", async () => {
  await using img = await openDbg();
  const dbg = getBlkdebug(img);
  dbg.debugBreakpoint("pwritev", "w");
  const w = img.pwrite(0, sector().fill(9));
  await dbg.debugWaitBreak("w");
  const buf = sector();
  await img.pread(8192, buf);
  dbg.debugResume("w");
  await w;
  await img.pread(0, buf);
  assert.equal(buf[0], 9);
});

Deno.test("blkdebug: removeBreak resumes held requests and drops breakpoints", async () => {
  await using img = await openDbg();
  const dbg = getBlkdebug(img);
  dbg.debugBreakpoint("l2_load", "X");
  const held = img.event("l2_load");
  await dbg.debugWaitBreak("X");
  img.debug.removeBreak("X");
  await held;
  dbg.debugBreakpoint("l2_load", "Y");
  dbg.debugRemoveBreakpoint("Y");
  await img.event("l2_load");
  assert.ok(!dbg.debugIsSuspended("Y"));
});

Deno.test("blkdebug: resume and removeBreak of unknown tags fail with ENOENT; break checks the event", async () => {
  await using img = await openDbg();
  const dbg = getBlkdebug(img);
  assert.throws(() => dbg.debugResume("nope"), { code: "ENOENT" });
  assert.throws(() => dbg.debugRemoveBreakpoint("nope"), { code: "ENOENT" });
  // qemu-io 7.2 `break no_such_event t` on blkdebug: "Could not set breakpoint: No such file or directory".
  assert.throws(() => dbg.debugBreakpoint("no_such_event", "t"), { code: "ENOENT" });
  await using plain = await open({ driver: "memory", size: 512 });
  assert.throws(() => getBlkdebug(plain), { code: "ENOENT" });
  // Without a blkdebug node below: "Could not set breakpoint: Operation not supported".
  assert.throws(() => plain.debug.break("l2_load", "t"), { code: "ENOTSUP" });
});

Deno.test("blkdebug: trace listeners see events with the request, flushes and injected errors", async () => {
  await using img = await openDbg([{ event: "l2_alloc_write", once: true, errno: "ENOSPC" }]);
  const records: BlkdebugTraceRecord[] = [];
  await img.pwrite(0, sector());
  const stop = getBlkdebug(img).addTraceListener((r) => records.push(r));
  await img.event("l2_alloc_write", { id: 42, op: "write", node: img.name, offset: 4096, length: 512 });
  await img.flush().catch(() => {});
  stop();
  await img.event("l1_update");
  // The core raises flush_to_os on the blkdebug node, then passes the flush through its intercept.
  assert.deepEqual(records.map((r) => r.kind === "event" ? r.event : r.kind), ["l2_alloc_write", "flush_to_os", "flush", "error"]);
  assert.equal(records[0].event, "l2_alloc_write");
  assert.equal(records[0].req?.id, 42);
  assert.equal(records[0].node, getBlkdebug(img).nodeName);
  assert.equal(records[3].code, "ENOSPC");
  assert.equal(records[3].op, "flush");
});

Deno.test("createTraceLog() writes JSON lines and text lines", async () => {
  await using img = await openDbg();
  const json: string[] = [];
  const text: string[] = [];
  const stopJson = createTraceLog(img, { format: "json", write: (l) => json.push(l) });
  const stopText = createTraceLog(img, { write: (l) => text.push(l) });
  await img.pwrite(0, sector());
  stopJson();
  stopText();
  const parsed = json.map((l) => JSON.parse(l));
  assert.ok(parsed.some((r) => r.kind === "event" && r.event === "pwritev" && r.req.op === "write" && r.req.length === 512));
  assert.ok(text.some((l) => / event pwritev_done state=1 req=\d+ write /.test(l)));
});

Deno.test("blkdebug: align makes the core pad requests", async () => {
  await using img = await open({
    driver: "raw",
    file: { driver: "blkdebug", align: 4096, image: { driver: "test-spy", tag: "dbg-align", size: 65536 } },
  });
  await img.pwrite(100, sector());
  const calls = spies.get("dbg-align")!.calls;
  assert.deepEqual(calls.map((c) => [c.op, c.offset, c.length]), [["read", 0, 4096], ["write", 0, 4096]]);
});

Deno.test("blkdebug: max-transfer makes the core split requests", async () => {
  await using img = await open({
    driver: "raw",
    file: { driver: "blkdebug", "max-transfer": "4k", image: { driver: "test-spy", tag: "dbg-max", size: 65536 } },
  });
  await img.pwrite(0, sector(16384));
  assert.deepEqual(spies.get("dbg-max")!.calls.map((c) => c.length), [4096, 4096, 4096, 4096]);
  assert.equal(img.primaryChild?.limits.maxTransfer, 4096);
});

Deno.test("blkdebug: impossible limits are rejected", async () => {
  const img = { driver: "memory", size: 4096 };
  await assert.rejects(open({ driver: "blkdebug", align: 3, image: img }), /align 3/);
  await assert.rejects(open({ driver: "blkdebug", align: 4096, "max-transfer": 1000, image: img }), /max-transfer 1000/);
  await assert.rejects(open({ driver: "blkdebug", "opt-discard": 4096, "max-discard": 6144, image: img }), /max-discard 6144/);
});

Deno.test("blkdebug: the file child key works as well as image", async () => {
  await using node = await open({ driver: "blkdebug", file: { driver: "memory", size: 4096 } });
  assert.equal(node.length, 4096);
  await node.pwrite(0, sector());
});
