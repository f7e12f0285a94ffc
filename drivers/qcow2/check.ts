/**
 * qcow2 check and repair, as `qemu-img check [-r leaks|all]` does it: count
 * the references to every host cluster, compare them with the refcounts on
 * disk, report leaks (refcount too high: wasted space) and corruptions
 * (refcount too low, misaligned or out-of-file tables, OFLAG_COPIED wrong),
 * and on request fix them, rebuilding the refcount structure when it is
 * itself broken. Works on the image's *file* node, which must not be open as
 * qcow2 for writing elsewhere.
 *
 * Where this differs from qemu-img 7.2 on purpose: a repair whose rebuild
 * QEMU refuses (it marks the image corrupt and then cannot write the new
 * refcount blocks, "Check failed") is carried out here; `-r` on an image
 * with persistent bitmaps keeps its internal snapshots (qemu-img drops the
 * snapshot table there, because its check-mode open skips snapshots before
 * rewriting the header). Freed clusters are discarded on the file node,
 * which for the `file` driver is a no-op (QEMU punches holes).
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import type { CheckOptions, CheckResult } from "../../core/types.ts";
import { Checker } from "./_checker.ts";
import { type Counters, type Fix, zeroCounters } from "./_check_types.ts";
import { INCOMPAT_CORRUPT, INCOMPAT_DIRTY, readHeaderFrom } from "./header.ts";
import { writeHeaderFields } from "./_header_write.ts";
import type { SnapshotEntry } from "./_tables.ts";

export type { CheckOptions, CheckResult } from "../../core/types.ts";

/**
 * Rewrites the snapshot table with the given entries (QEMU's
 * qcow2_check_fix_snapshot_table); the open qcow2 node provides it, as the
 * new table needs cluster allocation. `oldBytes` is the old table's size.
 */
export type SnapshotTableRewrite = (entries: readonly SnapshotEntry[], oldBytes: number) => Promise<void>;

/** Options of {@linkcode checkQcow2}: the check options and, for repairs, the snapshot table rewrite. */
export interface Qcow2CheckOptions extends CheckOptions {
  /** How to rewrite a repaired snapshot table; without it such repairs stay undone (corruptions). */
  rewriteSnapshots?: SnapshotTableRewrite;
}

/** One pass of QEMU's qcow2_co_check_locked. */
async function checkOnce(
  file: BlockNode,
  fix: Fix,
  say: (line: string) => void,
  repairing: boolean,
  opts: Qcow2CheckOptions,
): Promise<Counters> {
  const h = await readHeaderFrom(file, undefined, { check: true });
  const original = h.incompatibleFeatures;
  const checker = new Checker(file, h, say);
  await checker.readSnapshots(fix); // a table that cannot be read fails the check, as QEMU's
  const snapshotErrors = checker.res.checkErrors;
  const snapshotCorruptions = checker.res.corruptions;
  const snapshotFixed = checker.res.corruptionsFixed;
  checker.res.checkErrors = 0;
  checker.res.corruptions = 0;
  checker.res.corruptionsFixed = 0;
  await checker.checkRefcounts(fix);
  const res = checker.res;
  res.checkErrors += snapshotErrors;
  res.corruptions += snapshotCorruptions;
  res.corruptionsFixed += snapshotFixed;
  if (fix.errors && checker.snapshotFixes && opts.rewriteSnapshots) {
    try {
      await opts.rewriteSnapshots(checker.snapshots, checker.snapshotsSize);
      res.corruptionsFixed += checker.snapshotFixes;
      res.corruptions -= checker.snapshotFixes;
    } catch (e) {
      say(`ERROR failed to update snapshot table: ${e instanceof BlockError ? e.strerror : (e as Error).message}`);
      res.checkErrors++;
    }
  }
  // The corrupt bit may have been set on the way (qcow2_mark_corrupt); a repair
  // that leaves the image consistent clears it and the dirty bit
  // (qcow2_mark_clean, qcow2_mark_consistent).
  let bits = h.incompatibleFeatures;
  if (repairing && res.checkErrors === 0 && res.corruptions === 0) bits &= ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT);
  if (bits !== original && h.version === 3 && !file.readOnly) {
    await file.flush();
    await writeHeaderFields(file, { ...h, incompatibleFeatures: bits }, ["incompatibleFeatures"]);
  }
  return res;
}

/**
 * Checks a qcow2 image's metadata, optionally repairing it. After a repair
 * that fixed something, the image is checked again and that second result
 * is returned with the fixed counts (as qemu-img does).
 *
 * @example
 * ```ts
 * import { createImage, open } from "@blkgraph/blkgraph";
 * import { checkExitCode, checkQcow2 } from "./check.ts";
 * const path = await Deno.makeTempFile({ suffix: ".qcow2" });
 * await createImage(path, "qcow2", 1 << 20);
 * {
 *   await using file = await open({ driver: "file", filename: path }, { readOnly: true });
 *   const result = await checkQcow2(file, {});
 *   console.log(checkExitCode(result)); // 0
 * }
 * await Deno.remove(path);
 * ```
 */
export async function checkQcow2(file: BlockNode, opts: Qcow2CheckOptions = {}): Promise<CheckResult> {
  const fix: Fix = { leaks: opts.repair !== undefined, errors: opts.repair === "all" };
  if (opts.repair && file.readOnly) {
    throw new BlockError("EROFS", `Cannot repair node '${file.name}': it is opened read-only`, { node: file.name });
  }
  // Lines go to `onMessage` as they come (a damaged image can give millions); without it they are collected.
  const messages: string[] = [];
  const say = opts.onMessage ?? ((line: string) => void messages.push(line));
  const repairing = opts.repair !== undefined;
  // The checker writes the file as the qcow2 driver would (a repair may add refcount blocks past its end).
  const allowed = file.allowBeyondEof;
  file.allowBeyondEof = true;
  try {
    return await checkWith(file, fix, say, messages, repairing, opts);
  } finally {
    file.allowBeyondEof = allowed;
  }
}

async function checkWith(
  file: BlockNode,
  fix: Fix,
  say: (line: string) => void,
  messages: string[],
  repairing: boolean,
  opts: Qcow2CheckOptions,
): Promise<CheckResult> {
  let res = await checkOnce(file, fix, say, repairing, opts);
  if (res.leaksFixed || res.corruptionsFixed) {
    const fixedLeaks = res.leaksFixed;
    const fixedCorruptions = res.corruptionsFixed;
    // The double check also clears the corrupt bit when the repair worked.
    res = await checkOnce(file, { leaks: false, errors: false }, say, repairing, opts);
    res.leaksFixed = fixedLeaks;
    res.corruptionsFixed = fixedCorruptions;
  }
  return { ...zeroCounters(), ...res, messages };
}

/**
 * Repairs everything that can be repaired (`qemu-img check -r all`): what
 * opening a dirty image (lazy refcounts) needs. Clears the dirty and corrupt
 * bits when the image ends up consistent. `onMessage` receives the check's
 * lines as they come (else they are in the result's `messages`).
 *
 * @example
 * ```ts
 * import { createImage, open } from "@blkgraph/blkgraph";
 * import { repairImage } from "./check.ts";
 * const path = await Deno.makeTempFile({ suffix: ".qcow2" });
 * await createImage(path, "qcow2", 1 << 20);
 * {
 *   await using file = await open({ driver: "file", filename: path });
 *   const result = await repairImage(file);
 *   console.log(result.corruptions); // 0
 * }
 * await Deno.remove(path);
 * ```
 */
export function repairImage(file: BlockNode, onMessage?: (line: string) => void): Promise<CheckResult> {
  return checkQcow2(file, { repair: "all", onMessage });
}

/**
 * qemu-img check's exit code for a result: 0 clean, 1 check errors,
 * 2 corruptions, 3 leaks only.
 *
 * @example
 * ```ts
 * import { checkExitCode } from "./check.ts";
 * console.log(checkExitCode({ corruptions: 0, leaks: 2, checkErrors: 0 })); // 3
 * ```
 */
export function checkExitCode(result: Pick<CheckResult, "corruptions" | "leaks" | "checkErrors">): number {
  if (result.checkErrors) return 1;
  if (result.corruptions) return 2;
  if (result.leaks) return 3;
  return 0;
}
