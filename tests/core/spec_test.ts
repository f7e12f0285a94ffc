import assert from "node:assert/strict";
import { BlockError, parseDotted, parseJsonFilename, parseSize } from "../../mod.ts";
import { looksDotted, normaliseSpec } from "../../core/spec.ts";

Deno.test("parseDotted() nests dotted keys", () => {
  assert.deepEqual(parseDotted("driver=raw,file.driver=file,file.filename=a.img"), {
    driver: "raw",
    file: { driver: "file", filename: "a.img" },
  });
});

Deno.test("parseDotted() unescapes doubled commas", () => {
  assert.deepEqual(parseDotted("driver=file,filename=a,,b.img"), { driver: "file", filename: "a,b.img" });
});

Deno.test("parseDotted() turns numbered keys into arrays", () => {
  const o = parseDotted("driver=blkdebug,inject-error.0.event=l2_update,inject-error.1.event=l1_update");
  assert.deepEqual(o["inject-error"], [{ event: "l2_update" }, { event: "l1_update" }]);
});

Deno.test("parseDotted() rejects an item without '=' and names it", () => {
  assert.throws(() => parseDotted("driver=raw,oops"), (e: BlockError) => e.code === "EINVAL" && /'oops'/.test(e.message));
});

Deno.test("parseDotted() rejects a key given twice", () => {
  assert.throws(() => parseDotted("driver=raw,driver=file"), /given twice/);
});

Deno.test("parseJsonFilename() accepts nested and flattened keys", () => {
  assert.deepEqual(parseJsonFilename('json:{"driver":"qcow2","file":{"driver":"file"},"file.filename":"x"}'), {
    driver: "qcow2",
    file: { driver: "file", filename: "x" },
  });
});

Deno.test("parseJsonFilename() reports bad JSON clearly", () => {
  assert.throws(() => parseJsonFilename("json:{driver"), (e: BlockError) => e.code === "EINVAL" && /json:/.test(e.message));
  assert.throws(() => parseJsonFilename("json:[1]"), /JSON object/);
});

Deno.test("normaliseSpec() treats a plain path as a filename", () => {
  assert.deepEqual(normaliseSpec("/tmp/disk.img"), { filename: "/tmp/disk.img" });
  assert.deepEqual(normaliseSpec("weird=name.img"), { filename: "weird=name.img" });
});

Deno.test("looksDotted() tells options from filenames", () => {
  assert.ok(looksDotted("driver=qcow2,file.filename=a"));
  assert.ok(!looksDotted("a.img"));
});

Deno.test("parseSize() accepts qemu-img suffixes", () => {
  assert.equal(parseSize("512"), 512);
  assert.equal(parseSize("64k"), 65536);
  assert.equal(parseSize("1.5M"), 1572864);
  assert.equal(parseSize("10G"), 10 * 2 ** 30);
  assert.equal(parseSize("1T"), 2 ** 40);
  assert.equal(parseSize("abc"), undefined);
});

Deno.test("parseSize() takes hexadecimal sizes as qemu-img 7.2 does: no fraction, a suffix multiplies", () => {
  assert.equal(parseSize("0x10000"), 65536);
  assert.equal(parseSize("0X200"), 512);
  assert.equal(parseSize("0x1k"), 1024); // qemu-img create -o cluster_size=0x1k makes 1024-byte clusters (with a deprecation warning)
  assert.equal(parseSize("0x1.8"), undefined);
});
