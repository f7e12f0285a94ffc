// Lazy refcounts: a guest flush writes the L2 tables but keeps the refcount blocks in the cache, as QEMU's qcow2_write_caches
// does (the dirty bit covers them until close). A writer killed after a flushed write leaves the same image as qemu-io's: the
// data and its L2 entry on disk, the refcount not (qemu-img check reports it; a read-write open repairs it). Iotest 039.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");
const DROP_IN = new URL("../../../cli/qemu-io.ts", import.meta.url).pathname;

async function killedWriter(img: string, ours: boolean, cmds: string[]): Promise<void> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=1.1,lazy_refcounts=on", img, "128M"]);
  const args = ["-t", "writethrough", ...cmds.flatMap((c) => ["-c", c]), "-c", "sigraise 9", img];
  const r = ours ? await run(Deno.execPath(), ["run", "-A", "--no-lock", DROP_IN, ...args]) : await run("qemu-io", args);
  assertEquals(r.code === 0, false, "the writer was killed");
}

for (
  const cmds of [
    ["write -P 0x5a 0 512"],
    ["write -P 0x5a 0 512", "write -P 0x5b 1M 64k", "flush", "write -P 0x5c 100M 4k"],
  ]
) {
  Deno.test({
    name: `lazy refcounts: after '${cmds.join("; ")}' and a kill, check finds what qemu-img finds on qemu-io's image`,
    ignore: QEMU,
    async fn() {
      await using d = await tempDir();
      const q = `${d.path}/q.qcow2`;
      const b = `${d.path}/b.qcow2`;
      await killedWriter(q, false, cmds);
      await killedWriter(b, true, cmds);
      const cq = await run("qemu-img", ["check", q]);
      const cb = await run("qemu-img", ["check", b]);
      assertEquals([cb.code, cb.stdout.replaceAll(b, "X"), cb.stderr], [cq.code, cq.stdout.replaceAll(q, "X"), cq.stderr]);
      // The data is there, and a read-write open repairs the refcounts.
      const cmp = await run("qemu-img", ["compare", q, b]);
      assertEquals(cmp.stdout, "Images are identical.\n");
      await runOk("qemu-io", ["-c", "read -P 0x5a 0 512", b]);
      const after = await run("qemu-img", ["check", b]);
      assertEquals(after.code, 0, after.stdout);
    },
  });
}

Deno.test({
  name: "lazy refcounts: opening the killed writer's image read-write repairs it and prints the repair's lines, as qemu-io does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const q = `${d.path}/q.qcow2`;
    const b = `${d.path}/b.qcow2`;
    await killedWriter(q, false, ["write -P 0x5a 0 512"]);
    await Deno.copyFile(q, b);
    const args = (p: string) => ["-c", "write -P 0x11 0 512", p];
    const rq = await run("qemu-io", args(q));
    const rb = await run(Deno.execPath(), ["run", "-A", "--no-lock", DROP_IN, ...args(b)]);
    const noTimes = (s: string) => s.replace(/\n.*ops\/sec\)/g, "");
    assertEquals([rb.code, noTimes(rb.stdout), rb.stderr], [rq.code, noTimes(rq.stdout), rq.stderr]);
    for (const p of [q, b]) assertEquals((await run("qemu-img", ["check", p])).code, 0, p);
  },
});
