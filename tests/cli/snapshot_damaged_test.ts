/**
 * Internal snapshots of damaged qcow2 images, against qemu-img 7.2 on a copy
 * of the same image (iotest 080): a snapshot that would share a cluster
 * without a refcount block is refused before the refcounts change (the L1
 * copy allocated first is leaked, as qemu-img's; the image is not left
 * dirty); a snapshot whose L1 table is invalid leaves
 * the image usable, and only what uses that table fails, in QEMU's words.
 */

import assert from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

async function poke(path: string, offset: number, bytes: number[]): Promise<void> {
  using f = await Deno.open(path, { write: true });
  await f.seek(offset, Deno.SeekMode.Start);
  await f.write(new Uint8Array(bytes));
}

/** qemu-img's and our exit code and stderr for `ARGS` on two copies of `path`; the copies are `path.q` and `path.o`. */
async function both(path: string, args: (f: string) => string[], tool = "qemu-img"): Promise<[unknown[], unknown[]]> {
  await Deno.copyFile(path, `${path}.q`);
  await Deno.copyFile(path, `${path}.o`);
  const q = await run(tool, args(`${path}.q`));
  const o = await cli([...(tool === "qemu-io" ? ["io"] : []), ...args(`${path}.o`)]);
  const norm = (s: string, f: string) => s.replaceAll(f, "IMG").replace(/^blkgraph( io)?:/gm, tool + ":");
  return [[q.code, norm(q.stderr, `${path}.q`)], [o.code, norm(o.stderr, `${path}.o`)]];
}

Deno.test({
  name:
    "snapshot -c sharing a cluster without a refcount block fails as qemu-img's (EFBIG past any table, else EAGAIN), leaking no more than a cluster",
  ignore,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/t.qcow2`;
    for (
      const [entry, errno] of [[[0xbf, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], "-27 (File too large)"], [
        [0x80, 0, 0, 0xff, 0xff, 0xff, 0, 0],
        "-11 (Resource temporarily unavailable)",
      ]] as const
    ) {
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "64M"]);
      await runOk("qemu-io", ["-c", "write 0 512", path]);
      await poke(path, 0x40000, [...entry]);
      const [q, o] = await both(path, (f) => ["snapshot", "-c", "test", f]);
      assert.deepEqual(o, q);
      assert.deepEqual(q, [1, `qemu-img: Could not create snapshot 'test': ${errno}\n`]);
      // As qemu-img's: the L1 copy allocated before the refcounts failed is leaked, no error is added to the damage the
      // image had, and no dirty bit is left for the next open to "repair" (incompatible feature bit 0, header byte 79).
      const errors = async (f: string) => (await run("qemu-img", ["check", f])).stdout.match(/^(\d+) errors were found/m)?.[1];
      const before = await errors(path);
      for (const f of [`${path}.q`, `${path}.o`]) {
        assert.equal(await errors(f), before, f);
        assert.match((await run("qemu-img", ["check", f])).stdout, /leaked clusters? (was|were) found/, f);
        assert.equal((await Deno.readFile(f))[79] & 1, 0, `${f} is left dirty`);
      }
    }
  },
});

/** A 64M image with data at 0 and one snapshot 'test' whose table entry (at 0x70000) gets `bytes` at `at`. */
async function damagedSnapshot(path: string, at: number, bytes: number[]): Promise<void> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path, "64M"]);
  await runOk("qemu-io", ["-c", "write 0 512", path]);
  await runOk("qemu-img", ["snapshot", "-c", "test", path]);
  await poke(path, 0x70000 + at, bytes);
}

Deno.test({
  name:
    "a snapshot L1 table offset that is invalid: the active layer reads and writes; convert -l and snapshot -d fail in qemu-img's words",
  ignore,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/t.qcow2`;
    await damagedSnapshot(path, 0, [0, 0, 0, 0, 0, 0x40, 0x02, 0]);
    // blkgraph's own words add the snapshot and the field's value to QEMU's (the drop-in prints QEMU's alone: iotest 080).
    const same = ([qc, qs]: unknown[], [oc, os]: unknown[]) => {
      assert.equal(oc, qc);
      assert.ok((os as string).startsWith((qs as string).trimEnd()), `${os} vs ${qs}`);
    };
    const [q1, o1] = await both(path, (f) => ["convert", "-l", "test", f, `${f}.snap`]);
    assert.deepEqual(q1, [1, "qemu-img: Failed to load snapshot: Snapshot L1 table offset invalid\n"]);
    same(q1, o1);
    const [q2, o2] = await both(path, (f) => ["snapshot", "-d", "test", f]);
    assert.deepEqual(q2, [1, "qemu-img: Could not delete snapshot 'test': Snapshot L1 table offset invalid\n"]);
    same(q2, o2);
    const [q3, o3] = await both(path, (f) => ["-c", "write -P 0xcd 0 4k", "-c", "read -P 0xcd 0 4k", f], "qemu-io");
    assert.deepEqual(o3, q3);
    assert.equal(q3[0], 0);
    assert.equal((await run("qemu-io", ["-c", "read -P 0xcd 0 4k", `${path}.o`])).code, 0);
  },
});

Deno.test({
  name:
    "a snapshot L1 table too large, with inactive-l2 overlap checks: writes fail with EFBIG as qemu-io's, the image is not marked corrupt",
  ignore,
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/t.qcow2`;
    await damagedSnapshot(path, 8, [0x10, 0, 0, 0]);
    const args = (f: string) => ["-c", `open -o overlap-check.inactive-l2=on ${f}`, "-c", "write 0 4k"];
    await Deno.copyFile(path, `${path}.q`);
    await Deno.copyFile(path, `${path}.o`);
    const q = await run("qemu-io", args(`${path}.q`));
    const o = await cli(["io", ...args(`${path}.o`)]);
    assert.equal(q.stdout, "write failed: File too large\n");
    assert.equal(o.stdout, q.stdout);
    const corrupt = async (f: string) => (await Deno.readFile(f))[79] & 2;
    assert.equal(await corrupt(`${path}.o`), 0);
    assert.equal(await corrupt(`${path}.q`), 0);
  },
});
