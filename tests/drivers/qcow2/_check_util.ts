/**
 * Helpers of the checkQcow2() tests (check_*_test.ts): our check and
 * `qemu-img check` (live or recorded) on the same image, the images they
 * run on (make.sh's `busy`), and byte patches that damage them on disk.
 *
 * @module
 */

import assert from "node:assert/strict";
import { open } from "../../../mod.ts";
import { checkExitCode, checkQcow2, type CheckResult } from "../../../drivers/qcow2/check.ts";
import { run, runOk } from "../../_helpers/qemu.ts";
import { assertReadsLikeQemu, type QemuImage, qemuImage, qemuRun } from "./_qemu_image.ts";
import { openQcow2 } from "./_util.ts";

/** Our check of the qcow2 image at `path` (read-only unless repairing). */
export async function ourCheck(path: string, repair?: "leaks" | "all"): Promise<CheckResult> {
  await using file = await open({ driver: "file", filename: path }, { readOnly: !repair });
  return await checkQcow2(file, { repair });
}

/** `qemu-img check --output=json` on the image (live or recorded): exit code and parsed JSON. */
export async function qemuCheck(img: QemuImage): Promise<{ code: number; json: Record<string, number> }> {
  const r = await qemuRun(img, "check --output=json @IMG@");
  return { code: r.code, json: r.stdout ? JSON.parse(r.stdout) : {} };
}

/** Asserts our check and qemu-img's agree on every counter and the exit code. */
export async function assertAgrees(img: QemuImage): Promise<CheckResult> {
  const ours = await ourCheck(img.path);
  const theirs = await qemuCheck(img);
  const j = theirs.json;
  const want = {
    "check-errors": j["check-errors"] ?? 0,
    corruptions: j.corruptions ?? 0,
    leaks: j.leaks ?? 0,
    "image-end-offset": j["image-end-offset"] ?? 0,
    "total-clusters": j["total-clusters"] ?? 0,
    "allocated-clusters": j["allocated-clusters"] ?? 0,
    "fragmented-clusters": j["fragmented-clusters"] ?? 0,
    "compressed-clusters": j["compressed-clusters"] ?? 0,
  };
  const got = {
    "check-errors": ours.checkErrors,
    corruptions: ours.corruptions,
    leaks: ours.leaks,
    "image-end-offset": ours.imageEndOffset,
    "total-clusters": ours.totalClusters,
    "allocated-clusters": ours.allocatedClusters,
    "fragmented-clusters": ours.fragmentedClusters,
    "compressed-clusters": ours.compressedClusters,
  };
  assert.deepEqual(got, want);
  assert.equal(checkExitCode(ours), theirs.code);
  return ours;
}

/** qemu-img check's stderr lines (the per-cluster messages), live or recorded. */
export async function qemuMessages(img: QemuImage, repair?: "leaks" | "all"): Promise<string[]> {
  const r = await qemuRun(img, repair ? `check -r ${repair} @IMG@` : "check @IMG@");
  return r.stderr.split("\n").filter((l) => l !== "");
}

/**
 * Asserts a repaired image is clean and still holds `base`'s guest data: by
 * qemu-img check and compare where QEMU is installed; offline by our check
 * and the content qemu-img converted from the undamaged fixture.
 */
export async function assertRepairedClean(path: string, base: QemuImage): Promise<void> {
  if (base.live) {
    assert.equal((await run("qemu-img", ["check", path])).code, 0);
    await runOk("qemu-img", ["compare", base.path, path]);
    return;
  }
  assert.equal(checkExitCode(await ourCheck(path)), 0);
  await using node = await openQcow2(path, {}, true);
  await assertReadsLikeQemu(node, base);
}

/** Copies an image's file under another name in its directory; returns the copy's path. */
export async function copy(img: QemuImage, name: string): Promise<string> {
  const to = `${img.path.slice(0, img.path.lastIndexOf("/"))}/${name}`;
  await Deno.copyFile(img.path, to);
  return to;
}

/** `qemu-img create -f qcow2` with `-o opts`. */
export async function create(path: string, size: string, opts = ""): Promise<void> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...(opts ? ["-o", opts] : []), path, size]);
}

/** Runs qemu-io commands on the qcow2 image at `path`. */
export async function io(path: string, ...cmds: string[]): Promise<void> {
  await runOk("qemu-io", ["-f", "qcow2", ...cmds.flatMap((c) => ["-c", c]), path]);
}

/** Reads `length` bytes of the file at `offset`. */
export async function readAt(path: string, offset: number, length: number): Promise<Uint8Array> {
  using f = await Deno.open(path, { read: true });
  await f.seek(offset, Deno.SeekMode.Start);
  const buf = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = await f.read(buf.subarray(done));
    if (n === null) break;
    done += n;
  }
  return buf;
}

/** Writes `data` into the file at `offset`. */
export async function writeAt(path: string, offset: number, data: Uint8Array): Promise<void> {
  using f = await Deno.open(path, { write: true });
  await f.seek(offset, Deno.SeekMode.Start);
  await f.write(data);
}

/** The big-endian 64-bit number at `offset` of the file. */
export async function u64(path: string, offset: number): Promise<number> {
  return Number(new DataView((await readAt(path, offset, 8)).buffer).getBigUint64(0));
}

/** `v` as 8 big-endian bytes. */
export function be64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v);
  return b;
}

/** Sets the 16-bit refcount of `cluster` (image with 64k clusters, default refcount width). */
export async function setRefcount16(path: string, cluster: number, value: number): Promise<void> {
  const reftable = await u64(path, 48);
  const block = (await u64(path, reftable)) & ~0x1ff;
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, value);
  await writeAt(path, block + cluster * 2, b);
}

/** Offset of the first L2 table (from L1 entry 0). */
export async function firstL2(path: string): Promise<number> {
  const l1 = await u64(path, 40);
  return Number(BigInt(await u64(path, l1)) & 0x00fffffffffffe00n);
}

/** An image with data, a snapshot, overwritten data and a compressed cluster (make.sh's `busy`). */
export async function busyImage(path: string, opts = "", clusterSize = "64k"): Promise<void> {
  await create(path, "64M", opts);
  await io(path, "write -P 1 0 1M", "write -P 2 10M 300k");
  await runOk("qemu-img", ["snapshot", "-c", "s1", path]);
  await io(path, "write -P 3 512k 1M", `write -c -P 4 20M ${clusterSize}`);
}

/** The busy-64k image, or fixture `name` (made from busy-64k by `damage`), live or unpacked. */
export function busy(dir: string, name = "busy-64k.qcow2", damage: (path: string) => Promise<void> = async () => {}): Promise<QemuImage> {
  return qemuImage(dir, name, async (path) => {
    await busyImage(path);
    await damage(path);
  });
}
