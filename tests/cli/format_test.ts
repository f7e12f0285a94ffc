import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { cFixed, cvtstr, sizeToStr } from "../../cli/_common.ts";
import { dumpBuffer, splitWords, timestr } from "../../cli/io_commands/_session.ts";
import { nonZeroRuns } from "../../core/_bytes.ts";

Deno.test("cvtstr() formats sizes as qemu-io does", () => {
  assertEquals(cvtstr(0), "0 bytes");
  assertEquals(cvtstr(1), "1 bytes");
  assertEquals(cvtstr(435.791371), "435.791371 bytes");
  assertEquals(cvtstr(1536), "1.500 KiB");
  assertEquals(cvtstr(65536), "64 KiB");
  assertEquals(cvtstr(1.0625 * 2 ** 20), "1.062 MiB");
  assertEquals(cvtstr(63.9375 * 2 ** 20), "63.938 MiB");
});

Deno.test("cFixed() rounds exact ties to even like printf", () => {
  assertEquals(cFixed(1.0625, 3), "1.062");
  assertEquals(cFixed(1.1875, 3), "1.188");
  assertEquals(cFixed(2.5, 0), "2");
  assertEquals(cFixed(0.1, 3), "0.100");
});

Deno.test("sizeToStr() formats sizes as qemu-img info does", () => {
  assertEquals(sizeToStr(0), "0 B");
  assertEquals(sizeToStr(4096), "4 KiB");
  assertEquals(sizeToStr(331776), "324 KiB");
  assertEquals(sizeToStr(1024000), "0.977 MiB");
  assertEquals(sizeToStr(67108864), "64 MiB");
  assertEquals(sizeToStr(1.5 * 2 ** 40), "1.5 TiB");
});

Deno.test("timestr() prints seconds under a second and H:MM:SS.ss above", () => {
  assertEquals(timestr(4, false), "00.00 sec");
  assertEquals(timestr(123, false), "00.12 sec");
  assertEquals(timestr(61500, false), "0:01:01.50");
  assertEquals(timestr(4, true), "0:00:00.00");
});

Deno.test("dumpBuffer() prints qemu-io's hexdump lines", () => {
  const buf = new Uint8Array([0x41, 0x62, 0x2e, 0x00, 0x39]);
  assertEquals(dumpBuffer(buf, 0x200), "00000200:  41 62 2e 00 39  Ab..9\n");
});

Deno.test("splitWords() splits at spaces only and keeps quotes, as qemu-io's breakline", () => {
  assertEquals(splitWords("write -P 0xab  0 64k"), ["write", "-P", "0xab", "0", "64k"]);
  assertEquals(splitWords(`open -o driver=qcow2 json:{"file.filename":"a"}`), ["open", "-o", "driver=qcow2", `json:{"file.filename":"a"}`]);
  assertEquals(splitWords("help ''"), ["help", "''"]);
  assertEquals(splitWords("read\t0 512"), ["read\t0", "512"]);
});

Deno.test("nonZeroRuns() finds the data runs at the given granularity", () => {
  const buf = new Uint8Array(16384);
  buf[10] = 1;
  buf[4096 + 5] = 1;
  buf[12288] = 1;
  assertEquals(nonZeroRuns(buf, 4096), [[0, 8192], [12288, 16384]]);
  assertEquals(nonZeroRuns(new Uint8Array(8192), 4096), []);
});
