import assert from "node:assert/strict";
import { BlockError, createImage, hasProtocol, open, parseJsonFilename, probeFormat } from "../../mod.ts";
import { cli } from "../cli/_run.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

Deno.test({
  name: "blkdebug:CONF:IMG without -f probes the image through the filter: qcow2 over blkdebug, as qemu-img info says (issue 9.2)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const img = `${d.path}/d.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "1M"]);
    await Deno.writeTextFile(`${d.path}/r.ini`, "");
    const name = `blkdebug:${d.path}/r.ini:${img}`;
    const q = JSON.parse((await runOk("qemu-img", ["info", "--output=json", name])).stdout);
    const ours = JSON.parse((await cli(["info", "--output=json", name])).stdout);
    assert.equal(ours.format, q.format);
    assert.equal(ours.format, "qcow2");
    await using node = await open(name);
    assert.equal(node.driver.name, "qcow2");
    assert.equal(node.file?.driver.name, "blkdebug");
  },
});

Deno.test({
  name: "io -c write on blkdebug:CONF:IMG writes guest data through qcow2, never over the header (issue 9.2)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const img = `${d.path}/d.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "1M"]);
    await Deno.writeTextFile(`${d.path}/r.ini`, "");
    const header = (await Deno.readFile(img)).subarray(0, 104);
    const r = await cli(["io", "-c", "write -P 0x55 0 64k", `blkdebug:${d.path}/r.ini:${img}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual((await Deno.readFile(img)).subarray(0, 104), header);
    assert.equal((await run("qemu-img", ["check", img])).code, 0);
    assert.ok((await runOk("qemu-io", ["-c", "read -P 0x55 0 64k", img])).stdout.startsWith("read 65536/65536"));
  },
});

Deno.test("under an explicit format the blkdebug layer is the raw file: -f raw blkdebug::IMG reads the qcow2 bytes", async () => {
  await using d = await tempDir();
  const img = `${d.path}/d.qcow2`;
  await createImage(img, "qcow2", 1 << 20);
  await using node = await open(`blkdebug::${img}`, { format: "raw" });
  assert.equal(node.driver.name, "raw");
  assert.equal(node.file?.driver.name, "blkdebug");
  assert.equal(node.file?.primaryChild?.driver.name, "file");
});

Deno.test({
  name:
    "images in formats blkgraph cannot open are refused when probed, as 'Image format X is not supported', never read as raw (issue 9.3)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    for (const fmt of ["vmdk", "vhdx", "vpc", "vdi", "qed", "parallels"]) {
      const p = `${d.path}/x.${fmt}`;
      await runOk("qemu-img", ["create", "-q", "-f", fmt, p, "1M"]);
      // qemu-img probes it as that format.
      assert.equal(JSON.parse((await runOk("qemu-img", ["info", "--output=json", p])).stdout).format, fmt);
      for (const args of [["info", p], ["convert", "-O", "raw", p, `${d.path}/out.raw`]]) {
        const r = await cli(args);
        assert.deepEqual(
          [r.code, r.stderr],
          [1, `blkgraph: Could not open '${p}': Image format '${fmt}' is not supported\n`],
          args.join(" "),
        );
      }
      await assert.rejects(open(p), (e: BlockError) => e.code === "ENOTSUP");
      await assert.rejects(
        open(p, { format: fmt }),
        (e: BlockError) => e.code === "ENOTSUP" && e.message === `Image format '${fmt}' is not supported`,
      );
      // Asked for as raw, the bytes are there.
      await using raw = await open(p, { format: "raw" });
      assert.equal(raw.driver.name, "raw");
    }
  },
});

Deno.test("the bochs, cloop, dmg and qcow (v1) probes claim their images; an empty file is raw", () => {
  const bochs = new Uint8Array(512);
  const enc = new TextEncoder();
  bochs.set(enc.encode("Bochs Virtual HD Image"), 0);
  bochs.set(enc.encode("Redolog"), 32);
  bochs.set(enc.encode("Growing"), 48);
  new DataView(bochs.buffer).setUint32(64, 0x00020000, true);
  const cloop = enc.encode("#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n");
  const qcow1 = new Uint8Array(48);
  new DataView(qcow1.buffer).setUint32(0, 0x514649fb);
  new DataView(qcow1.buffer).setUint32(4, 1);
  for (const [head, fmt, name] of [[bochs, "bochs"], [cloop, "cloop"], [qcow1, "qcow"], [new Uint8Array(512), "dmg", "x.dmg"]] as const) {
    assert.throws(() => probeFormat(head, name), (e: BlockError) => e.message === `Image format '${fmt}' is not supported`);
  }
  assert.equal(probeFormat(new Uint8Array(0)).name, "raw");
  assert.equal(probeFormat(new Uint8Array(512), "x.img").name, "raw");
});

Deno.test("a probed raw image refuses a first sector that would make it probe as vhdx", async () => {
  await using d = await tempDir();
  const p = `${d.path}/x.img`;
  await Deno.writeFile(p, new Uint8Array(65536));
  await using node = await open(p);
  assert.equal(node.driver.name, "raw");
  const sig = new Uint8Array(512);
  sig.set(new TextEncoder().encode("vhdxfile"));
  await assert.rejects(node.pwrite(0, sig), (e: BlockError) => e.code === "EPERM" && /look like vhdx/.test(e.message));
});

Deno.test("protocol URLs without a registered driver say the protocol is not supported, not 'No such file' (issue 9.3)", async () => {
  for (
    const [name, proto] of [
      // nbd, rbd and ssh have drivers now; these protocols have none.
      ["nfs://127.0.0.1/x", "nfs"],
      [
        "iscsi://127.0.0.1/iqn/0",
        "iscsi",
      ],
      ["https://127.0.0.1/x.img", "https"],
      ["gluster://127.0.0.1/v/x", "gluster"],
    ]
  ) {
    await assert.rejects(
      open(name),
      (e: BlockError) => e.code === "ENOTSUP" && e.message.startsWith(`Protocol '${proto}' is not supported`),
      name,
    );
    const r = await cli(["info", name]);
    assert.equal(r.code, 1);
    assert.ok(!r.stderr.includes("No such file"), r.stderr);
  }
  await assert.rejects(open("foo:bar.img"), (e: BlockError) => e.code === "EINVAL" && e.message.startsWith("Unknown protocol 'foo'"));
});

Deno.test("hasProtocol: a ':' before any '/' is a protocol prefix, as QEMU's path_has_protocol", () => {
  assert.deepEqual(
    ["nbd://x", "rbd:p/i", "file:a", "/tmp/a:b", "./a:b", "a/b:c", "plain.img"].map(hasProtocol),
    [true, true, true, false, false, false, false],
  );
});

Deno.test("json: filenames take QEMU's single-quoted strings (iotests 020, 089, 110)", async () => {
  await using d = await tempDir();
  const p = `${d.path}/it's.raw`;
  await createImage(p, "raw", 65536);
  const spec = `json:{'driver': 'raw', 'file': {'driver': 'file', 'filename': '${p.replaceAll("'", "\\'")}'}}`;
  assert.deepEqual(parseJsonFilename(spec), { driver: "raw", file: { driver: "file", filename: p } });
  await using node = await open(spec, { readOnly: true });
  assert.equal(node.length, 65536);
  // A json: object with a file child but no driver probes the format over it.
  await using probed = await open(`json:{"file": {"driver": "file", "filename": "${p}"}}`, { readOnly: true });
  assert.equal(probed.driver.name, "raw");
  assert.throws(() => parseJsonFilename("json:{'a': }"), (e: BlockError) => e.code === "EINVAL" && /position 6/.test(e.message));
  assert.throws(() => parseJsonFilename("json:{'a': 'x"), (e: BlockError) => e.code === "EINVAL" && /closing '/.test(e.message));
  assert.throws(() => parseJsonFilename("json:" + "[".repeat(5000)), (e: BlockError) => e.code === "EINVAL");
});

Deno.test("a filename given to a filter goes to its child (blkdebug's x-image); driver=blkdebug with blkdebug::IMG parses it (iotests 177, 197)", async () => {
  await using d = await tempDir();
  const img = `${d.path}/d.qcow2`;
  await createImage(img, "qcow2", 1 << 20);
  await using a = await open({ driver: "blkdebug", image: { driver: "qcow2" }, filename: img }, { readOnly: true });
  assert.equal(a.driver.name, "blkdebug");
  assert.equal(a.primaryChild?.driver.name, "qcow2");
  await using b = await open({
    driver: "blkdebug",
    image: { driver: "qcow2" },
    align: "4k",
    "max-transfer": "64k",
    filename: `blkdebug::${img}`,
  }, {
    readOnly: true,
  });
  assert.equal(b.primaryChild?.driver.name, "qcow2");
  assert.equal(b.limits.requestAlignment, 4096);
  assert.equal(b.limits.maxTransfer, 65536);
  // An explicit filter at the top probes what it is given: a filename alone becomes a probed child.
  await a.close();
  await b.close();
  await using c = await open({ driver: "copy-on-read", filename: img });
  assert.equal(c.primaryChild?.driver.name, "qcow2");
});

Deno.test({
  name: "open({ snapshot: true }) writes to a temporary overlay it deletes: the image is unchanged and nothing is left in $TMPDIR",
  async fn() {
    await using d = await tempDir();
    await Deno.mkdir(`${d.path}/tmp`);
    const img = `${d.path}/d.qcow2`;
    await createImage(img, "qcow2", 1 << 20);
    const before = await Deno.readFile(img);
    // $TMPDIR is the process's: set it for a child process only (--parallel test files share this one).
    const code = `
      import { open } from ${JSON.stringify(new URL("../../mod.ts", import.meta.url).href)};
      await using node = await open(${JSON.stringify(img)}, { snapshot: true });
      await node.pwrite(0, new Uint8Array(65536).fill(9));
      const back = new Uint8Array(4);
      await node.pread(0, back);
      const during = [...Deno.readDirSync(${JSON.stringify(`${d.path}/tmp`)})].length;
      console.log(JSON.stringify({ back: [...back], backingReadOnly: node.backing?.readOnly, during }));
    `;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      env: { TMPDIR: `${d.path}/tmp` },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), { back: [9, 9, 9, 9], backingReadOnly: true, during: 0 });
    assert.deepEqual([...Deno.readDirSync(`${d.path}/tmp`)], []);
    assert.deepEqual(await Deno.readFile(img), before);
  },
});
