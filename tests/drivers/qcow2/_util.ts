/**
 * Helpers for the qcow2 driver tests: images made with qemu-img, a reference
 * raw file kept in step with the operations, and comparisons through
 * qemu-img (the oracle).
 *
 * @module
 */

import assert from "node:assert/strict";
import { type BlockNode, open } from "../../../mod.ts";
import { qemuCheck, run, runOk } from "../../_helpers/qemu.ts";

/** Opens a qcow2 image file read-write (or read-only) with extra qcow2 options. */
export function openQcow2(path: string, opts: Record<string, unknown> = {}, readOnly = false): Promise<BlockNode> {
  return open({ driver: "qcow2", ...opts, file: { driver: "file", filename: path } }, { readOnly });
}

/** Creates a qcow2 image with qemu-img (`-o` options as one string, optional backing). */
export async function qemuCreate(path: string, size: number | string, o = "", backing?: string, backingFmt = "qcow2"): Promise<void> {
  const args = ["create", "-q", "-f", "qcow2"];
  if (o) args.push("-o", o);
  if (backing) args.push("-b", backing, "-F", backingFmt);
  args.push(path, String(size));
  await runOk("qemu-img", args);
}

/** Runs qemu-io commands on an image and returns stdout. */
export async function qemuIo(path: string, ...cmds: string[]): Promise<string> {
  const args: string[] = [];
  for (const c of cmds) args.push("-c", c);
  return (await runOk("qemu-io", [...args, path])).stdout;
}

/** Asserts `qemu-img check` finds the image clean (exit 0: no corruption, no leaks). */
export async function assertClean(path: string): Promise<void> {
  const r = await qemuCheck(path);
  assert.equal(r.code, 0, `qemu-img check ${path}: ${JSON.stringify(r.json)}`);
}

/** Asserts `qemu-img compare` finds the qcow2 image identical to a raw file. */
export async function assertSameAsRaw(path: string, raw: string): Promise<void> {
  const r = await run("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", path, raw]);
  assert.equal(r.code, 0, `qemu-img compare: ${r.stdout}${r.stderr}`);
}

/** Converts an image to raw with qemu-img. */
export async function toRaw(path: string, raw: string): Promise<void> {
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
  const base = `${dir}/b.qcow2`;
  await qemuCreate(base, size);
  await qemuIo(base, ...baseCmds);
  await qemuCreate(`${dir}/${top}`, size, topOpts, base);
  return { base, top: `${dir}/${top}` };
}
