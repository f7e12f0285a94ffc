import "../_helpers/test_drivers.ts";
import assert from "node:assert/strict";
import { type BlockError, createImage, findNode, open, registerDriver } from "../../mod.ts";

Deno.test("open() accepts a blockdev object", async () => {
  await using n = await open({ driver: "raw", file: { driver: "memory", size: 1024 } });
  assert.equal(n.driver.name, "raw");
  assert.equal(n.file?.driver.name, "memory");
});

Deno.test("open() accepts the dotted string form", async () => {
  await using n = await open("driver=raw,file.driver=memory,file.size=2k");
  assert.equal(n.length, 2048);
});

Deno.test("open() accepts json: filenames", async () => {
  await using n = await open('json:{"driver":"raw","file":{"driver":"memory","size":4096}}');
  assert.equal(n.length, 4096);
});

Deno.test("open() probes a plain filename and falls back to raw", async () => {
  const path = await Deno.makeTempFile();
  try {
    await Deno.writeFile(path, new Uint8Array(1024));
    await using n = await open(path);
    assert.equal(n.driver.name, "raw");
    assert.ok(n.probed);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("a probed raw image refuses a first-sector write that would change its format", async () => {
  // A format that claims files starting with "TEST", registered for this test only.
  using _ = registerDriver({
    name: "test-magic",
    kind: "format",
    probe: (head) => head[0] === 0x54 && head[1] === 0x45 && head[2] === 0x53 && head[3] === 0x54 ? 100 : 0,
    open: () => Promise.reject(new Error("not openable")),
  });
  const path = await Deno.makeTempFile();
  try {
    await Deno.writeFile(path, new Uint8Array(1024));
    await using n = await open(path);
    await assert.rejects(n.pwrite(0, new TextEncoder().encode("TEST")), (e: BlockError) => e.code === "EPERM" && /probed/.test(e.message));
    await n.pwrite(512, new TextEncoder().encode("TEST"));
  } finally {
    await Deno.remove(path);
  }
  await using explicit = await open({ driver: "raw", file: { driver: "memory", size: 1024 } });
  await explicit.pwrite(0, new TextEncoder().encode("TEST"));
});

Deno.test("open() gives nodes the requested name and rejects duplicates", async () => {
  await using n = await open({ driver: "memory", "node-name": "disk0" });
  assert.equal(findNode("disk0"), n);
  await assert.rejects(open({ driver: "memory", "node-name": "disk0" }), (e: BlockError) => e.code === "EEXIST");
});

Deno.test("open() generates unique node names", async () => {
  await using a = await open({ driver: "memory" });
  await using b = await open({ driver: "memory" });
  assert.notEqual(a.name, b.name);
  assert.match(a.name, /^#block\d+/);
});

Deno.test("open() rejects an invalid node name", async () => {
  await assert.rejects(open({ driver: "memory", "node-name": "1bad" }), /Invalid node-name/);
});

Deno.test("open() names an unknown driver", async () => {
  await assert.rejects(open({ driver: "nope" }), (e: BlockError) => e.code === "EINVAL" && /Unknown driver 'nope'/.test(e.message));
});

Deno.test("open() names an unknown option", async () => {
  await assert.rejects(open({ driver: "memory", colour: "red" }), /Unknown option 'colour' for driver 'memory'/);
});

Deno.test("open() says which child is missing", async () => {
  await assert.rejects(open({ driver: "raw" }), /needs a 'file' child/);
});

Deno.test("open() with readOnly opens the whole graph read-only", async () => {
  await using n = await open({ driver: "raw", file: { driver: "memory", size: 512 } }, { readOnly: true });
  assert.ok(n.readOnly && n.file!.readOnly);
});

Deno.test("registerDriver() plugs in a user driver", async () => {
  using _ = registerDriver({
    name: "test-null",
    kind: "protocol",
    open: () => Promise.resolve({ getLength: () => 1 << 20, pread: (_o, buf) => void buf.fill(0) }),
  });
  await using n = await open({ driver: "test-null" });
  assert.equal(n.length, 1 << 20);
});

Deno.test("createImage() makes a raw image of the given size", async () => {
  const path = await Deno.makeTempFile();
  try {
    await createImage(path, "raw", 3 << 20);
    assert.equal((await Deno.stat(path)).size, 3 << 20);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("open() rejects an invalid cache mode", async () => {
  await assert.rejects(open({ driver: "memory" }, { cache: "fast" }), /Invalid cache mode 'fast'/);
});

Deno.test("createImage() over a filter creates the host file below it without create: true", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/over-filter.qcow2`;
    await createImage(path, "qcow2", 1 << 20, { file: { driver: "throttle", limits: {}, file: { driver: "file", filename: path } } });
    await using img = await open(path, { readOnly: true });
    assert.equal(img.formatName, "qcow2");
    assert.equal(img.length, 1 << 20);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
