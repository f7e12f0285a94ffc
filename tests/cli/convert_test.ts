import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

Deno.test({
  name: "convert a qcow2 overlay (with backing) to raw gives qemu-img convert's bytes",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${d.path}/base.qcow2`, "8M"]);
    await runOk("qemu-io", ["-c", "write -P 1 0 1M", "-c", "write -P 2 5M 100k", `${d.path}/base.qcow2`]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${d.path}/top.qcow2`]);
    await runOk("qemu-io", ["-c", "write -P 3 512k 1M", "-c", "write -z 5M 64k", `${d.path}/top.qcow2`]);
    await runOk("qemu-img", ["convert", "-O", "raw", `${d.path}/top.qcow2`, `${d.path}/q.raw`]);
    const r = await cli(["convert", "-O", "raw", `${d.path}/top.qcow2`, `${d.path}/o.raw`]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(await Deno.readFile(`${d.path}/o.raw`), await Deno.readFile(`${d.path}/q.raw`));
  },
});

Deno.test({
  name: "convert -n writes a raw image into an existing qcow2 that qemu-img finds identical and clean",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const raw = new Uint8Array(4 << 20);
    raw.fill(7, 0, 300000);
    raw.fill(9, 3 << 20, (3 << 20) + 4096);
    await Deno.writeFile(`${d.path}/in.raw`, raw);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${d.path}/out.qcow2`, "4M"]);
    await runOk("qemu-io", ["-c", "write -P 5 2M 64k", `${d.path}/out.qcow2`]);
    const r = await cli(["convert", "-n", "-f", "raw", "-O", "qcow2", `${d.path}/in.raw`, `${d.path}/out.qcow2`]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(
      (await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", `${d.path}/in.raw`, `${d.path}/out.qcow2`])).stdout,
      "Images are identical.\n",
    );
    assertEquals((await run("qemu-img", ["check", `${d.path}/out.qcow2`])).code, 0);
  },
});

Deno.test({
  name: "convert --trace prints the target's metadata events",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await Deno.writeFile(`${d.path}/in.raw`, new Uint8Array(65536).fill(1));
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${d.path}/out.qcow2`, "64k"]);
    const r = await cli(["convert", "--trace", "-n", "-f", "raw", "-O", "qcow2", `${d.path}/in.raw`, `${d.path}/out.qcow2`]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(/ cluster_alloc /.test(r.stdout), true, r.stdout);
    assertEquals(/ flush /.test(r.stdout), true, r.stdout);
  },
});
