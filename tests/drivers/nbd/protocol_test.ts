import { deepStrictEqual as assertEquals, ok, throws } from "node:assert/strict";
import {
  CMD,
  decodeRequest,
  encodeErrorChunk,
  encodeRequest,
  fromNbdError,
  getU64,
  NbdProtocolError,
  type RequestHeader,
  toNbdError,
  view,
} from "../../../drivers/nbd/_protocol.ts";
import {
  decodeInfoRequest,
  decodeMetaContextRequest,
  encodeInfoRequest,
  encodeMetaContextRequest,
} from "../../../drivers/nbd/_handshake_codecs.ts";

Deno.test("decodeInfoRequest() round-trips and returns null for every truncation", () => {
  const b = encodeInfoRequest("disk", [3, 2]);
  assertEquals(decodeInfoRequest(b), { name: "disk", requests: [3, 2] });
  for (let n = 0; n < b.length; n++) assertEquals(decodeInfoRequest(b.subarray(0, n)), null, `length ${n}`);
  const long = new Uint8Array(b.length + 1);
  long.set(b);
  assertEquals(decodeInfoRequest(long), null);
  const bad = b.slice();
  view(bad).setUint32(0, 0xffffffff);
  assertEquals(decodeInfoRequest(bad), null);
});

Deno.test("decodeMetaContextRequest() round-trips and rejects lengths past the data", () => {
  const b = encodeMetaContextRequest("", ["base:allocation", "qemu:"]);
  assertEquals(decodeMetaContextRequest(b), { name: "", queries: ["base:allocation", "qemu:"] });
  for (let n = 0; n < b.length; n++) assertEquals(decodeMetaContextRequest(b.subarray(0, n)), null, `length ${n}`);
  const huge = b.slice();
  view(huge).setUint32(4, 0x7fffffff);
  assertEquals(decodeMetaContextRequest(huge), null);
});

Deno.test("decodeRequest() reads a header in place and refuses a bad magic", () => {
  const b = new Uint8Array(40);
  const r: RequestHeader = { flags: 1, type: CMD.WRITE, cookieHi: 7, cookieLo: 9, offset: 2 ** 40 + 5, length: 4096 };
  encodeRequest(view(b), 12, r);
  const out = decodeRequest(view(b), 12, { flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0 });
  assertEquals(out, r);
  b[12] ^= 1;
  throws(() => decodeRequest(view(b), 12, out), NbdProtocolError);
});

Deno.test("decodeRequest() turns offsets past 2^53 into one no export holds", () => {
  const b = new Uint8Array(28);
  encodeRequest(view(b), 0, { flags: 0, type: CMD.READ, cookieHi: 0, cookieLo: 1, offset: 0, length: 1 });
  view(b).setUint32(16, 0xffffffff);
  assertEquals(
    decodeRequest(view(b), 0, { flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0 }).offset,
    Number.MAX_SAFE_INTEGER,
  );
  throws(() => getU64(view(b), 16, "offset"), /Invalid offset 0xffffffff/);
});

Deno.test("toNbdError() and fromNbdError() map errnos as QEMU does, unknown values to EINVAL", () => {
  assertEquals(["EROFS", "EIO", "EFBIG", "ENOSPC", "ENOTSUP", "EBUSY", "ESHUTDOWN"].map(toNbdError), [1, 5, 28, 28, 95, 22, 108]);
  assertEquals([1, 5, 12, 22, 28, 75, 95, 108, 4242].map(fromNbdError), [
    "EPERM",
    "EIO",
    "ENOMEM",
    "EINVAL",
    "ENOSPC",
    "EOVERFLOW",
    "ENOTSUP",
    "ESHUTDOWN",
    "EINVAL",
  ]);
});

Deno.test("encodeErrorChunk() cuts messages to the 4096-byte limit and drops NULs", () => {
  const c = encodeErrorChunk(0, 1, 5, "x\0".repeat(5000));
  const len = view(c).getUint16(24);
  assertEquals(len, 4096);
  ok(!c.subarray(26).includes(0));
});
