import assert from "node:assert/strict";
import { type BlockNode, open } from "../../mod.ts";
import {
  createFakeClock,
  createThrottleGroup,
  deleteThrottleGroup,
  type FakeClock,
  getThrottleGroup,
  setThrottleGroupLimits,
} from "../../filters/throttle.ts";

function member(group: string): Promise<BlockNode> {
  return open({ driver: "throttle", "throttle-group": group, file: { driver: "memory", size: 1 << 20 } });
}

async function drain(clock: FakeClock): Promise<void> {
  await clock.advance(1e7);
}

Deno.test("throttle group: members share one budget and are served round-robin", async () => {
  const clock = createFakeClock();
  createThrottleGroup("tg-rr", { "iops-total": 10 }, { clock });
  try {
    await using a = await member("tg-rr");
    await using b = await member("tg-rr");
    const order: string[] = [];
    const reqs: Promise<void>[] = [];
    for (let i = 1; i <= 4; i++) reqs.push(a.pread(i * 512, new Uint8Array(512)).then(() => void order.push(`A${i}`)));
    for (let i = 1; i <= 4; i++) reqs.push(b.pread(i * 512, new Uint8Array(512)).then(() => void order.push(`B${i}`)));
    await clock.advance(0);
    assert.deepEqual(order, ["A1", "A2"]);
    const counts: number[] = [];
    for (let step = 1; step <= 6; step++) {
      await clock.advance(100);
      counts.push(order.length);
    }
    await Promise.all(reqs);
    // One request per 100 ms for the whole group, alternating while both have requests queued.
    assert.deepEqual(counts, [3, 4, 5, 6, 7, 8]);
    assert.deepEqual(order, ["A1", "A2", "A3", "B1", "A4", "B2", "B3", "B4"]);
  } finally {
    deleteThrottleGroup("tg-rr");
  }
});

Deno.test("throttle group: a node alone in the group is not slowed by an idle member", async () => {
  const clock = createFakeClock();
  createThrottleGroup("tg-idle", { "bps-total": 1 << 20 }, { clock });
  try {
    await using a = await member("tg-idle");
    await using _b = await member("tg-idle");
    await a.pread(0, new Uint8Array(65536));
    await a.pread(0, new Uint8Array(32768));
    assert.equal(clock.pendingTimers, 0);
  } finally {
    deleteThrottleGroup("tg-idle");
  }
});

Deno.test("setThrottleGroupLimits() changes limits live and restarts waiting requests", async () => {
  const clock = createFakeClock();
  createThrottleGroup("tg-live", { "iops-total": 1 }, { clock });
  try {
    await using a = await member("tg-live");
    const done: number[] = [];
    const reqs = [0, 1, 2, 3].map((i) => a.pread(i * 512, new Uint8Array(512)).then(() => void done.push(i)));
    await clock.advance(500);
    assert.deepEqual(done, [0]);
    setThrottleGroupLimits("tg-live", {});
    await clock.advance(0);
    await Promise.all(reqs);
    assert.deepEqual(done, [0, 1, 2, 3]);
    assert.equal(getThrottleGroup("tg-live")?.enabled, false);
    assert.equal(clock.pendingTimers, 0);
  } finally {
    deleteThrottleGroup("tg-live");
  }
});

Deno.test("setThrottleGroupLimits() can tighten limits of an unlimited group", async () => {
  const clock = createFakeClock();
  createThrottleGroup("tg-tight", {}, { clock });
  try {
    await using a = await member("tg-tight");
    await a.pread(0, new Uint8Array(512));
    setThrottleGroupLimits("tg-tight", { "iops-read": 10 });
    const done: number[] = [];
    for (let i = 0; i < 3; i++) a.pread(0, new Uint8Array(512)).then(() => void done.push(i));
    await clock.advance(0);
    assert.deepEqual(done, [0, 1]);
    await drain(clock);
    assert.deepEqual(done, [0, 1, 2]);
    assert.throws(() => setThrottleGroupLimits("tg-tight", { "iops-read": -1 }), { code: "EINVAL" });
    assert.deepEqual(getThrottleGroup("tg-tight")?.limits, { "iops-read": 10 });
  } finally {
    deleteThrottleGroup("tg-tight");
  }
});

Deno.test("throttle group: registry errors name the group", async () => {
  createThrottleGroup("tg-reg", { "iops-total": 100 });
  try {
    assert.throws(() => createThrottleGroup("tg-reg"), { code: "EEXIST" });
    assert.throws(() => setThrottleGroupLimits("tg-none", {}), { code: "ENOENT" });
    assert.throws(() => deleteThrottleGroup("tg-none"), { code: "ENOENT" });
    await assert.rejects(member("tg-none"), /Throttle group 'tg-none' does not exist/);
    await assert.rejects(
      open({ driver: "throttle", "throttle-group": "tg-reg", limits: { "iops-total": 5 }, file: { driver: "memory", size: 512 } }),
      /group exists/,
    );
    const node = await member("tg-reg");
    assert.deepEqual(getThrottleGroup("tg-reg")?.memberNames, [node.name]);
    assert.throws(() => deleteThrottleGroup("tg-reg"), { code: "EBUSY" });
    await node.close();
    assert.equal(getThrottleGroup("tg-reg")?.size, 0);
  } finally {
    deleteThrottleGroup("tg-reg");
  }
  assert.equal(getThrottleGroup("tg-reg"), undefined);
});

Deno.test("throttle group: a group named with inline limits is created and dropped with its nodes", async () => {
  const node = await open({
    driver: "throttle",
    "throttle-group": "tg-inline",
    limits: { "bps-total": 1e6 },
    file: { driver: "memory", size: 512 },
  });
  const other = await member("tg-inline");
  assert.equal(getThrottleGroup("tg-inline")?.size, 2);
  await other.close();
  await node.close();
  assert.equal(getThrottleGroup("tg-inline"), undefined);
});
