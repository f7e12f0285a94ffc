/**
 * Helpers for the luks tests: QEMU's tools on luks images (with the
 * `--object secret` arguments they need), and opening images through
 * blkgraph with a test secret.
 *
 * @module
 */

import type { BlockNode } from "../../../core/node.ts";
import { createImage, open } from "../../../core/open.ts";
import { defineSecret, hasSecret, removeSecret } from "../../../core/secrets.ts";
import "../../../mod.ts";
import { run, runOk, type RunResult } from "../../_helpers/qemu.ts";

/** The passphrase of secret `sec0` in every test. */
export const PASS0 = "hunter0";
/** The passphrase of secret `sec1`. */
export const PASS1 = "hunter1";

/** Defines `sec0`/`sec1` (and `secN` for each extra passphrase) once per process. */
export function testSecrets(): void {
  for (const [id, data] of [["sec0", PASS0], ["sec1", PASS1], ["sec2", "hunter2"], ["sec3", "hunter3"], ["bad", "wrong"]]) {
    if (!hasSecret(id)) defineSecret(id, { data });
  }
}

/** Forgets the test secrets (before running the CLI in-process, whose `--object` defines them itself). */
export function dropTestSecrets(): void {
  for (const id of ["sec0", "sec1", "sec2", "sec3", "bad"]) removeSecret(id);
}

/** `--object` arguments for QEMU's tools with the same secrets. */
export const QEMU_SECRETS = [
  "--object",
  `secret,id=sec0,data=${PASS0}`,
  "--object",
  `secret,id=sec1,data=${PASS1}`,
  "--object",
  "secret,id=sec2,data=hunter2",
  "--object",
  "secret,id=sec3,data=hunter3",
  "--object",
  "secret,id=bad,data=wrong",
];

/** `--image-opts` spec of a luks image for QEMU's tools. */
export function qemuSpec(path: string, secret = "sec0"): string {
  return `driver=luks,key-secret=${secret},file.filename=${path}`;
}

/**
 * Runs a qemu-img command that creates LUKS key slots (create, convert,
 * amend), retrying when QEMU's PBKDF calibration trips over a coarse thread
 * CPU clock ("Unable to get accurate CPU usage", seen on virtual machines).
 */
export async function qemuImgKeyslots(args: string[]): Promise<RunResult> {
  for (let attempt = 0;; attempt++) {
    const r = await run("qemu-img", args);
    if (r.code === 0 || !r.stderr.includes("Unable to get accurate CPU usage") || attempt >= 8) return r;
  }
}

/** `qemu-img create -f luks` with `options` (iter-time=10 unless given). */
export async function qemuCreateLuks(path: string, size: number | string, options = ""): Promise<void> {
  const o = ["key-secret=sec0", ...(options.includes("iter-time") ? [] : ["iter-time=10"]), ...(options ? [options] : [])].join(",");
  const r = await qemuImgKeyslots(["create", "-q", "-f", "luks", ...QEMU_SECRETS, "-o", o, path, String(size)]);
  if (r.code !== 0) throw new Error(`qemu-img create -f luks -o ${o} failed: ${r.stderr}`);
}

/** Runs qemu-io commands on a luks image; returns stdout and stderr together. */
export async function qemuIoLuks(path: string, secret: string, ...cmds: string[]): Promise<string> {
  const r = await run("qemu-io", [...QEMU_SECRETS, "--image-opts", qemuSpec(path, secret), ...cmds.flatMap((c) => ["-c", c])]);
  return r.stdout + r.stderr;
}

/** Runs qemu-io and fails on pattern mismatches or errors. */
export async function qemuIoOk(path: string, ...cmds: string[]): Promise<string> {
  const out = await qemuIoLuks(path, "sec0", ...cmds);
  if (/Pattern verification failed|can't open|error|failed/i.test(out)) throw new Error(`qemu-io ${cmds.join("; ")}:\n${out}`);
  return out;
}

/** Opens a luks image through blkgraph with secret `secret`. */
export async function openLuks(path: string, secret = "sec0", readOnly = false): Promise<BlockNode> {
  testSecrets();
  return await open({ driver: "luks", "key-secret": secret, file: { driver: "file", filename: path } }, { readOnly });
}

/** Creates a luks image through blkgraph (iter-time 10 unless given). */
export async function createLuks(path: string, size: number, options: Record<string, string | number> = {}): Promise<void> {
  testSecrets();
  await createImage(path, "luks", size, { options: { "key-secret": "sec0", "iter-time": 10, ...options } });
}

/** `cryptsetup luksDump` as text. */
export async function luksDump(path: string): Promise<string> {
  return (await runOk("cryptsetup", ["luksDump", path])).stdout;
}

/** `cryptsetup open --type luks1 --test-passphrase` with `pass` on stdin; its exit code. */
export async function cryptsetupTest(path: string, pass: string): Promise<number> {
  return (await run("cryptsetup", ["open", "--type", "luks1", "--test-passphrase", "--key-file=-", path], { stdin: pass })).code;
}

/** Deterministic pseudo-random bytes (a pattern qemu-io cannot make, so both tools' reads are compared byte for byte). */
export function noise(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Asserts two byte arrays are equal, naming the first difference (node:assert's diff of megabytes takes minutes). */
export function assertSameBytes(actual: Uint8Array, expected: Uint8Array, what = "bytes"): void {
  if (actual.length !== expected.length) throw new Error(`${what}: length ${actual.length}, expected ${expected.length}`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      throw new Error(
        `${what}: byte ${i} (sector ${Math.floor(i / 512)}) is 0x${actual[i].toString(16)}, expected 0x${expected[i].toString(16)}`,
      );
    }
  }
}
