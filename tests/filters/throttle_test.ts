import assert from "node:assert/strict";
import { BlockError, type BlockNode, open } from "../../mod.ts";
import { createFakeClock, type FakeClock, validateThrottleLimits } from "../../filters/throttle.ts";

function openThrottled(clock: FakeClock, limits: Record<string, unknown>): Promise<BlockNode> {
  return open({ driver: "throttle", limits, clock, file: { driver: "memory", size: 64 << 20 } });
}

/** Starts requests and counts how many have completed. */
function tracker() {
  const done: string[] = [];
  return {
    done,
    add(name: string, p: Promise<unknown>): void {
      p.then(() => done.push(name));
    },
  };
}

Deno.test("throttle: bps-total admits a tenth of a second's budget at once, then waits by the average", async () => {
  const clock = createFakeClock();
  await using node = await openThrottled(clock, { "bps-total": 1048576 });
  const t = tracker();
  for (let i = 0; i < 3; i++) t.add(`r${i}`, node.pread(i * 65536, new Uint8Array(65536)));
  await clock.advance(0);
  assert.deepEqual(t.done, ["r0", "r1"]);
  await clock.advance(24.9); // 3rd waits (131072 - 104857.6) / 1048576 s = 25 ms
  assert.equal(t.done.length, 2);
  await clock.advance(0.2);
  assert.deepEqual(t.done, ["r0", "r1", "r2"]);
});

Deno.test("throttle: iops-total spaces requests by 1/iops once the bucket is full", async () => {
  const clock = createFakeClock();
  await using node = await openThrottled(clock, { "iops-total": 10 });
  const t = tracker();
  for (let i = 0; i < 5; i++) t.add(`r${i}`, node.pread(i * 512, new Uint8Array(512)));
  await clock.advance(0);
  assert.equal(t.done.length, 2);
  const seen: number[] = [];
  for (const at of [99.9, 100.1, 199.9, 200.1, 299.9, 300.1]) {
    await clock.advance(at - clock.now());
    seen.push(t.done.length);
  }
  assert.deepEqual(seen, [2, 3, 3, 4, 4, 5]);
  assert.deepEqual(t.done, ["r0", "r1", "r2", "r3", "r4"]);
});

Deno.test("throttle: -max allows a burst of max × max-length, then the average applies", async () => {
  const clock = createFakeClock();
  await using node = await openThrottled(clock, { "iops-total": 10, "iops-total-max": 20 });
  const t = tracker();
  for (let i = 0; i < 23; i++) t.add(`r${i}`, node.pread(i * 512, new Uint8Array(512)));
  await clock.advance(0);
  assert.equal(t.done.length, 21);
  await clock.advance(99.9);
  assert.equal(t.done.length, 21);
  await clock.advance(0.2);
  assert.equal(t.done.length, 22);
  await clock.advance(100);
  assert.equal(t.done.length, 23);
});

Deno.test("throttle: with -max-length > 1 a burst runs at the max rate", async () => {
  const clock = createFakeClock();
  await using node = await openThrottled(clock, { "iops-total": 10, "iops-total-max": 50, "iops-total-max-length": 2 });
  const t = tracker();
  for (let i = 0; i < 8; i++) t.add(`r${i}`, node.pread(i * 512, new Uint8Array(512)));
  await clock.advance(0);
  assert.equal(t.done.length, 6); // burst bucket holds max / 10 = 5 operations
  await clock.advance(19.9);
  assert.equal(t.done.length, 6);
  await clock.advance(0.2); // 1 / 50 s later
  assert.equal(t.done.length, 7);
  await clock.advance(20);
  assert.equal(t.done.length, 8);
});

Deno.test("throttle: iops-size counts a large request as several operations", async () => {
  const clock = createFakeClock();
  await using node = await openThrottled(clock, { "iops-total": 10, "iops-size": 4096 });
  const t = tracker();
  t.add("big", node.pread(0, new Uint8Array(16384)));
  t.add("small", node.pread(16384, new Uint8Array(512)));
  await clock.advance(0);
  assert.deepEqual(t.done, ["big"]);
  await clock.advance(299.9); // (4 - 1) operations over at 10 iops
  assert.deepEqual(t.done, ["big"]);
  await clock.advance(0.2);
  assert.deepEqual(t.done, ["big", "small"]);
});

Deno.test("throttle: a request is admitted first and accounted after, so the next one pays", async () => {
  const clock = createFakeClock();
  await using node = await openThrottled(clock, { "bps-total": 1000 });
  const t = tracker();
  t.add("big", node.pwrite(0, new Uint8Array(1 << 20)));
  t.add("tiny", node.pread(32 << 20, new Uint8Array(1))); // no overlap: only the throttle orders them
  await clock.advance(0);
  assert.deepEqual(t.done, ["big"]);
  await clock.advance(1048000); // (1048576 - 100) bytes at 1000 bytes/s ≈ 1048.476 s
  assert.deepEqual(t.done, ["big"]);
  await clock.advance(1000);
  assert.deepEqual(t.done, ["big", "tiny"]);
});

Deno.test("throttle: reads and writes queue separately", async () => {
  const clock = createFakeClock();
  await using node = await openThrottled(clock, { "bps-read": 1000 });
  const t = tracker();
  t.add("r0", node.pread(0, new Uint8Array(100000)));
  t.add("r1", node.pread(0, new Uint8Array(10)));
  t.add("w0", node.pwrite(200000, new Uint8Array(100000)));
  t.add("w1", node.pwrite(400000, new Uint8Array(100000)));
  await clock.advance(0);
  assert.deepEqual(t.done, ["r0", "w0", "w1"]);
  await clock.advance(200000); // let r1 finish before close
  assert.equal(t.done.length, 4);
});

Deno.test("throttle: flush is not throttled", async () => {
  const clock = createFakeClock();
  await using node = await openThrottled(clock, { "bps-total": 1000 });
  await node.pwrite(0, new Uint8Array(100000));
  const t = tracker();
  t.add("read", node.pread(0, new Uint8Array(10)));
  t.add("flush", node.flush());
  await clock.advance(0);
  assert.deepEqual(t.done, ["flush"]);
  await clock.advance(200000);
  assert.deepEqual(t.done, ["flush", "read"]);
});

Deno.test("throttle: write-zeroes and discard count as writes", async () => {
  const clock = createFakeClock();
  await using node = await openThrottled(clock, { "iops-write": 10 });
  const t = tracker();
  t.add("z", node.pwriteZeroes(0, 4096));
  t.add("d", node.pdiscard(8192, 4096));
  t.add("w", node.pwrite(16384, new Uint8Array(512)));
  t.add("r", node.pread(0, new Uint8Array(512)));
  await clock.advance(0);
  assert.deepEqual(t.done.toSorted(), ["d", "r", "z"]);
  await clock.advance(100.1);
  assert.deepEqual(t.done.toSorted(), ["d", "r", "w", "z"]);
});

Deno.test("throttle: a node without limits arms no timers", async () => {
  const clock = createFakeClock();
  await using node = await open({ driver: "throttle", clock, file: { driver: "memory", size: 1 << 20 } });
  const buf = new Uint8Array(4096);
  for (let i = 0; i < 100; i++) await node.pwrite(i * 4096, buf);
  for (let i = 0; i < 100; i++) await node.pread(i * 4096, buf);
  assert.equal(clock.pendingTimers, 0);
  assert.equal(clock.now(), 0);
});

Deno.test("throttle: limits arrive through a dotted spec", async () => {
  await using node = await open("driver=throttle,limits.iops-total=100,limits.iops-total-max=200,file.driver=memory,file.size=64k");
  const info = await node.info();
  assert.deepEqual(info.limits, { "iops-total": 100, "iops-total-max": 200 });
});

const invalid: [string, Record<string, unknown>, RegExp][] = [
  ["total with read", { "bps-total": 1, "bps-read": 1 }, /total values and read\/write values cannot be used at the same time/],
  [
    "total max with write max",
    { "iops-total": 5, "iops-total-max": 10, "iops-write": 5, "iops-write-max": 10 },
    /cannot be used at the same time/,
  ],
  [
    "max without average",
    { "bps-read-max": 10 },
    /bps_max\/iops_max require corresponding bps\/iops values \('bps-read-max' without 'bps-read'\)/,
  ],
  [
    "max below average",
    { "bps-write": 100, "bps-write-max": 50 },
    /cannot be lower than bps\/iops \('bps-write-max' 50 must be >= 'bps-write' 100\)/,
  ],
  ["max-length 0", { "iops-total": 1, "iops-total-max": 2, "iops-total-max-length": 0 }, /the burst length cannot be 0/],
  ["max-length without max", { "iops-total": 1, "iops-total-max-length": 2 }, /burst length set without burst rate/],
  ["too large", { "bps-total": 1e16 }, /values must be within \[0, 1000000000000000\] \('bps-total' is 10000000000000000\)/],
  ["negative", { "iops-read": "-1" }, /values must be within .*'iops-read' is -1/],
  ["burst too long", { "iops-total": 1, "iops-total-max": 1e15, "iops-total-max-length": 2 }, /burst length too high/],
  ["iops-size without iops", { "bps-total": 10, "iops-size": 4096 }, /iops size requires an iops value to be set/],
  ["unknown limit", { bps: 10 }, /unknown limit 'bps'/],
  ["not a number", { "bps-total": "fast" }, /'bps-total' must be an integer, got 'fast'/],
];

for (const [what, limits, re] of invalid) {
  Deno.test(`validateThrottleLimits() rejects ${what}`, () => {
    assert.throws(
      () => validateThrottleLimits(limits),
      (e: unknown) => e instanceof BlockError && e.code === "EINVAL" && re.test(e.message),
    );
  });
}

Deno.test("throttle: open rejects invalid limits with EINVAL", async () => {
  await assert.rejects(
    open({ driver: "throttle", limits: { "bps-total": 1, "bps-write": 1 }, file: { driver: "memory", size: 4096 } }),
    { code: "EINVAL" },
  );
});
