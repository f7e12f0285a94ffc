import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

const QEMU = skipUnless("qemu-img");

Deno.test({
  name: "create -f qcow2 prints qemu-img's Formatting line for the same options",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const cases = [
      [],
      ["-o", "cluster_size=4k,lazy_refcounts=on"],
      ["-o", "compat=0.10"],
      ["-o", "compat=1.1,extended_l2=on,refcount_bits=8"],
    ];
    for (const [i, o] of cases.entries()) {
      const q = await runOk("qemu-img", ["create", "-f", "qcow2", ...o, `${d.path}/q${i}.qcow2`, "1G"]);
      const ours = await cli(["create", "-f", "qcow2", ...o, `${d.path}/o${i}.qcow2`, "1G"]);
      assertEquals(ours.stdout, q.stdout.replace(`q${i}.qcow2`, `o${i}.qcow2`), o.join(" "));
      assertEquals((await run("qemu-img", ["check", `${d.path}/o${i}.qcow2`])).code, 0);
      const qi = JSON.parse((await runOk("qemu-img", ["info", "--output=json", `${d.path}/q${i}.qcow2`])).stdout);
      const oi = JSON.parse((await runOk("qemu-img", ["info", "--output=json", `${d.path}/o${i}.qcow2`])).stdout);
      assertEquals(oi["format-specific"], qi["format-specific"], o.join(" "));
    }
  },
});

Deno.test({
  name: "create -b takes the size from the backing file and records its format",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${d.path}/base.qcow2`, "32M"]);
    const r = await cli(["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${d.path}/top.qcow2`]);
    assertEquals(r.code, 0, r.stderr);
    ok(r.stdout.includes("size=33554432 backing_file=base.qcow2 backing_fmt=qcow2"), r.stdout);
    const info = JSON.parse((await runOk("qemu-img", ["info", "--output=json", `${d.path}/top.qcow2`])).stdout);
    assertEquals([info["virtual-size"], info["backing-filename"], info["backing-filename-format"]], [33554432, "base.qcow2", "qcow2"]);
  },
});

Deno.test({
  name: "create -b over an encrypted backing file needs no key for it (qemu-img opens the backing file without I/O, iotests 189/198)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const secrets = ["--object", "secret,id=sec0,data=base-key", "--object", "secret,id=sec1,data=top-key"];
    await runOk("qemu-img", [
      "create",
      "-q",
      ...secrets,
      "-f",
      "qcow2",
      "-o",
      "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
      `${d.path}/base.qcow2`,
      "16M",
    ]);
    const args = (top: string) => [
      "create",
      ...secrets,
      "-f",
      "qcow2",
      "-o",
      "encrypt.format=luks,encrypt.key-secret=sec1,encrypt.iter-time=10",
      "-b",
      "base.qcow2",
      "-F",
      "qcow2",
      `${d.path}/${top}`,
    ];
    const q = await run("qemu-img", args("q.qcow2"));
    const r = await cli(args("o.qcow2"));
    assertEquals([r.code, r.stderr], [q.code, q.stderr]);
    assertEquals(r.stdout, q.stdout.replace("q.qcow2", "o.qcow2"));
    const info = JSON.parse((await runOk("qemu-img", ["info", "--output=json", `${d.path}/o.qcow2`])).stdout);
    assertEquals([info["virtual-size"], info["backing-filename"], info.encrypted], [16777216, "base.qcow2", true]);
  },
});

Deno.test({
  name: "convert -O qcow2 makes an image qemu-img finds identical to the source and clean",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const raw = new Uint8Array(6 << 20);
    raw.fill(3, 100, 700000);
    raw.fill(4, 5 << 20, (5 << 20) + 65536);
    await Deno.writeFile(`${d.path}/in.raw`, raw);
    const r = await cli(["convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=16k", `${d.path}/in.raw`, `${d.path}/out.qcow2`]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(
      (await run("qemu-img", ["compare", "-f", "raw", `${d.path}/in.raw`, `${d.path}/out.qcow2`])).stdout,
      "Images are identical.\n",
    );
    assertEquals((await run("qemu-img", ["check", `${d.path}/out.qcow2`])).code, 0);
    const map = JSON.parse((await runOk("qemu-img", ["map", "--output=json", `${d.path}/out.qcow2`])).stdout);
    const allocated = map.filter((e: { data: boolean }) => e.data).reduce((a: number, e: { length: number }) => a + e.length, 0);
    ok(allocated < 1 << 20, `only the data clusters are allocated (${allocated} bytes)`);
  },
});

Deno.test({
  name: "convert -B copies only what the overlay allocates on top of the backing file",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${d.path}/base.qcow2`, "8M"]);
    await runOk("qemu-io", ["-c", "write -P 1 0 4M", `${d.path}/base.qcow2`]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${d.path}/top.qcow2`]);
    await runOk("qemu-io", ["-c", "write -P 2 1M 128k", `${d.path}/top.qcow2`]);
    const r = await cli(["convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", `${d.path}/top.qcow2`, `${d.path}/new.qcow2`]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals((await run("qemu-img", ["compare", `${d.path}/top.qcow2`, `${d.path}/new.qcow2`])).stdout, "Images are identical.\n");
    const map = JSON.parse((await runOk("qemu-img", ["map", "--output=json", `${d.path}/new.qcow2`])).stdout);
    const own = map.filter((e: { depth: number; data: boolean }) => e.depth === 0 && e.data);
    assertEquals(own.map((e: { start: number; length: number }) => [e.start, e.length]), [[1 << 20, 131072]]);
  },
});

Deno.test({
  name: "convert -c writes compressed clusters that qemu-img reads back identically",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const raw = new Uint8Array(2 << 20);
    const text = new TextEncoder().encode("compressible text, over and over. ");
    for (let i = 0; i < 1 << 20; i++) raw[i] = text[i % text.length];
    await Deno.writeFile(`${d.path}/in.raw`, raw);
    const r = await cli(["convert", "-c", "-f", "raw", "-O", "qcow2", `${d.path}/in.raw`, `${d.path}/out.qcow2`]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(
      (await run("qemu-img", ["compare", "-f", "raw", `${d.path}/in.raw`, `${d.path}/out.qcow2`])).stdout,
      "Images are identical.\n",
    );
    const check = JSON.parse((await run("qemu-img", ["check", "--output=json", `${d.path}/out.qcow2`])).stdout);
    assertEquals([check["check-errors"], check["compressed-clusters"]], [0, 16]);
    ok((await Deno.stat(`${d.path}/out.qcow2`)).size < 512 * 1024);
  },
});

Deno.test({
  name: "io write -c writes a compressed cluster as qemu-io does",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using d = await tempDir();
    for (const f of ["q", "o"]) await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${d.path}/${f}.qcow2`, "1M"]);
    const cmds = ["write -c -P 3 0 64k", "read -P 3 0 64k", "map"].flatMap((c) => ["-c", c]);
    const q = await run("qemu-io", [...cmds, `${d.path}/q.qcow2`]);
    const ours = await cli(["io", ...cmds, `${d.path}/o.qcow2`]);
    assertEquals(ours.stdout.replace(/ \d+ ops; .*$/gm, ""), q.stdout.replace(/ \d+ ops; .*$/gm, ""));
    const qm = (await runOk("qemu-img", ["map", "--output=json", `${d.path}/q.qcow2`])).stdout;
    assertEquals((await runOk("qemu-img", ["map", "--output=json", `${d.path}/o.qcow2`])).stdout, qm);
  },
});
