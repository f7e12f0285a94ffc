/**
 * Our version of QEMU iotest 026 (error paths): for each BLKDBG event qcow2
 * raises while writing, inject EIO or ENOSPC there (once or for good, in
 * both metadata modes) and check that the failing operation reports that
 * errno without hanging, that our checker and `qemu-img check` find no
 * corruption (leaks are allowed), and that after repair every write that
 * succeeded before the error reads back — with our reader and with qemu-io.
 */

import assert from "node:assert/strict";
import { BlockError, type BlockNode, open } from "../../mod.ts";
import { checkQcow2, repairImage } from "../../drivers/qcow2/check.ts";
import { pattern, qemuCheck, run, runOk, skipUnless } from "../_helpers/qemu.ts";

type Errno = "EIO" | "ENOSPC";
type Mode = "ordered" | "metadata-sync";

/** One operation of a scenario. */
type Op = { write: [offset: number, length: number] } | { truncate: number };

interface Scenario {
  /** qemu-img create -o options. */
  create: string;
  /** Virtual size given to qemu-img create. */
  size: string;
  /** Writes done before the test open (their tables are cold when the test starts). */
  prep: [number, number][];
  /** Operations under blkdebug. */
  ops: Op[];
}

const K = 1024;
const M = 1024 * K;
const G = 1024 * M;

/** 64k clusters: L2 loads, L2 allocation with L1 update, COW, refcount updates. */
const CLUSTERS_64K: Scenario = {
  create: "cluster_size=65536",
  size: "1G",
  prep: [[32 * M, 512]],
  ops: [
    { write: [0, 128 * K] },
    { write: [64 * M + 4 * K, 8 * K] },
    { write: [768 * M, 64 * K] },
  ],
};

/** 512-byte clusters and 64-bit refcounts: refcount blocks are allocated and the refcount table must grow. */
const REFTABLE_GROWTH: Scenario = {
  create: "cluster_size=512,refcount_bits=64",
  size: "64M",
  prep: [],
  ops: [
    { write: [0, 256 * K] },
    { write: [4 * M, 1 * M] },
    { write: [8 * M, 1 * M] },
  ],
};

/** Growing the virtual size grows the L1 table. */
const L1_GROWTH: Scenario = {
  create: "cluster_size=65536",
  size: "1G",
  prep: [[32 * M, 512]],
  ops: [{ truncate: 64 * G }, { write: [40 * G, 64 * K] }, { write: [0, 64 * K] }],
};

const GROUPS: [Scenario, string[]][] = [
  [CLUSTERS_64K, [
    "l1_update",
    "l2_load",
    "l2_update",
    "l2_alloc_write",
    "write_aio",
    "refblock_load",
    "refblock_update_part",
    "cluster_alloc",
  ]],
  [REFTABLE_GROWTH, [
    "refblock_alloc",
    "refblock_alloc_hookup",
    "refblock_alloc_write",
    "refblock_alloc_write_blocks",
    "refblock_alloc_write_table",
    "refblock_alloc_switch_table",
  ]],
  [L1_GROWTH, ["l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table"]],
];

/** The host file node (with QEMU-compatible image locking, as by default). */
function hostFile(path: string): Record<string, unknown> {
  return { driver: "file", filename: path };
}

function byteFor(i: number): number {
  return 0x11 * (i + 1);
}

async function makeImage(path: string, s: Scenario): Promise<void> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", s.create, path, s.size]);
  if (!s.prep.length) return;
  await using img = await open({ driver: "qcow2", file: hostFile(path) });
  for (const [off, len] of s.prep) await img.pwrite(off, pattern(len, 0xaa));
}

async function runOps(img: BlockNode, s: Scenario, errno: Errno): Promise<{ ok: [number, number, number][]; surfaced: boolean }> {
  const ok: [number, number, number][] = [];
  let surfaced = false;
  for (let i = 0; i < s.ops.length; i++) {
    const op = s.ops[i];
    // After a failed grow, writes past the old end are not attempted.
    if ("write" in op && op.write[0] + op.write[1] > img.length) continue;
    try {
      if ("truncate" in op) await img.truncate(op.truncate);
      else await img.pwrite(op.write[0], pattern(op.write[1], byteFor(i)));
      if ("write" in op) ok.push([op.write[0], op.write[1], byteFor(i)]);
    } catch (e) {
      assert.ok(e instanceof BlockError, `unexpected error ${e}`);
      assert.equal(e.code, errno, e.message);
      surfaced = true;
    }
  }
  return { ok, surfaced };
}

/** What one case showed: the error surfaced; the image was left with leaks (allowed); successful writes verified. */
interface CaseResult {
  surfaced: boolean;
  leaky: boolean;
  writesKept: number;
}

async function runCase(dir: string, s: Scenario, event: string, errno: Errno, once: boolean, mode: Mode): Promise<CaseResult> {
  const path = `${dir}/t-${errno}-${once ? "once" : "always"}-${mode}.qcow2`;
  await makeImage(path, s);
  const img = await open(
    {
      driver: "qcow2",
      "metadata-mode": mode,
      file: { driver: "blkdebug", "inject-error": [{ event, errno, once }], image: hostFile(path) },
    },
    { cache: "writethrough" },
  );
  const { ok, surfaced } = await runOps(img, s, errno);
  await img.close().catch((e) => assert.equal(e.code, errno, e.message));

  const what = `${event} ${errno} once=${once} ${mode}`;
  {
    await using file = await open(hostFile(path), { readOnly: true });
    const ours = await checkQcow2(file);
    assert.equal(ours.corruptions, 0, `${what}: our check found corruption: ${ours.messages.join("; ")}`);
    assert.equal(ours.checkErrors, 0, `${what}: our check failed: ${ours.messages.join("; ")}`);
  }
  const q = await qemuCheck(path);
  const leaky = q.code === 3;
  assert.ok(q.code === 0 || q.code === 3, `${what}: qemu-img check exit ${q.code}: ${JSON.stringify(q.json)}`);
  {
    await using file = await open(hostFile(path));
    const fixed = await repairImage(file);
    assert.equal(fixed.corruptions + fixed.leaks, 0, `${what}: repair left problems: ${fixed.messages.join("; ")}`);
  }
  assert.equal((await qemuCheck(path)).code, 0, `${what}: qemu-img check after repair`);

  await using back = await open({ driver: "qcow2", file: hostFile(path) }, { readOnly: true });
  const expect = [...s.prep.map(([o, l]) => [o, l, 0xaa] as [number, number, number]), ...ok];
  for (const [off, len, byte] of expect) {
    const buf = new Uint8Array(len);
    await back.pread(off, buf);
    assert.ok(buf.every((b) => b === byte), `${what}: ${len} bytes at ${off} do not read back as 0x${byte.toString(16)}`);
  }
  if (expect.length) {
    const args = ["-r", "-f", "qcow2"];
    for (const [off, len, byte] of expect) args.push("-c", `read -q -P 0x${byte.toString(16)} ${off} ${len}`);
    const r = await run("qemu-io", [...args, path]);
    assert.equal(r.code, 0, `${what}: qemu-io read-back failed: ${r.stdout}${r.stderr}`);
    assert.doesNotMatch(r.stdout + r.stderr, /Pattern verification failed|failed/, `${what}: qemu-io: ${r.stdout}${r.stderr}`);
  }
  await Deno.remove(path);
  return { surfaced, leaky, writesKept: ok.length };
}

for (const [scenario, events] of GROUPS) {
  for (const event of events) {
    Deno.test({
      name: `errpath 026: an error at ${event} surfaces its errno and leaves a consistent image`,
      ignore: skipUnless("qemu-img", "qemu-io"),
      async fn() {
        const dir = await Deno.makeTempDir({ prefix: "blkgraph-026-" });
        try {
          const results: CaseResult[] = [];
          for (const errno of ["EIO", "ENOSPC"] as const) {
            for (const once of [true, false]) {
              for (const mode of ["ordered", "metadata-sync"] as const) {
                results.push(await runCase(dir, scenario, event, errno, once, mode));
              }
            }
          }
          const surfaced = results.filter((r) => r.surfaced).length;
          assert.equal(surfaced, 8, `${event}: the injected error surfaced in ${surfaced} of 8 cases`);
          const leaky = results.filter((r) => r.leaky).length;
          const kept = results.reduce((n, r) => n + r.writesKept, 0);
          console.log(`errpath 026 ${event}: ${leaky} of 8 cases left leaks (allowed); ${kept} successful writes read back`);
        } finally {
          await Deno.remove(dir, { recursive: true });
        }
      },
    });
  }
}
