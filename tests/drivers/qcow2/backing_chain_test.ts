/**
 * Backing chains that loop and backing file names QEMU reads as none
 * (issues 9.11, 9.17): opening an image whose chain comes back to an image
 * being opened fails at once with qemu-img's message (iotest 043) instead of
 * opening the chain ~20,000 times; an empty backing file name is no backing
 * file, and a name ends at its first NUL byte, as QEMU's C strings do.
 */

import assert from "node:assert/strict";
import { BlockError, createImage, open } from "../../../mod.ts";
import { readHeaderFrom, serialiseHeader } from "../../../drivers/qcow2/mod.ts";
import { hasTool, run, tempDir } from "../../_helpers/qemu.ts";
import { cli } from "../../cli/_run.ts";

/** Rewrites an image's backing file name (and format) in place. */
async function setBacking(path: string, name: string | undefined, format = "qcow2"): Promise<void> {
  await using file = await open({ driver: "file", filename: path });
  const h = await readHeaderFrom(file);
  await file.pwrite(
    0,
    serialiseHeader({ ...h, backingFile: name, backingFormat: name === undefined ? undefined : format }, 2 ** h.clusterBits),
  );
}

async function openError(path: string): Promise<BlockError> {
  try {
    await (await open(path, { readOnly: true })).close();
  } catch (e) {
    if (e instanceof BlockError) return e;
    throw e;
  }
  throw new Error(`${path} opened`);
}

/** qemu-img's loop message for the same image (info --backing-chain, as iotest 043 runs it). */
async function qemuLoopLine(path: string): Promise<string | undefined> {
  const r = await run("qemu-img", ["info", "-U", "--backing-chain", path]);
  return r.stderr.split("\n").find((l) => l.includes("infinite loop"))?.replace(/^qemu-img: /, "");
}

Deno.test("qcow2 open() refuses an image that is its own backing file, with qemu-img's message", async () => {
  await using d = await tempDir();
  const t = `${d.path}/t.qcow2`;
  await createImage(t, "qcow2", 1 << 20);
  await setBacking(t, t);
  const err = await openError(t);
  assert.equal(err.code, "EINVAL");
  assert.equal(err.message, `Backing file '${t}' creates an infinite loop.`);
  if (hasTool("qemu-img")) assert.equal(await qemuLoopLine(t), err.message);
});

Deno.test("qcow2 open() refuses a backing file whose backing file is the image (parent references self)", async () => {
  await using d = await tempDir();
  const base = `${d.path}/t.qcow2.base`;
  const t = `${d.path}/t.qcow2`;
  await createImage(base, "qcow2", 1 << 20);
  await createImage(t, "qcow2", 1 << 20, { options: { backing_file: base, backing_fmt: "qcow2" } });
  await setBacking(base, t);
  const err = await openError(t);
  assert.match(err.message, new RegExp(`Backing file '${t.replaceAll(".", "\\.")}' creates an infinite loop\\.`));
  if (hasTool("qemu-img")) assert.ok(err.message.endsWith((await qemuLoopLine(t))!), err.message);
});

Deno.test("qcow2 open() refuses a chain where an ancestor references another ancestor, naming the repeated file", async () => {
  await using d = await tempDir();
  const p = (n: string) => `${d.path}/t.qcow2${n}`;
  await createImage(p(".1.base"), "qcow2", 1 << 20);
  await createImage(p(".2.base"), "qcow2", 1 << 20, { options: { backing_file: p(".1.base"), backing_fmt: "qcow2" } });
  await createImage(p(".3.base"), "qcow2", 1 << 20, { options: { backing_file: p(".2.base"), backing_fmt: "qcow2" } });
  await createImage(p(""), "qcow2", 1 << 20, { options: { backing_file: p(".3.base"), backing_fmt: "qcow2" } });
  await setBacking(p(".1.base"), p(".2.base"));
  const err = await openError(p(""));
  assert.ok(err.message.endsWith(`Backing file '${p(".2.base")}' creates an infinite loop.`), err.message);
  if (hasTool("qemu-img")) assert.ok(err.message.endsWith((await qemuLoopLine(p("")))!), err.message);
});

Deno.test("qcow2 open() follows a finite chain of the same name in different directories", async () => {
  await using d = await tempDir();
  await Deno.mkdir(`${d.path}/a`);
  await createImage(`${d.path}/a/x.qcow2`, "qcow2", 1 << 20);
  await createImage(`${d.path}/x.qcow2`, "qcow2", 1 << 20, { options: { backing_file: "a/x.qcow2", backing_fmt: "qcow2" } });
  await using node = await open(`${d.path}/x.qcow2`, { readOnly: true });
  assert.equal(node.backing?.formatName, "qcow2");
});

Deno.test("qcow2 open() reads an empty backing file name as no backing file, as QEMU does", async () => {
  await using d = await tempDir();
  const t = `${d.path}/t.qcow2`;
  await createImage(t, "qcow2", 1 << 20);
  await setBacking(t, "");
  await using node = await open(t, { readOnly: true });
  assert.equal(node.backing, undefined);
  const buf = new Uint8Array(4096).fill(1);
  await node.pread(0, buf);
  assert.ok(buf.every((b) => b === 0));
  if (hasTool("qemu-io")) {
    const r = await run("qemu-io", ["-r", "-c", "read -P 0 0 4k", t]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  }
});

Deno.test("qcow2 open() ends a backing file name at its first NUL byte, as QEMU's C strings do", async () => {
  await using d = await tempDir();
  const base = `${d.path}/b.qcow2`;
  const t = `${d.path}/t.qcow2`;
  await createImage(base, "qcow2", 1 << 20);
  await createImage(t, "qcow2", 1 << 20, { options: { backing_file: "b.qcow2", backing_fmt: "qcow2" } });
  await setBacking(t, "b.qcow2\0junk");
  await using node = await open(t, { readOnly: true });
  assert.ok(node.backing, "the backing file is b.qcow2");
  assert.equal((await node.info())["backing-filename"], "b.qcow2");
  if (hasTool("qemu-img")) {
    const info = JSON.parse((await run("qemu-img", ["info", "-U", "--output=json", t])).stdout);
    assert.equal(info["backing-filename"], "b.qcow2");
  }
});

Deno.test("blkgraph info --backing-chain of a looping chain says only which file loops, as qemu-img does (iotest 043)", async () => {
  await using d = await tempDir();
  const t = `${d.path}/t.qcow2`;
  await createImage(t, "qcow2", 1 << 20);
  await setBacking(t, t);
  const r = await cli(["info", "--backing-chain", t]);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, `blkgraph: Backing file '${t}' creates an infinite loop.\n`);
  if (hasTool("qemu-img")) assert.equal(r.stderr.replace(/^blkgraph: /, ""), `${await qemuLoopLine(t)}\n`);
});
