import assert from "node:assert/strict";
import { type BlockError, createImage, open } from "../../mod.ts";
import { cli } from "../cli/_run.ts";
import { runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

/** A 1 MiB raw base holding byte 7 everywhere and a qcow2 overlay over it. */
async function chain(dir: string): Promise<{ base: string; top: string }> {
  const base = `${dir}/base.raw`;
  const top = `${dir}/top.qcow2`;
  await Deno.writeFile(base, new Uint8Array(1 << 20).fill(7));
  await createImage(top, "qcow2", 1 << 20, { options: { backing_file: base, backing_fmt: "raw" } });
  return { base, top };
}

const overlay = (top: string) => ({ driver: "qcow2", file: { driver: "file", filename: top } });

Deno.test("copy-on-read copies a read range the image takes from its backing file into it, whole clusters", async () => {
  await using d = await tempDir();
  const { top } = await chain(d.path);
  {
    await using img = await open({ driver: "copy-on-read", file: overlay(top) });
    const buf = new Uint8Array(100);
    await img.pread(70000, buf);
    assert.deepEqual([...new Set(buf)], [7]);
  }
  // Without the backing file the copied cluster (64k..128k) is there, the rest is not.
  await using alone = await open({ ...overlay(top), backing: null }, { readOnly: true });
  const st = await alone.blockStatus(65536, 65536);
  assert.deepEqual([st.allocated, st.length], [true, 65536]);
  assert.equal((await alone.blockStatus(0, 65536)).allocated, false);
  assert.equal((await alone.blockStatus(131072, 65536)).allocated, false);
  const back = new Uint8Array(65536);
  await alone.pread(65536, back);
  assert.deepEqual([...new Set(back)], [7]);
});

Deno.test("copy-on-read never rewrites what the image allocates itself: a cor_write rule at that sector never fails the read", async () => {
  await using d = await tempDir();
  const { top } = await chain(d.path);
  {
    await using img = await open(overlay(top));
    await img.pwrite(0, new Uint8Array(65536).fill(9));
  }
  // As iotest 197: cluster 0 (sector 0) is allocated and read first; cluster 1
  // is copied, its cor_write arms the rule, and the copy at 64 KiB does not
  // cover sector 0. Only a copy of cluster 0 would be failed by the rule.
  await using img = await open({
    driver: "copy-on-read",
    file: { driver: "blkdebug", "inject-error": [{ event: "cor_write", sector: 0 }], image: overlay(top) },
  });
  const buf = new Uint8Array(131072);
  await img.pread(0, buf);
  assert.deepEqual([...new Set(buf.subarray(0, 65536))], [9]);
  assert.deepEqual([...new Set(buf.subarray(65536))], [7]);
});

Deno.test("copy-on-read raises cor_write on the child, so a blkdebug rule on it fails the read", async () => {
  await using d = await tempDir();
  const { top } = await chain(d.path);
  await using img = await open({
    driver: "copy-on-read",
    file: { driver: "blkdebug", "inject-error": [{ event: "cor_write", errno: "EIO" }], image: overlay(top) },
  });
  await assert.rejects(img.pread(0, new Uint8Array(512)), (e: BlockError) => e.code === "EIO");
});

Deno.test("copy-on-read copies zero data as a write-zeroes (the image reads zero there without a backing file)", async () => {
  await using d = await tempDir();
  const base = `${d.path}/base.raw`;
  const top = `${d.path}/top.qcow2`;
  await Deno.writeFile(base, new Uint8Array(1 << 20));
  await createImage(top, "qcow2", 1 << 20, { options: { backing_file: base, backing_fmt: "raw" } });
  {
    await using img = await open({ driver: "copy-on-read", file: overlay(top) });
    await img.pread(0, new Uint8Array(512));
  }
  await using alone = await open({ ...overlay(top), backing: null }, { readOnly: true });
  const st = await alone.blockStatus(0, 65536);
  assert.deepEqual([st.allocated, st.zero, st.data], [true, true, false]);
});

Deno.test("copy-on-read refuses a read-only open with QEMU's messages (the filter's, and -C's)", async () => {
  await using d = await tempDir();
  const { top } = await chain(d.path);
  await assert.rejects(
    open({ driver: "copy-on-read", file: overlay(top) }, { readOnly: true }),
    (e: BlockError) => e.code === "EROFS" && e.message === "Block node is read-only",
  );
  await assert.rejects(
    open(top, { copyOnRead: true, readOnly: true }),
    (e: BlockError) => e.message === "Can't use copy-on-read on read-only device",
  );
});

Deno.test({
  name: "the copy-on-read filter in a json: spec copies as qemu-io's copy-on-read driver does (iotest 215)",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    const mk = async (tag: string) => {
      const base = `${d.path}/${tag}.base.qcow2`;
      const top = `${d.path}/${tag}.qcow2`;
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"]);
      await runOk("qemu-io", ["-c", "write -P 55 3M 1k", base]);
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
      return top;
    };
    const a = await mk("a");
    const b = await mk("b");
    const cmds = (
      p: string,
    ) => ["-c", `open -o driver=copy-on-read,file.driver=qcow2 ${p}`, "-c", "read -P 0 0 1M", "-c", "read -P 55 3M 1k"];
    await runOk("qemu-io", cmds(a));
    const r = await cli(["io", ...cmds(b)]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    for (const p of [a, b]) await runOk("qemu-img", ["rebase", "-u", "-b", "", "-f", "qcow2", p]);
    assert.equal(
      (await runOk("qemu-io", ["-f", "qcow2", "-c", "map", b])).stdout,
      (await runOk("qemu-io", ["-f", "qcow2", "-c", "map", a])).stdout,
    );
  },
});
