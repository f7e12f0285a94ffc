import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { qemuImg } from "../../cli/qemu-img.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { inDir } from "./_in_dir.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

/** Runs the qemu-img drop-in in-process. */
async function ours(args: string[]) {
  let stdout = "";
  let stderr = "";
  const code = await qemuImg(args, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s) });
  return { code, stdout, stderr };
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

Deno.test({
  name: "the qemu-img drop-in prefixes errors 'qemu-img:' and has no io verb",
  ignore: QEMU,
  async fn() {
    const r = await ours(["info", "/nonexistent/x.qcow2"]);
    const q = await run("qemu-img", ["info", "/nonexistent/x.qcow2"]);
    assertEquals([r.code, r.stderr], [q.code, q.stderr]);
    const io = await ours(["io", "-c", "help"]);
    assertEquals(io.stderr.split("\n")[0], "qemu-img: Command not found: io");
  },
});

Deno.test({
  name:
    "a failed create (bad option, -b without -F, cluster_size=3000) leaves no file, and prints qemu-img's Formatting line where qemu-img does",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", `${d.path}/base.qcow2`, "1M"]);
    const cases = [
      ["-o", "foo=bar"],
      ["-b", `${d.path}/base.qcow2`],
      ["-o", "cluster_size=3000"],
      ["-o", "compat=0.42"],
      ["-o", "extent_size_hint=8G"],
    ];
    for (const extra of cases) {
      const q = await run("qemu-img", ["create", "-f", "qcow2", ...extra, `${d.path}/q.qcow2`, "1M"]);
      const r = await ours(["create", "-f", "qcow2", ...extra, `${d.path}/b.qcow2`, "1M"]);
      assertEquals([r.code, q.code], [1, 1], extra.join(" "));
      // The drop-in says "Formatting" where qemu-img does (after parsing -o, before the format checks the values);
      // blkgraph's own create never does for a create that fails (tests/cli/create_messages_test.ts).
      assertEquals(r.stdout, q.stdout.replaceAll("q.qcow2", "b.qcow2"), extra.join(" "));
      ok(r.stderr.startsWith(`qemu-img: ${d.path}/b.qcow2: `), r.stderr);
      // qemu-img leaves no file either.
      assertEquals([await exists(`${d.path}/b.qcow2`), await exists(`${d.path}/q.qcow2`)], [false, false], extra.join(" "));
    }
  },
});

Deno.test({
  name: "a create that fails writing does not leave the file it made, and never removes a file that was there",
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/x.qcow2`;
    // A data file in a directory that does not exist fails after the image file was created.
    const r = await ours(["create", "-f", "qcow2", "-o", `data_file=${d.path}/no/such/dir/d.raw`, path, "1M"]);
    assertEquals(r.code, 1);
    assertEquals(await exists(path), false);
    await Deno.writeTextFile(path, "keep");
    const again = await ours(["create", "-f", "qcow2", "-o", `data_file=${d.path}/no/such/dir/d.raw`, path, "1M"]);
    assertEquals(again.code, 1);
    assertEquals(await exists(path), true);
  },
});

Deno.test({
  name: "sizes that are not whole sectors: create rounds up, qcow2 resize refuses, raw resize does not round, as qemu-img (issue 9.17)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    for (const fmt of ["raw", "qcow2"]) {
      const q = `${d.path}/q.${fmt}`;
      const b = `${d.path}/b.${fmt}`;
      const qc = await runOk("qemu-img", ["create", "-f", fmt, q, "1234"]);
      const bc = await ours(["create", "-f", fmt, b, "1234"]);
      assertEquals(bc.stdout.replace(b, q), qc.stdout);
      const info = async (p: string) => JSON.parse((await runOk("qemu-img", ["info", "--output=json", p])).stdout)["virtual-size"];
      assertEquals(await info(b), await info(q));
      assertEquals(JSON.parse((await ours(["info", "--output=json", b])).stdout)["virtual-size"], 1536);
      const qr = await run("qemu-img", ["resize", "-f", fmt, q, "5000"]);
      const br = await ours(["resize", "-f", fmt, b, "5000"]);
      assertEquals(br.code, qr.code, fmt);
      assertEquals(await info(b), await info(q), fmt);
      assertEquals((await Deno.stat(b)).size, (await Deno.stat(q)).size, fmt);
    }
    assertEquals((await Deno.stat(`${d.path}/b.raw`)).size, 5000);
  },
});

Deno.test({
  name: "-o help lists the format's options (with the file protocol's when a filename is given), as qemu-img (iotest 082)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    for (
      const args of [
        ["create", "-o", "help"],
        ["create", "-f", "raw", "-o", "help", `${d.path}/x.raw`, "1M"],
        ["create", "-f", "qcow2", "-o", "help"],
        ["create", "-f", "qcow2", "-o", "cluster_size=4k,?", `${d.path}/x.qcow2`, "1M"],
        ["convert", "-O", "qcow2", "-o", "help"],
      ]
    ) {
      const q = await runOk("qemu-img", args);
      const r = await ours(args);
      assertEquals(r.stdout, q.stdout, args.join(" "));
    }
    assertEquals(await exists(`${d.path}/x.qcow2`), false);
  },
});

Deno.test({
  name: "repeated -o: a later value wins; a malformed option list is refused with qemu-img's message (iotest 082)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    for (
      const o of [["-o", "cluster_size=4k", "-o", "lazy_refcounts=on", "-o", "cluster_size=8k"], ["-o", "cluster_size=4k,cluster_size=8k"]]
    ) {
      const q = await runOk("qemu-img", ["create", "-f", "qcow2", ...o, `${d.path}/q.qcow2`, "128M"]);
      const r = await ours(["create", "-f", "qcow2", ...o, `${d.path}/b.qcow2`, "128M"]);
      assertEquals(r.stdout.replace("b.qcow2", "q.qcow2"), q.stdout);
      assertEquals(await Deno.readFile(`${d.path}/b.qcow2`), await Deno.readFile(`${d.path}/q.qcow2`));
    }
    for (const bad of [["-o", "backing_file=x,"], ["-o", ",help"], ["-o", ",,"]]) {
      const q = await run("qemu-img", ["create", "-f", "qcow2", ...bad, `${d.path}/x.qcow2`, "1M"]);
      const r = await ours(["create", "-f", "qcow2", ...bad, `${d.path}/x.qcow2`, "1M"]);
      assertEquals([r.code, r.stderr], [q.code, q.stderr], bad.join(" "));
    }
  },
});

Deno.test({
  name: "create takes the file protocol's extent_size_hint and nocow, as qemu-img (iotests 106, 243)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    for (const o of ["preallocation=falloc,extent_size_hint=0", "extent_size_hint=1M,nocow=on,preallocation=off"]) {
      for (const fmt of ["raw", "qcow2"]) {
        const q = await runOk("qemu-img", ["create", "-f", fmt, "-o", o, `${d.path}/q.${fmt}`, "128k"]);
        const r = await ours(["create", "-f", fmt, "-o", o, `${d.path}/b.${fmt}`, "128k"]);
        assertEquals([r.code, r.stdout.replace(`b.${fmt}`, `q.${fmt}`)], [0, q.stdout], `${fmt} ${o}`);
        assertEquals((await Deno.stat(`${d.path}/b.${fmt}`)).size, (await Deno.stat(`${d.path}/q.${fmt}`)).size);
      }
    }
  },
});

Deno.test({
  name: "resize --preallocation=falloc|full allocates the new raw area, as qemu-img (iotest 106)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    for (const mode of ["off", "falloc", "full"]) {
      const p = `${d.path}/${mode}.raw`;
      await runOk("qemu-img", ["create", "-q", "-f", "raw", "-o", "extent_size_hint=0", p, "128k"]);
      const r = await ours(["resize", "-f", "raw", `--preallocation=${mode}`, p, "+256k"]);
      assertEquals([r.code, r.stdout], [0, "Image resized.\n"]);
      const st = await Deno.stat(p);
      assertEquals(st.size, 384 * 1024);
      if (mode !== "off") ok((st.blocks ?? 0) * 512 >= 256 * 1024, `${mode}: ${st.blocks} blocks`);
    }
    const bad = await ours(["resize", "-f", "raw", "--preallocation=bogus", `${d.path}/off.raw`, "+1k"]);
    const qbad = await run("qemu-img", ["resize", "-f", "raw", "--preallocation=bogus", `${d.path}/off.raw`, "+1k"]);
    assertEquals([bad.code, bad.stderr], [qbad.code, qbad.stderr]);
  },
});

Deno.test({
  name: "compare through blkdebug:CONF:IMG reports the injected read error with exit code 4, as qemu-img (iotest 074)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const a = `${d.path}/a.qcow2`;
    const b = `${d.path}/b.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", a, "1G"]);
    await Deno.copyFile(a, b);
    await runOk("qemu-io", ["-c", "write -P 102 512 512", a]);
    await Deno.writeTextFile(`${d.path}/bd.conf`, '[inject-error]\nevent = "read_aio"\nerrno = "5"\nonce ="off"\n');
    const args = ["compare", "-f", "qcow2", "-F", "qcow2", `blkdebug:${d.path}/bd.conf:${a}`, b];
    const q = await run("qemu-img", args);
    const r = await ours(args);
    assertEquals([r.code, r.stderr, r.stdout], [q.code, q.stderr, q.stdout]);
    assertEquals(r.code, 4);
  },
});

Deno.test({
  name: "info of file:NAME and names with ':' after a '/' work, and backing names with ':' resolve, as qemu-img (iotest 126)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const base = `${d.path}/image:base.qcow2`;
    const top = `${d.path}/image:top.qcow2`;
    const c1 = await ours(["create", "-f", "qcow2", base, "64M"]);
    const c2 = await ours(["create", "-f", "qcow2", "-b", "./image:base.qcow2", "-F", "qcow2", top]);
    assertEquals([c1.code, c2.code], [0, 0], c1.stderr + c2.stderr);
    const q = await runOk("qemu-img", ["info", top]);
    assertEquals((await ours(["info", top])).stdout, q.stdout);
    const viaPrefix = await ours(["info", `file:${top}`]);
    assertEquals(viaPrefix.stdout, (await runOk("qemu-img", ["info", `file:${top}`])).stdout);
    // Relative, without a slash: file:image:top.qcow2 is ./image:top.qcow2.
    const [rel] = await inDir("img", [["info", "file:image:top.qcow2"]], d.path);
    assertEquals(rel.stdout, (await runOk("qemu-img", ["info", "file:image:top.qcow2"], { cwd: d.path })).stdout);
    ok(rel.stdout.startsWith("image: ./image:top.qcow2\n"), rel.stdout);
    const made = await ours(["create", "-f", "raw", `file:${d.path}/a:b.raw`, "64k"]);
    assertEquals(made.code, 0, made.stderr);
    assertEquals((await Deno.stat(`${d.path}/a:b.raw`)).size, 65536);
  },
});

Deno.test({
  name: "info --image-opts shows the file name of a plain format-over-file graph, as qemu-img (iotest 279)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const p = `${d.path}/t.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", p, "64M"]);
    // The file's other options (locking, aio, cache) leave the name the file's.
    for (const extra of ["", ",file.locking=off", ",file.aio=threads,file.drop-cache=off", ",file.cache.direct=off"]) {
      const spec = `driver=qcow2,file.driver=file,file.filename=${p}${extra}`;
      const q = await runOk("qemu-img", ["info", "--image-opts", spec]);
      assertEquals((await ours(["info", "--image-opts", spec])).stdout, q.stdout, extra);
    }
  },
});

Deno.test({
  name: "convert -p prints qemu-img's progress steps, counted over the data to copy (iotest 086)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const src = `${d.path}/s.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", src, "128M"]);
    for (const o of ["0", "2M", "4M", "32M"]) await runOk("qemu-io", ["-c", `write ${o} 1M`, src]);
    const q = await runOk("qemu-img", ["convert", "-p", "-O", "qcow2", "-f", "qcow2", src, `${d.path}/q.qcow2`]);
    const r = await ours(["convert", "-p", "-O", "qcow2", "-f", "qcow2", src, `${d.path}/b.qcow2`]);
    assertEquals(r.stdout, q.stdout);
    assertEquals(r.stdout.split("\r").length, 7);
  },
});

Deno.test({
  name: "the 'Marking image as corrupt' line is printed when a write finds corrupt metadata, as QEMU prints it (iotest 305)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const paths = [`${d.path}/q.qcow2`, `${d.path}/b.qcow2`];
    for (const p of paths) {
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "refcount_bits=64,cluster_size=1k", p, "1M"]);
      await runOk("qemu-io", ["-c", "write 0 124k", "-c", "discard 121k 1k", "-c", "discard 123k 1k", p]);
      const bytes = await Deno.readFile(p);
      const rt = Number(new DataView(bytes.buffer).getBigUint64(48));
      bytes[rt + 14] = 6;
      await Deno.writeFile(p, bytes);
    }
    const q = await run("qemu-io", ["-c", "write 121k 3k", paths[0]]);
    const { qemuIo } = await import("../../cli/qemu-io.ts");
    let stderr = "";
    let stdout = "";
    const code = await qemuIo(["-c", "write 121k 3k", paths[1]], { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s) });
    assertEquals([code, stdout, stderr], [q.code, q.stdout, q.stderr]);
    ok(stderr.startsWith("qcow2: Marking image as corrupt: Refblock offset 0x20600 unaligned (reftable index: 0x1)"), stderr);
  },
});

Deno.test({
  name:
    "qcow2 header consistency: unknown incompatible bits and a zlib image with the compression bit are refused as qemu-img refuses them (036, 287)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const p = `${d.path}/f.qcow2`;
    for (const bits of [1n << 63n, 0xe000000000000000n, 1n << 40n, 8n]) {
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", p, "64M"]);
      const bytes = await Deno.readFile(p);
      new DataView(bytes.buffer).setBigUint64(72, bits);
      await Deno.writeFile(p, bytes);
      const q = await run("qemu-img", ["info", p]);
      const r = await ours(["info", p]);
      assertEquals(r.code, q.code);
      if (bits === 8n) {
        ok(r.stderr.startsWith(`qemu-img: Could not open '${p}': Compression type incompatible feature bit must not be set`));
      } else assertEquals(r.stderr, q.stderr);
    }
  },
});

Deno.test({
  name: "a new raw image has its first block written, so map and disk size agree with an image qemu-img created (iotests 221, 253)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    for (const size of ["1M", "1536", "64k"]) {
      await runOk("qemu-img", ["create", "-q", "-f", "raw", `${d.path}/q.raw`, size]);
      assertEquals((await ours(["create", "-q", "-f", "raw", `${d.path}/b.raw`, size])).code, 0);
      const q = await runOk("qemu-img", ["map", "--output=json", "-f", "raw", `${d.path}/q.raw`]);
      assertEquals((await ours(["map", "--output=json", "-f", "raw", `${d.path}/b.raw`])).stdout, q.stdout, size);
      assertEquals((await Deno.stat(`${d.path}/b.raw`)).size, (await Deno.stat(`${d.path}/q.raw`)).size, size);
    }
    // A raw file that does not end on a sector boundary: qemu-img sees whole sectors.
    await Deno.writeFile(`${d.path}/odd.raw`, new Uint8Array(65537).fill(1));
    const q = await runOk("qemu-img", ["map", "--output=json", "-f", "raw", `${d.path}/odd.raw`]);
    assertEquals((await ours(["map", "--output=json", "-f", "raw", `${d.path}/odd.raw`])).stdout, q.stdout);
  },
});

Deno.test({
  name: "create with an external data file preallocates it even when it already exists, as qemu-img (iotest 243)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    for (const mode of ["metadata", "falloc", "full"]) {
      const r = await ours([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        `data_file=${d.path}/x.data,preallocation=${mode},extent_size_hint=0`,
        `${d.path}/x.qcow2`,
        "64M",
      ]);
      assertEquals(r.code, 0, r.stderr);
      const st = await Deno.stat(`${d.path}/x.data`);
      assertEquals(st.size, 64 << 20, mode);
      assertEquals((st.blocks ?? 0) * 512 >= 2 << 20, mode !== "metadata", mode);
    }
  },
});

Deno.test({
  name: "resize checks as qemu-img: positive size, preallocation only when growing, --shrink with its warning (iotest 106)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const cases = [
      ["--shrink", "--preallocation=falloc", "-256k"],
      ["--shrink", "--preallocation=full", "-64k"],
      ["--preallocation=falloc", "128k"],
      ["-128k"],
      ["0"],
      ["--shrink", "--preallocation=off", "-64k"],
    ];
    for (const c of cases) {
      for (const who of ["q", "b"]) await runOk("qemu-img", ["create", "-q", "-f", "raw", `${d.path}/${who}.raw`, "128k"]);
      const q = await run("qemu-img", ["resize", "-f", "raw", ...c.slice(0, -1), `${d.path}/q.raw`, c.at(-1)!]);
      const r = await ours(["resize", "-f", "raw", ...c.slice(0, -1), `${d.path}/b.raw`, c.at(-1)!]);
      assertEquals([r.code, r.stdout, r.stderr], [q.code, q.stdout, q.stderr], c.join(" "));
      assertEquals((await Deno.stat(`${d.path}/b.raw`)).size, (await Deno.stat(`${d.path}/q.raw`)).size, c.join(" "));
    }
  },
});

/**
 * Replaces the feature name table of a qemu-img-made qcow2 image (its last
 * header extension) with `entry`, then ends the extension list.
 */
function setFeatureTable(bytes: Uint8Array, entry: Uint8Array): void {
  const v = new DataView(bytes.buffer);
  for (let at = v.getUint32(100); at + 8 <= 65536;) {
    const magic = v.getUint32(at);
    const len = v.getUint32(at + 4);
    if (magic === 0) throw new Error("no feature table");
    if (magic === 0x6803f857) {
      v.setUint32(at + 4, entry.length);
      bytes.fill(0, at + 8, at + 8 + len + 8);
      bytes.set(entry, at + 8);
      return;
    }
    at += 8 + Math.ceil(len / 8) * 8;
  }
}

Deno.test({
  name:
    "unknown incompatible bits are named from a short feature table entry; check -r all clears unknown autoclear bits, as qemu-img (036)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const p = `${d.path}/t.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", p, "64M"]);
    const bytes = await Deno.readFile(p);
    new DataView(bytes.buffer).setBigUint64(72, 0xe000000000000000n);
    // A 14-byte entry (type 0, bit 63, "Test feature"), as iotest 036 writes it.
    setFeatureTable(bytes, new TextEncoder().encode("\x00\x3fTest feature"));
    await Deno.writeFile(p, bytes);
    const q = await run("qemu-img", ["info", p]);
    const r = await ours(["info", p]);
    assertEquals(r.stderr, q.stderr);
    ok(r.stderr.endsWith("Unsupported qcow2 feature(s): Test feature, Unknown incompatible feature: 6000000000000000\n"), r.stderr);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", p, "64M"]);
    const fresh = await Deno.readFile(p);
    new DataView(fresh.buffer).setBigUint64(88, 1n << 63n);
    await Deno.writeFile(p, fresh);
    assertEquals((await ours(["check", "-r", "all", p])).code, 0);
    assertEquals(new DataView((await Deno.readFile(p)).buffer).getBigUint64(88), 0n);
  },
});

Deno.test({
  name: "a qcow2 header size that is not whole sectors is rounded down, as qemu-img info shows it (issue 9.17)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const p = `${d.path}/odd.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", p, "1M"]);
    const bytes = await Deno.readFile(p);
    new DataView(bytes.buffer).setBigUint64(24, BigInt((1 << 20) + 300));
    await Deno.writeFile(p, bytes);
    const q = JSON.parse((await runOk("qemu-img", ["info", "--output=json", p])).stdout)["virtual-size"];
    const r = JSON.parse((await ours(["info", "--output=json", p])).stdout)["virtual-size"];
    assertEquals([r, q], [1 << 20, 1 << 20]);
  },
});

Deno.test({
  name: "amend -o help lists qemu-img's luks amend options, and qcow2's encryption key slot options",
  ignore: QEMU,
  async fn() {
    const args = ["amend", "-f", "luks", "-o", "help", "x"];
    const q = await run("qemu-img", args);
    const r = await ours(args);
    assertEquals([r.code, r.stdout, r.stderr], [q.code, q.stdout, q.stderr]);
    // qcow2: the encryption key slot options qemu-img lists are among blkgraph's (it lists only what it amends).
    const qq = (await runOk("qemu-img", ["amend", "-f", "qcow2", "-o", "help", "x"])).stdout.split("\n");
    const rq = (await ours(["amend", "-f", "qcow2", "-o", "help", "x"])).stdout.split("\n");
    assertEquals(rq.filter((l) => /^ {2}(encrypt|lazy)/.test(l)), qq.filter((l) => /^ {2}(encrypt|lazy)/.test(l)));
  },
});
