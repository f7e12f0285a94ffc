import assert from "node:assert/strict";
import { BLKDBG_EVENTS, errnoCode, isBlkdebugEvent } from "../../mod.ts";

Deno.test("BLKDBG_EVENTS lists QEMU's 48 events in QEMU's order", () => {
  assert.equal(BLKDBG_EVENTS.length, 48);
  assert.equal(BLKDBG_EVENTS[0], "l1_update");
  assert.equal(BLKDBG_EVENTS[25], "refblock_alloc_hookup");
  assert.equal(BLKDBG_EVENTS[47], "none");
  assert.equal(new Set(BLKDBG_EVENTS).size, 48);
});

Deno.test("isBlkdebugEvent() accepts event names only", () => {
  assert.ok(isBlkdebugEvent("cow_write"));
  assert.ok(!isBlkdebugEvent("cow_wrote"));
});

Deno.test("errnoCode() maps numbers and names", () => {
  assert.equal(errnoCode(5), "EIO");
  assert.equal(errnoCode("28"), "ENOSPC");
  assert.equal(errnoCode("enospc"), "ENOSPC");
  assert.equal(errnoCode(9999), undefined);
});
