/**
 * Images for the qcow2 tests, made by QEMU either way: where qemu-img and
 * qemu-io are installed, a test makes its image live with them (the
 * differential run); where they are not, it unpacks the fixture that
 * tests/testdata/make.sh made with the same commands, and compares with the
 * answers recorded in its manifest. So the read, check, map and info tests
 * run offline too, still against what QEMU wrote and said.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { BlockNode } from "../../../mod.ts";
import { digestNode, execLine, firstDiffMiB, fixture, hasQemu, inDir, type QemuRun, recordedRun, unpack } from "../../_helpers/fixtures.ts";
import { firstDiff, readAll, toRaw } from "./_util.ts";

/** An image made by QEMU for a test. */
export interface QemuImage {
  /** The image's path. */
  path: string;
  /** The fixture that stands for it offline (make.sh made it with the same commands). */
  fixture: string;
  /** True where QEMU made it in this run; false where it is the unpacked fixture. */
  live: boolean;
}

/**
 * Makes `dir/<fixture>` with `make` where QEMU is installed, else unpacks
 * fixture `fixture` (and the files it needs) into `dir`. `make` gets the
 * path to create and must run the commands make.sh records for the fixture.
 */
export async function qemuImage(dir: string, name: string, make: (path: string) => Promise<void>): Promise<QemuImage> {
  if (!hasQemu()) return { path: unpack(dir, name), fixture: name, live: false };
  const path = `${dir}/${name}`;
  await make(path);
  return { path, fixture: name, live: true };
}

/**
 * Asserts that `node` reads as qemu-img convert -O raw reads the image: byte
 * for byte against a live conversion, or MiB by MiB against the recorded
 * sha256 of each MiB offline.
 */
export async function assertReadsLikeQemu(node: BlockNode, img: QemuImage): Promise<void> {
  if (img.live) {
    const raw = `${img.path}.expect.raw`;
    await toRaw(img.path, raw);
    const expect = await Deno.readFile(raw);
    await Deno.remove(raw);
    const got = await readAll(node);
    assert.equal(got.length, expect.length);
    assert.equal(firstDiff(got, expect), -1, "first byte that differs from qemu-img convert's");
    return;
  }
  const want = fixture(img.fixture).raw;
  assert.ok(want, `fixture ${img.fixture}: qemu-img convert failed on it when it was recorded`);
  assert.equal(node.length, fixture(img.fixture).virtualSize);
  assert.equal(firstDiffMiB(await digestNode(node), want), -1, "first MiB that differs from the recorded qemu-img convert");
}

/**
 * What QEMU says for a command line as make.sh records it (`check -r all
 * @IMG@`, ...; `@IMG@` is the image): run live on `img` where QEMU made
 * it (a repair changes it), else the run recorded for its fixture, with
 * `@DIR@` made `img`'s directory.
 */
export async function qemuRun(img: QemuImage, line: string): Promise<QemuRun> {
  const dir = img.path.slice(0, img.path.lastIndexOf("/"));
  if (img.live) return await execLine(line, img.path, dir);
  const r = recordedRun(img.fixture, line);
  return { ...r, stdout: inDir(r.stdout, dir), stderr: inDir(r.stderr, dir) };
}
