import assert from "node:assert/strict";
import { type BlockDriver, driverNames, open, registerDriver } from "../../mod.ts";

const zeros = (name: string, length: number): BlockDriver => ({
  name,
  kind: "protocol",
  open: () => Promise.resolve({ getLength: () => length, pread: (_o, buf) => void buf.fill(0) }),
});

Deno.test("a disposed registration takes its driver out of the registry", async () => {
  {
    using _ = registerDriver(zeros("test-scoped", 4096));
    await using n = await open({ driver: "test-scoped" });
    assert.equal(n.length, 4096);
  }
  assert.ok(!driverNames().includes("test-scoped"));
  await assert.rejects(open({ driver: "test-scoped" }), /Unknown driver 'test-scoped'/);
});

Deno.test("disposing a registration that replaced a driver puts the replaced one back", async () => {
  using _outer = registerDriver(zeros("test-layered", 512));
  {
    using _ = registerDriver(zeros("test-layered", 1024));
    await using n = await open({ driver: "test-layered" });
    assert.equal(n.length, 1024);
  }
  await using n = await open({ driver: "test-layered" });
  assert.equal(n.length, 512);
});

Deno.test("disposing a registration replaced since leaves the newer driver in place", () => {
  const first = registerDriver(zeros("test-stale", 512));
  using _ = registerDriver(zeros("test-stale", 2048));
  first[Symbol.dispose]();
  assert.ok(driverNames().includes("test-stale"), "the newer registration survives the older one's disposal");
});
