/**
 * `check` of a snapshot table past QEMU's limits, against qemu-img check 7.2
 * on a copy of the same image (qcow2_check_read_snapshot_table and
 * qcow2_check_fix_snapshot_table): more than 65536 entries opens for the
 * check, is refused without -r all and cut to 65536 with it; a table past
 * 64 MiB only because of one entry's oversized extra data is rewritten
 * once that data is cut (the old table is read as it lies on disk).
 */

import assert from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

const ignore = skipUnless("qemu-img");
const MIB = 1 << 20;

/** Writes `bytes` at `offset` of the file (growing it). */
async function poke(path: string, offset: number, bytes: Uint8Array): Promise<void> {
  using f = await Deno.open(path, { write: true });
  await f.seek(offset, Deno.SeekMode.Start);
  await f.write(bytes);
}

function be(n: number, size: 4 | 8): Uint8Array {
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  if (size === 4) v.setUint32(0, n);
  else v.setBigUint64(0, BigInt(n));
  return b;
}

/** A v2 image (all-zero entries are valid there) whose header points at `count` snapshot entries at 1 MiB. */
async function tableImage(path: string, count: number, tableBytes: number): Promise<void> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=0.10", path, "64M"]);
  await poke(path, 64, be(MIB, 8));
  await poke(path, 60, be(count, 4));
  await Deno.truncate(path, MIB + tableBytes);
}

/** qemu-img's and our exit code, stdout and stderr of `check ARGS` on two copies of `path`. */
async function bothCheck(path: string, args: string[]): Promise<[unknown[], unknown[]]> {
  const q = `${path}.q`;
  const o = `${path}.o`;
  await Deno.copyFile(path, q);
  await Deno.copyFile(path, o);
  const qr = await run("qemu-img", ["check", ...args, q]);
  const or = await cli(["check", ...args, o]);
  const strip = (s: string, f: string) => s.replaceAll(f, "IMG").replace(/^blkgraph:/gm, "qemu-img:");
  return [[qr.code, strip(qr.stdout, q), strip(qr.stderr, q)], [or.code, strip(or.stdout, o), strip(or.stderr, o)]];
}

Deno.test({
  name: "check of more than 65536 snapshots: refused (the count to drop named) without -r all, cut to 65536 with it, as qemu-img",
  ignore,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/t.qcow2`;
    await tableImage(path, 65538, 40 * 65538);
    const [q1, o1] = await bothCheck(path, []);
    assert.deepEqual(o1, q1);
    assert.match(q1[2] as string, /ERROR snapshot table too large\nYou can force-remove all 2 overhanging snapshots/);
    // qemu-img check -r all takes half a minute here (iotest 261 shows its output): ours is checked by its result.
    const r = await cli(["check", "-r", "all", `${path}.o`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /^Discarding 2 overhanging snapshots$/m);
    assert.match(r.stdout, /Double checking the fixed image now\.\.\.\nNo errors were found on the image\./);
    const nb = async (f: string) => new DataView((await Deno.readFile(f)).buffer).getUint32(60);
    assert.equal(await nb(`${path}.o`), 65536);
    assert.equal((await run("qemu-img", ["check", `${path}.o`])).code, 0);
  },
});

Deno.test({
  name: "check -r all of a table past 64 MiB because of one entry's extra data cuts it and rewrites the table, as qemu-img",
  ignore,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/t.qcow2`;
    const extra = 64 * MIB;
    // Entry 0: 64 MiB of extra data (zeros, a hole in the file); entry 1 lies past 64 MiB of table.
    const e0 = 40 + extra + 2;
    const e1At = Math.ceil(e0 / 8) * 8;
    await tableImage(path, 2, e1At + 48);
    await poke(path, MIB + 12, new Uint8Array([0, 1, 0, 1]));
    await poke(path, MIB + 36, be(extra, 4));
    await poke(path, MIB + 40 + extra, new TextEncoder().encode("1a"));
    await poke(path, MIB + e1At + 12, new Uint8Array([0, 1, 0, 1]));
    await poke(path, MIB + e1At + 40, new TextEncoder().encode("2b"));
    const [q, o] = await bothCheck(path, ["-r", "all"]);
    assert.deepEqual(o, q);
    assert.match(q[2] as string, /Discarding too much extra metadata in snapshot table entry 0/);
    assert.equal((await run("qemu-img", ["check", `${path}.o`])).code, 0);
    const list = (await runOk("qemu-img", ["snapshot", "-l", `${path}.o`])).stdout;
    assert.match(list, /^1 +a /m);
  },
});
