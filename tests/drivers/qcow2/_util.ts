/**
 * Helpers for the qcow2 driver tests: images made with qemu-img, a reference
 * raw file kept in step with the operations, and comparisons through
 * qemu-img (the oracle).
 *
 * @module
 */

import assert from "node:assert/strict";
import { type BlockNode, open } from "../../../mod.ts";
import { checkExitCode, checkQcow2 } from "../../../drivers/qcow2/check.ts";
import { qemuCheck, run, runOk } from "../../_helpers/qemu.ts";
import { fixtureBytes, hasQemu, manifest, writeSparse } from "../../_helpers/fixtures.ts";

/**
 * Where qemu-img is not installed, {@linkcode qemuCreate} unpacks the fixture
 * tests/testdata/make.sh made with the same `qemu-img create` (no backing
 * file): keyed by the sorted `-o` options and the size in bytes. A
 * `data_file=` option is keyed as `data_file` (the fixture's data file is
 * unpacked beside the image under its own name).
 */
const CREATED: Record<string, string> = {
  "cluster_size=512|4194304": "w-512.qcow2",
  "cluster_size=2M|16777216": "w-2M.qcow2",
  "cluster_size=4k,refcount_bits=1|8388608": "w-refcount1.qcow2",
  "cluster_size=512,refcount_bits=64|4194304": "w-refcount64.qcow2",
  "cluster_size=16k,extended_l2=on|8388608": "w-extl2-16k.qcow2",
  "cluster_size=512,refcount_bits=2|2097152": "w-refcount2.qcow2",
  "cluster_size=64k|8388608": "w-64k.qcow2",
  "cluster_size=4k|1073741824": "w-4k-1G.qcow2",
  "cluster_size=4k|8388608": "w-4k-8M.qcow2",
  "|4194304": "w-4M.qcow2",
  "|1048576": "w-1M.qcow2",
  "|67108864": "w-64M.qcow2",
  "lazy_refcounts=on|1048576": "w-lazy.qcow2",
  "cluster_size=4k|1048576": "w-4k-1M.qcow2",
  "cluster_size=4k,data_file|8388608": "w-datafile.qcow2",
  "cluster_size=65536|1073741824": "e026-64k.qcow2",
  "cluster_size=512,refcount_bits=64|67108864": "e026-512.qcow2",
  "cluster_size=64k,refcount_bits=64|4194304": "i-cluster-size-64k-refcount-bits-64.qcow2",
  "cluster_size=4k,compat=0.10|4194304": "i-compat-0-10-cluster-size-4k.qcow2",
  "extended_l2=on|4194304": "i-extended-l2-on.qcow2",
};

/** Where qemu-img is not installed, {@linkcode qemuOverlay}'s fixture for `SIZE|BASE COMMANDS|sorted top options`. */
const OVERLAYS: Record<string, string> = {
  "1M|write -P 0x11 0 1M|": "ov11.qcow2",
  "1M|write -P 0x5a 0 1M|cluster_size=64k": "ov5a.qcow2",
  "1M|write -P 0x42 0 1M|cluster_size=64k,extended_l2=on": "ov42-extl2.qcow2",
  "1M|write -P 0x42 0 1M|compat=0.10": "ov42-v2.qcow2",
};

/** Bytes of a qemu-img size argument ("4M", "1G", 65536). */
function sizeBytes(size: number | string): number {
  if (typeof size === "number") return size;
  const m = /^(\d+)([kKMGT]?)$/.exec(size);
  if (!m) throw new Error(`qemuCreate: size ${size}`);
  return Number(m[1]) * 1024 ** " KMGT".indexOf(m[2].toUpperCase() || " ");
}

let noted = false;

/** Prints once that an oracle is replaced offline. */
function noteOffline(): void {
  if (!noted) {
    console.warn("NOTE: qemu-img/qemu-io not installed: images come from tests/testdata fixtures, results are checked by blkgraph");
  }
  noted = true;
}

/** Opens a qcow2 image file read-write (or read-only) with extra qcow2 options. */
export function openQcow2(path: string, opts: Record<string, unknown> = {}, readOnly = false): Promise<BlockNode> {
  return open({ driver: "qcow2", ...opts, file: { driver: "file", filename: path } }, { readOnly });
}

/** Creates a qcow2 image with qemu-img (`-o` options as one string, optional backing). */
export async function qemuCreate(path: string, size: number | string, o = "", backing?: string, backingFmt = "qcow2"): Promise<void> {
  if (!hasQemu()) {
    const opts = o.split(",").filter((x) => x).map((x) => (x.startsWith("data_file=") ? "data_file" : x)).sort().join(",");
    const name = backing ? undefined : CREATED[`${opts}|${sizeBytes(size)}`];
    if (!name) {
      throw new Error(
        `qemu-img is not installed and no fixture was made by 'create -o ${o} ${size}'${backing ? " with a backing file" : ""}`,
      );
    }
    noteOffline();
    const dir = path.slice(0, path.lastIndexOf("/"));
    writeSparse(path, fixtureBytes(name));
    for (const f of manifest().fixtures[name].files) writeSparse(`${dir}/${f}`, fixtureBytes(f));
    return;
  }
  const args = ["create", "-q", "-f", "qcow2"];
  if (o) args.push("-o", o);
  if (backing) args.push("-b", backing, "-F", backingFmt);
  args.push(path, String(size));
  await runOk("qemu-img", args);
}

/** Runs qemu-io commands on an image and returns stdout. */
export async function qemuIo(path: string, ...cmds: string[]): Promise<string> {
  if (!hasQemu()) return await readPatterns(path, cmds);
  const args: string[] = [];
  for (const c of cmds) args.push("-c", c);
  return (await runOk("qemu-io", [...args, path])).stdout;
}

/** Asserts `qemu-img check` finds the image clean (exit 0: no corruption, no leaks). */
export async function assertClean(path: string): Promise<void> {
  if (!hasQemu()) {
    noteOffline();
    await using file = await open({ driver: "file", filename: path }, { readOnly: true });
    const ours = await checkQcow2(file, {});
    assert.equal(checkExitCode(ours), 0, `blkgraph check ${path}: ${ours.messages.join("; ")}`);
    return;
  }
  const r = await qemuCheck(path);
  assert.equal(r.code, 0, `qemu-img check ${path}: ${JSON.stringify(r.json)}`);
}

/** Asserts `qemu-img compare` finds the qcow2 image identical to a raw file. */
export async function assertSameAsRaw(path: string, raw: string): Promise<void> {
  if (!hasQemu()) {
    noteOffline();
    await using node = await openQcow2(path, {}, true);
    assert.equal(firstDiff(await readAll(node), await Deno.readFile(raw)), -1, `${path} differs from ${raw}`);
    return;
  }
  const r = await run("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", path, raw]);
  assert.equal(r.code, 0, `qemu-img compare: ${r.stdout}${r.stderr}`);
}

/** Converts an image to raw with qemu-img. */
export async function toRaw(path: string, raw: string): Promise<void> {
  if (!hasQemu()) {
    noteOffline();
    await using node = await openQcow2(path, {}, true);
    return await Deno.writeFile(raw, await readAll(node));
  }
  await runOk("qemu-img", ["convert", "-O", "raw", path, raw]);
}

/** Reads a whole node. */
export async function readAll(node: BlockNode): Promise<Uint8Array> {
  const buf = new Uint8Array(node.length);
  await node.pread(0, buf);
  return buf;
}

/** Index of the first differing byte, or -1. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** A small deterministic pseudo-random generator (LCG) returning [0, 1). */
export function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** A reference raw file kept in step with a qcow2 node (QEMU's view of what the guest sees). */
export class Mirror {
  /** The expected guest content. */
  readonly data: Uint8Array;

  /** Starts from the given content. */
  constructor(initial: Uint8Array) {
    this.data = initial.slice();
  }

  /** Records a write. */
  write(offset: number, bytes: Uint8Array): void {
    this.data.set(bytes, offset);
  }

  /** Records a range that now reads as `fill` (zeros, or backing content). */
  set(offset: number, bytes: Uint8Array | number, length = 0): void {
    if (typeof bytes === "number") this.data.fill(bytes, offset, offset + length);
    else this.data.set(bytes, offset);
  }
}

/**
 * Makes a base image written by qemu-io commands and a qcow2 overlay on it
 * (`dir/b.qcow2` under `dir/<top>`), both with qemu-img; returns their paths.
 */
export async function qemuOverlay(
  dir: string,
  size: string,
  baseCmds: string[],
  topOpts = "",
  top = "t.qcow2",
): Promise<{ base: string; top: string }> {
  if (!hasQemu()) {
    // make.sh's overlays of this shape (the base keeps its fixture name; the overlay names it).
    const key = `${size}|${baseCmds.join(";")}|${topOpts.split(",").filter((x) => x).sort().join(",")}`;
    const name = OVERLAYS[key];
    if (!name) throw new Error(`qemu-img is not installed and no fixture overlay was made as ${key}`);
    noteOffline();
    const base = manifest().fixtures[name].files[0];
    writeSparse(`${dir}/${base}`, fixtureBytes(base));
    writeSparse(`${dir}/${top}`, fixtureBytes(name));
    return { base: `${dir}/${base}`, top: `${dir}/${top}` };
  }
  const base = `${dir}/b.qcow2`;
  await qemuCreate(base, size);
  await qemuIo(base, ...baseCmds);
  await qemuCreate(`${dir}/${top}`, size, topOpts, base);
  return { base, top: `${dir}/${top}` };
}

/**
 * qemu-io's `read [-P PATTERN] OFFSET LENGTH` done with blkgraph where
 * qemu-io is not installed (the only qemu-io commands the tests verify
 * with): "Pattern verification failed" on a mismatch, as qemu-io prints.
 */
async function readPatterns(path: string, cmds: string[]): Promise<string> {
  noteOffline();
  await using node = await openQcow2(path, {}, true);
  let out = "";
  for (const cmd of cmds) {
    const m = /^read(?: -P (\S+))? (\S+) (\S+)$/.exec(cmd);
    if (!m) throw new Error(`qemu-io is not installed: cannot run '${cmd}' offline`);
    const [off, len] = [sizeBytes(m[2]), sizeBytes(m[3])];
    const buf = new Uint8Array(len);
    await node.pread(off, buf);
    const want = m[1] === undefined ? undefined : Number(m[1]);
    const bad = want === undefined ? -1 : buf.findIndex((b) => b !== want);
    out += bad >= 0
      ? `Pattern verification failed at offset ${off + bad}, ${len - bad} bytes\n`
      : `read ${len}/${len} bytes at offset ${off}\n`;
  }
  return out;
}
