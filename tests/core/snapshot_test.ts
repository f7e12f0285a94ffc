import assert from "node:assert/strict";
import { type BlockError, type BlockNode, createImage, type DriverInstance, open, registerDriver, type SnapshotInfo } from "../../mod.ts";
import "../_helpers/test_drivers.ts";

/** What the fake snapshot protocol saw, by tag. */
const seen = new Map<string, string[]>();

/**
 * A memory protocol with snapshots of its whole content (the shape an rbd
 * node has), recording each snapshot call and each flush.
 */
registerDriver({
  name: "test-snap",
  kind: "protocol",
  protocolPrefix: "test-snap",
  parseFilename: (f) => ({ tag: f.slice("test-snap:".length) }),
  createFile(options, size) {
    const tag = String(options.tag);
    if (created.has(tag)) return Promise.reject(Object.assign(new Error(`exists: ${tag}`), { code: "EEXIST" }));
    created.set(tag, size);
    return Promise.resolve();
  },
  open(ctx): Promise<DriverInstance> {
    const tag = String(ctx.options.tag ?? "snap");
    const log: string[] = [];
    seen.set(tag, log);
    let data = new Uint8Array(created.get(tag) ?? Number(ctx.options.size ?? 4096));
    const snaps = new Map<string, Uint8Array>();
    return Promise.resolve({
      getLength: () => data.length,
      pread: (off, buf) => void buf.set(data.subarray(off, off + buf.length)),
      pwrite(off, src) {
        if (off + src.length > data.length) {
          const grown = new Uint8Array(off + src.length);
          grown.set(data);
          data = grown;
        }
        data.set(src, off);
      },
      truncate(len) {
        const next = new Uint8Array(len);
        next.set(data.subarray(0, len));
        data = next;
      },
      flush: () => void log.push("flush"),
      snapshotList: () => Promise.resolve([...snaps.keys()].map((name) => info(name, snaps.get(name)!.length))),
      snapshotCreate(i) {
        log.push(`create ${i.name}`);
        snaps.set(i.name, data.slice());
        return Promise.resolve();
      },
      snapshotDelete(id) {
        log.push(`delete ${id}`);
        snaps.delete(id);
        return Promise.resolve();
      },
      snapshotGoto(id) {
        log.push(`goto ${id}`);
        data = snaps.get(id)!.slice();
        return Promise.resolve();
      },
    });
  },
});

const created = new Map<string, number>();

function info(name: string, size = 0): SnapshotInfo {
  return { id: name, name, vmStateSize: size, dateSec: 0, dateNsec: 0, vmClockNsec: 0 };
}

async function graph(tag: string, spec: (proto: Record<string, unknown>) => Record<string, unknown>): Promise<BlockNode> {
  return await open(spec({ driver: "test-snap", tag }));
}

Deno.test("BlockNode.snapshots.node() falls through raw and filters to the node with snapshots, as QEMU's bdrv_snapshot_*", async () => {
  await using top = await graph("walk", (p) => ({ driver: "test-pass", file: { driver: "throttle", file: { driver: "raw", file: p } } }));
  const proto = top.file!.file!.file!;
  assert.equal(top.snapshots.node(), proto);
  assert.equal(top.file!.snapshots.node(), proto);
  await top.snapshots.create(info("s1"));
  assert.deepEqual((await top.snapshots.list()).map((s) => s.name), ["s1"]);
  assert.deepEqual(seen.get("walk")!.filter((l) => !l.startsWith("flush")), ["create s1"]);
});

Deno.test("BlockNode.snapshots.goto() reverts what the nodes above read, and snapshots.delete() removes it", async () => {
  await using top = await graph("goto", (p) => ({ driver: "raw", file: p }));
  await top.pwrite(0, new Uint8Array(512).fill(1));
  await top.snapshots.create(info("a"));
  await top.pwrite(0, new Uint8Array(512).fill(2));
  await top.snapshots.goto("a");
  const b = new Uint8Array(512);
  await top.pread(0, b);
  assert.equal(b[0], 1);
  await top.snapshots.delete("a");
  assert.deepEqual(await top.snapshots.list(), []);
});

Deno.test("BlockNode.snapshots.create() flushes what was written before the snapshot is taken", async () => {
  await using top = await graph("flush", (p) => ({ driver: "raw", file: p }));
  await top.pwrite(0, new Uint8Array(512).fill(7));
  await top.snapshots.create(info("x"));
  assert.deepEqual(seen.get("flush"), ["flush", "create x"]);
});

Deno.test("BlockNode snapshot changes are ENOTSUP where no node has snapshots, and the list is empty", async () => {
  await using top = await open({ driver: "raw", file: { driver: "memory", size: 4096 } });
  assert.equal(top.snapshots.node(), undefined);
  assert.deepEqual(await top.snapshots.list(), []);
  await assert.rejects(
    top.snapshots.create(info("s")),
    (e: BlockError) => e.code === "ENOTSUP" && /has no internal snapshots/.test(e.message),
  );
  await assert.rejects(top.snapshots.goto("s"), (e: BlockError) => e.code === "ENOTSUP");
});

Deno.test("BlockNode: a node that only lists snapshots refuses to change them instead of passing the change below", async () => {
  registerDriver({
    name: "test-list-only",
    kind: "format",
    async open(ctx) {
      const file = (await ctx.openChild("file"))!;
      return { getLength: () => file.length, pread: (o, b) => file.pread(o, b), snapshotList: () => [info("inner")] };
    },
  });
  await using top = await open({ driver: "test-list-only", file: { driver: "test-snap", tag: "list-only" } });
  assert.equal(top.snapshots.node(), top);
  assert.deepEqual((await top.snapshots.list()).map((s) => s.name), ["inner"]);
  await assert.rejects(top.snapshots.create(info("s")), (e: BlockError) => e.code === "ENOTSUP" && /cannot create them/.test(e.message));
  assert.deepEqual(seen.get("list-only"), []);
});

Deno.test("BlockNode snapshot changes on a read-only node are EROFS; listing works", async () => {
  await using top = await open({ driver: "raw", file: { driver: "test-snap", tag: "ro" } }, { readOnly: true });
  assert.deepEqual(await top.snapshots.list(), []);
  for (const p of [top.snapshots.create(info("s")), top.snapshots.delete("s"), top.snapshots.goto("s")]) {
    await assert.rejects(p, (e: BlockError) => e.code === "EROFS");
  }
  assert.deepEqual(seen.get("ro"), []);
});

Deno.test("BlockNode.snapshots.node() stops at a node with a second data child (QEMU refuses that fallback)", async () => {
  registerDriver({
    name: "test-two-children",
    kind: "format",
    async open(ctx) {
      const file = (await ctx.openChild("file"))!;
      await ctx.openChild("data-file");
      return { getLength: () => file.length };
    },
  });
  await using top = await open({
    driver: "test-two-children",
    file: { driver: "test-snap", tag: "two-a" },
    "data-file": { driver: "test-snap", tag: "two-b" },
  });
  assert.equal(top.snapshots.node(), undefined);
});

Deno.test("createImage() creates a prefixed protocol's object with its createFile hook, then formats it", async () => {
  // Sizes are whole sectors, as QEMU's protocol creates round them (12345 -> 12800).
  await createImage("test-snap:made", "raw", 12345);
  assert.equal(created.get("made"), 12800);
  await using img = await open("test-snap:made", { format: "raw" });
  assert.equal(img.length, 12800);
  await assert.rejects(createImage("test-snap:made", "raw", 1), /exists: made/);
});

Deno.test("open() probes the format over a prefixed protocol filename, as over a host file", async () => {
  const path = await Deno.makeTempFile({ suffix: ".qcow2" });
  try {
    await createImage(path, "qcow2", 1 << 20);
    await using img = await open(`file:${path}`);
    assert.equal(img.driver.name, "qcow2");
    assert.equal(img.file!.driver.name, "file");
    await using raw = await open("test-snap:probe-raw");
    assert.deepEqual([raw.driver.name, raw.file!.driver.name], ["raw", "test-snap"]);
  } finally {
    await Deno.remove(path);
  }
});
