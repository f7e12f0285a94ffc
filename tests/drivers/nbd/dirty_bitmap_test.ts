/**
 * `qemu:dirty-bitmap:NAME` over NBD: `blkgraph nbd -B` and `serveNbd({
 * bitmaps })` against `qemu-nbd -B` on copies of the same image, read by
 * nbdinfo, qemu-img (x-dirty-bitmap) and blkgraph's own client.
 */
import assert from "node:assert/strict";
import { type BlockError, createImage, open } from "../../../mod.ts";
import { serveNbd } from "../../../drivers/nbd/mod.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { cli } from "../../cli/_run.ts";
import { blkgraphNbd, normalise, qemuNbd, type ServerProcess, sockPath } from "./_helpers.ts";

const ignore = skipUnless("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo");

/** A qcow2 image whose bitmaps b0 (64 KiB) and fine (4 KiB, disabled) have dirty ranges. */
async function imageWithBitmaps(dir: string): Promise<string> {
  const path = `${dir}/src.qcow2`;
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "16M"]);
  await runOk("qemu-img", ["bitmap", "--add", path, "b0"]);
  await runOk("qemu-img", ["bitmap", "--add", "-g", "4k", path, "fine"]);
  await runOk("qemu-io", ["-c", "write 0 4k", "-c", "write 1M 300k", "-c", "write -z 9M 1M", "-c", "discard 15M 64k", path]);
  await runOk("qemu-img", ["bitmap", "--disable", path, "fine"]);
  return path;
}

async function onBoth<T>(dir: string, args: string[], file: string, fn: (s: ServerProcess) => Promise<T>): Promise<[T, T]> {
  const out: T[] = [];
  for (const [tag, start] of [["b", blkgraphNbd], ["q", qemuNbd]] as const) {
    const copy = `${dir}/${tag}-copy.qcow2`;
    await Deno.copyFile(file, copy);
    const s = await start(sockPath(dir, tag), args, copy);
    try {
      out.push(await fn(s));
    } finally {
      await s.stop();
    }
  }
  return [out[0], out[1]];
}

Deno.test({
  name: "blkgraph nbd -B: nbdinfo --list, --map=qemu:dirty-bitmap:NAME and qemu-img map with x-dirty-bitmap equal qemu-nbd -B's",
  ignore,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-bm-");
    const src = await imageWithBitmaps(dir.path);
    const [a, b] = await onBoth(dir.path, ["-r", "-t", "-B", "b0", "-B", "fine"], src, async (s) => {
      const outs: string[] = [];
      outs.push(normalise((await runOk("nbdinfo", ["--list", s.uri])).stdout, s.sock));
      for (const b of ["b0", "fine"]) {
        outs.push((await runOk("nbdinfo", [`--map=qemu:dirty-bitmap:${b}`, s.uri])).stdout);
        outs.push((await runOk("nbdinfo", [`--map=qemu:dirty-bitmap:${b}`, "--totals", s.uri])).stdout);
        const opts = `driver=nbd,server.type=unix,server.path=${s.sock},x-dirty-bitmap=qemu:dirty-bitmap:${b}`;
        outs.push((await runOk("qemu-img", ["map", "--output=json", "--image-opts", opts])).stdout);
      }
      return outs;
    });
    assert.deepEqual(a, b);
    assert.ok(a[0].includes("qemu:dirty-bitmap:b0") && a[0].includes("qemu:dirty-bitmap:fine"));
    assert.match(a[1], /1048576\s+327680\s+1\s+dirty/);
  },
});

Deno.test({
  name: "blkgraph nbd -B refuses a missing and an inconsistent bitmap with qemu-nbd's messages",
  ignore,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-bm-");
    const src = await imageWithBitmaps(dir.path);
    const broken = `${dir.path}/broken.qcow2`;
    await Deno.copyFile(src, broken);
    await run("qemu-io", ["-c", "write 0 512", "-c", "sigraise 9", broken]); // dies with b0 in use
    const cli = new URL("../../../cli/main.ts", import.meta.url).pathname;
    for (const [file, bitmap] of [[src, "nope"], [broken, "b0"]]) {
      const sock = sockPath(dir.path, "x");
      const ours = await run(Deno.execPath(), ["run", "-A", cli, "nbd", "-r", "-B", bitmap, "-k", sock, file]);
      const theirs = await run("qemu-nbd", ["-r", "-B", bitmap, "-k", sock, file]);
      assert.equal(ours.code, 1);
      assert.equal(theirs.code, 1);
      assert.equal(ours.stderr.replace("blkgraph:", "qemu-nbd:"), theirs.stderr);
    }
  },
});

Deno.test({
  name: "serveNbd() exports the live bitmap of a writable node: writes over NBD show up in qemu:dirty-bitmap, as with qemu-nbd",
  ignore,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-bm-");
    const src = await imageWithBitmaps(dir.path);
    const maps: string[] = [];
    for (const server of ["blkgraph", "qemu-nbd"]) {
      const copy = `${dir.path}/${server}.qcow2`;
      await Deno.copyFile(src, copy);
      const sock = sockPath(dir.path, "w");
      let stop: () => Promise<void>;
      if (server === "blkgraph") {
        const node = await open(copy);
        const s = await serveNbd(node, { socket: sock, bitmaps: ["b0"], closeNode: true });
        stop = () => s.close();
      } else {
        const s = await qemuNbd(sock, ["-t", "-f", "qcow2", "-B", "b0"], copy);
        stop = () => s.stop();
      }
      try {
        const uri = `nbd+unix:///?socket=${sock}`;
        await runOk("qemu-io", ["-f", "raw", "-c", "write 5M 512", "-c", "write -z 6M 128k", uri]);
        maps.push((await runOk("nbdinfo", ["--map=qemu:dirty-bitmap:b0", uri])).stdout);
      } finally {
        await stop();
      }
      maps.push((await runOk("qemu-img", ["info", "--output=json", copy])).stdout.includes('"in-use"') ? "in-use" : "stored");
    }
    assert.deepEqual(maps.slice(0, 2), maps.slice(2));
    assert.match(maps[0], /5242880\s+65536\s+1\s+dirty/);
    assert.equal(maps[1], "stored");
  },
});

Deno.test({
  name: "nbd client x-dirty-bitmap: bitmaps.dirtyRanges() and block status read the same bitmap from blkgraph nbd and qemu-nbd",
  ignore,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-bm-");
    const src = await imageWithBitmaps(dir.path);
    const [a, b] = await onBoth(dir.path, ["-r", "-t", "-e", "4", "-B", "b0"], src, async (s) => {
      await using remote = await open(
        { driver: "nbd", server: { type: "unix", path: s.sock }, "x-dirty-bitmap": "qemu:dirty-bitmap:b0" },
        { readOnly: true },
      );
      const ranges: string[] = [];
      for await (const e of remote.bitmaps.dirtyRanges("b0")) ranges.push(`${e.offset}+${e.length}`);
      const st = await remote.blockStatus(0, remote.length);
      const missing = await open(
        { driver: "nbd", server: { type: "unix", path: s.sock }, "x-dirty-bitmap": "qemu:dirty-bitmap:nope" },
        { readOnly: true },
      ).then(() => "opened", (e) => `${(e as BlockError).code}: ${normalise((e as Error).message, s.sock)}`);
      const other = await remote.bitmaps.extent("fine", 0, 512).then(() => "answered", (e) => (e as Error).message);
      const opts = `driver=nbd,server.type=unix,server.path=${s.sock},x-dirty-bitmap=qemu:dirty-bitmap:nope`;
      const q = await run("qemu-img", ["info", "--image-opts", opts]);
      const qemuSays = q.stderr.trim().replace(/^qemu-img: Could not open '[^']*': /, "");
      return { ranges, first: [st.length, st.data, st.allocated], missing, other, qemuSays };
    });
    assert.deepEqual(a, b);
    assert.deepEqual(a.ranges, ["0+65536", "1048576+327680", "9437184+1048576", "15728640+65536"]);
    assert.deepEqual(a.first, [65536, false, false]); // dirty reads as an unallocated hole, as in QEMU
    // QEMU 7.2 refuses it as EINVAL without naming it; blkgraph names the context.
    assert.equal(a.qemuSays, "Could not open image: Invalid argument");
    assert.equal(a.missing, "EINVAL: requested x-dirty-bitmap qemu:dirty-bitmap:nope not found on nbd+unix:///?socket=SOCK");
    assert.match(a.other, /Dirty bitmap 'fine' not found/);
  },
});

Deno.test("serveNbd() refuses an enabled bitmap on a read-only export of a writable node (it would change under the client), as QEMU's export does", async () => {
  await using dir = await tempDir("blkgraph-nbd-bm-");
  const path = `${dir.path}/a.qcow2`;
  await createImage(path, "qcow2", 1 << 20);
  await using node = await open(path);
  await node.bitmaps.add("live");
  await node.bitmaps.add("frozen", { disabled: true });
  await assert.rejects(
    serveNbd(node, { socket: sockPath(dir.path, "r"), readOnly: true, bitmaps: ["live"] }),
    /Enabled bitmap 'live' incompatible with readonly export/,
  );
  await assert.rejects(serveNbd(node, { socket: sockPath(dir.path, "r"), bitmaps: ["nope"] }), /Bitmap 'nope' is not found/);
  const s = await serveNbd(node, { socket: sockPath(dir.path, "r"), readOnly: true, bitmaps: ["frozen"] });
  await s.close();
});

Deno.test({
  name: "map over an nbd node with x-dirty-bitmap prints what qemu-img map prints: dirty ranges are holes, not zeros",
  ignore,
  async fn() {
    await using dir = await tempDir("blkgraph-nbd-bm-");
    const src = await imageWithBitmaps(dir.path);
    const s = await qemuNbd(sockPath(dir.path, "m"), ["-r", "-t", "-B", "b0"], src);
    try {
      const opts = `driver=nbd,server.type=unix,server.path=${s.sock},x-dirty-bitmap=qemu:dirty-bitmap:b0`;
      const q = await runOk("qemu-img", ["map", "--output=json", "--image-opts", opts]);
      const r = await cli(["map", "--output=json", "--image-opts", opts]);
      assert.deepEqual([r.code, r.stdout], [0, q.stdout]);
      assert.match(q.stdout, /"present": false, "zero": false, "data": false/);
    } finally {
      await s.stop();
    }
  },
});
