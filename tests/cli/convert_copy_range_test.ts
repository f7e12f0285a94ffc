/**
 * `convert -C` (copy offloading) and `--salvage`, compared with qemu-img in
 * the same run: the same refusals in qemu-img's words, the same target data
 * and map, and the copy done by the graph's copy-range op (the source's data
 * never read through the node graph).
 */

import assert from "node:assert/strict";
import { type BlockError, createImage, open } from "../../mod.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

/** A 4 MiB raw image: 1 MiB of data, a zeroed range, a range of written zeros, holes elsewhere. */
async function source(dir: string): Promise<string> {
  const p = `${dir}/s.raw`;
  await runOk("qemu-img", ["create", "-q", "-f", "raw", p, "4M"]);
  await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x11 0 1M", "-c", "write -z 2M 64k", "-c", "write -P 0 3M 64k", p]);
  return p;
}

Deno.test({
  name: "convert -C refuses -c, -S and --salvage with qemu-img's messages, in its order",
  ignore,
  async fn() {
    await using d = await tempDir();
    const src = await source(d.path);
    for (const extra of [["-S", "4k"], ["-S", "8k"], ["-c"], ["--salvage"], ["-c", "-S", "4k", "--salvage"], ["-S", "4k", "--salvage"]]) {
      const args = ["convert", "-C", ...extra, "-O", "qcow2", src, `${d.path}/t.qcow2`];
      const q = await run("qemu-img", args);
      const r = await cli(args);
      assert.equal(q.code, 1);
      assert.equal(r.code, q.code, extra.join(" "));
      assert.equal(r.stderr.replace(/^[^:]*: /, ""), q.stderr.replace(/^[^:]*: /, ""), extra.join(" "));
    }
  },
});

for (const fmt of ["raw", "qcow2"]) {
  Deno.test({
    name: `convert -C of a ${fmt} source into raw gives qemu-img -C's data and map`,
    ignore,
    async fn() {
      await using d = await tempDir();
      let src = await source(d.path);
      if (fmt === "qcow2") {
        await runOk("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", src, `${d.path}/s.qcow2`]);
        src = `${d.path}/s.qcow2`;
      }
      await runOk("qemu-img", ["convert", "-C", "-f", fmt, "-O", "raw", src, `${d.path}/q.raw`]);
      const r = await cli(["convert", "-C", "-f", fmt, "-O", "raw", src, `${d.path}/b.raw`]);
      assert.equal(r.code, 0, r.stderr);
      await runOk("qemu-img", ["compare", "-q", "-f", "raw", "-F", "raw", `${d.path}/q.raw`, `${d.path}/b.raw`]);
      const map = async (p: string) => (await runOk("qemu-img", ["map", "--output=json", "-f", "raw", p])).stdout;
      assert.equal(await map(`${d.path}/b.raw`), await map(`${d.path}/q.raw`));
    },
  });
}

Deno.test({
  name: "copyRange copies a qcow2 source's data into a raw target without reading it through the graph",
  ignore: skipUnless("qemu-img", "qemu-io") || Deno.permissions.querySync({ name: "ffi" }).state !== "granted",
  async fn() {
    await using d = await tempDir();
    const raw = await source(d.path);
    await runOk("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, `${d.path}/s.qcow2`]);
    await createImage(`${d.path}/t.raw`, "raw", 4 << 20);
    {
      await using src = await open(`${d.path}/s.qcow2`, { readOnly: true });
      await using dst = await open({ driver: "raw", file: { driver: "file", filename: `${d.path}/t.raw` } });
      const file = src.children.get("file")!;
      await src.copyRange(0, 4 << 20, dst, 0);
      assert.equal(src.stats.bytesRead, 0);
      assert.ok(file.stats.bytesRead < 1 << 20, `${file.stats.bytesRead} bytes read from the source file`);
    }
    await runOk("qemu-img", ["compare", "-q", "-f", "raw", "-F", "qcow2", `${d.path}/t.raw`, `${d.path}/s.qcow2`]);
  },
});

Deno.test("copyRange into a qcow2 target is refused with ENOTSUP (it allocates on write), and convert -C then copies normally", async () => {
  await using d = await tempDir();
  const s = `${d.path}/s.raw`;
  await Deno.writeFile(s, new Uint8Array(1 << 20).fill(5));
  await createImage(`${d.path}/t.qcow2`, "qcow2", 1 << 20);
  {
    await using src = await open({ driver: "raw", file: { driver: "file", filename: s } }, { readOnly: true });
    await using dst = await open(`${d.path}/t.qcow2`);
    await assert.rejects(src.copyRange(0, 1 << 20, dst, 0), (e: BlockError) => e.code === "ENOTSUP");
  }
  const r = await cli(["convert", "-C", "-f", "raw", "-O", "qcow2", s, `${d.path}/u.qcow2`]);
  assert.equal(r.code, 0, r.stderr);
  await using back = await open(`${d.path}/u.qcow2`, { readOnly: true });
  const buf = new Uint8Array(1 << 20);
  await back.pread(0, buf);
  assert.ok(buf.every((b) => b === 5));
});

Deno.test({
  name: "convert --salvage zeroes the sectors it cannot read and warns as qemu-img does",
  ignore,
  async fn() {
    await using d = await tempDir();
    const img = `${d.path}/bad.raw`;
    await runOk("qemu-img", ["create", "-q", "-f", "raw", img, "1M"]);
    await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x22 0 1M", img]);
    await Deno.writeTextFile(`${d.path}/bd.conf`, '[inject-error]\nevent = "read_aio"\nerrno = "5"\nsector = "64"\nonce = "off"\n');
    const spec = `blkdebug:${d.path}/bd.conf:${img}`;
    const q = await run("qemu-img", ["convert", "--salvage", "-f", "raw", "-O", "raw", spec, `${d.path}/q.raw`]);
    const r = await cli(["convert", "--salvage", "-f", "raw", "-O", "raw", spec, `${d.path}/b.raw`]);
    assert.equal(q.code, 0, q.stderr);
    assert.equal(r.code, 0, r.stderr);
    assert.match(q.stderr, /warning: error while reading offset 32768: Input\/output error/);
    assert.equal(r.stderr.replace(/^[^:]*: /gm, ""), q.stderr.replace(/^[^:]*: /gm, ""));
    assert.deepEqual(await Deno.readFile(`${d.path}/b.raw`), await Deno.readFile(`${d.path}/q.raw`));
  },
});
