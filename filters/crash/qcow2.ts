/**
 * Crash exploration for qcow2: records a guest workload through the graph
 * `recorder(guest) → qcow2 → recorder(host) → memory`, then explores the
 * host log's crash states with its oracles — structure (our
 * `checkQcow2`, plus `qemu-img check` on a sample), recovery (write into
 * every allocated cluster, close, check again), durability (every byte
 * the guest flushed is still there) and, for the bitmap workloads, bitmaps
 * (a consistent dirty bitmap misses no write).
 *
 * @example
 * ```ts ignore
 * import { exploreQcow2, QCOW2_WORKLOADS } from "./qcow2.ts";
 * const dir = await Deno.makeTempDir();
 * const r = await exploreQcow2(QCOW2_WORKLOADS[0], "ordered", { dir, explore: { maxStates: 50 } });
 * console.log(r.states, r.failures.length);
 * ```
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import { createImage, open } from "../../core/open.ts";
import { checkExitCode, checkQcow2, repairImage } from "../../drivers/qcow2/check.ts";
import "../../drivers/file.ts";
import "../../drivers/memory.ts";
import "../../drivers/qcow2/mod.ts";
import "../../drivers/raw.ts";
import { defineSecret, hasSecret } from "../../core/secrets.ts";
import { getRecorder, type RecordedOp } from "../recorder.ts";
import { capturedBytes, stateNode } from "./_capture.ts";
import { rng } from "./_image.ts";
import {
  bitmapOracle,
  type CrashOracle,
  durabilityOracle,
  type FormatSpec,
  qcow2Dirty,
  qemuImgStructure,
  readGuest,
  recoveryOracle,
} from "./oracles.ts";
import { runCrashExploration, type RunOptions, type RunResult } from "./run.ts";
import { type SnapshotContents, snapshotOracle } from "./_qcow2_snapshots.ts";
import type { CrashWorkload } from "./_qcow2_workloads.ts";

export type { SnapshotContents } from "./_qcow2_snapshots.ts";
export { type CrashWorkload, QCOW2_ENCRYPTED_WORKLOADS, QCOW2_WORKLOADS } from "./_qcow2_workloads.ts";

/** How the qcow2 driver orders its metadata writes. */
export type Qcow2CrashMode = "metadata-sync" | "ordered" | "lazy";

/** The modes every workload is explored in. */
export const QCOW2_MODES: readonly Qcow2CrashMode[] = ["metadata-sync", "ordered", "lazy"];

/** A recorded workload, ready to explore. */
export interface RecordedQcow2 {
  /** Host image bytes before the workload. */
  base: Uint8Array;
  /** Requests qcow2 sent to its file. */
  hostLog: RecordedOp[];
  /** Requests the guest sent to qcow2. */
  guestLog: RecordedOp[];
  /** What the guest saw before the workload. */
  guestBase: Uint8Array;
  /** How to open a state. */
  format: FormatSpec;
  /** Cluster size of the image. */
  clusterSize: number;
  /** The workload's bitmap expectations, if any. */
  bitmaps?: CrashWorkload["bitmaps"];
  /** What each snapshot the workload took must read as. */
  snapshots?: SnapshotContents;
}

/** A deliberately wrong write order (`true`: `l2-before-refblock`). */
export type WrongOrderChoice = boolean | "l2-before-refblock" | "snapshot-l1-after-table";

function openOptions(mode: Qcow2CrashMode, wrongOrder: WrongOrderChoice): Record<string, unknown> {
  const o: Record<string, unknown> = mode === "lazy" ? { "lazy-refcounts": "on" } : { "metadata-mode": mode };
  if (wrongOrder) o["x-wrong-order"] = wrongOrder === true ? "l2-before-refblock" : wrongOrder;
  return o;
}

async function allBytes(node: BlockNode): Promise<Uint8Array> {
  const out = new Uint8Array(node.length);
  if (out.length) await node.pread(0, out);
  return out;
}

/** Creates the workload's image on `host`. */
async function createQcow2(
  host: BlockNode,
  workload: CrashWorkload,
  createOpts: Record<string, string | number | boolean>,
): Promise<void> {
  await createImage(`${workload.name}.qcow2`, "qcow2", workload.size, { options: createOpts, file: host });
}

/** Runs `workload` in `mode` through recorders and returns both logs. */
export async function recordQcow2(
  workload: CrashWorkload,
  mode: Qcow2CrashMode,
  opts: { dir: string; seed?: number; wrongOrder?: WrongOrderChoice; unsafeHost?: boolean },
): Promise<RecordedQcow2> {
  const clusterSize = Number(workload.create?.cluster_size ?? 512);
  const createOpts: Record<string, string | number | boolean> = { cluster_size: clusterSize, ...workload.create };
  if (mode === "lazy") createOpts.lazy_refcounts = "on";
  let guestBase: Uint8Array = new Uint8Array(workload.size);
  if (workload.backing) {
    const path = `${opts.dir}/${workload.name}-backing.raw`;
    await Deno.writeFile(path, workload.backing);
    createOpts.backing_file = path;
    createOpts.backing_fmt = "raw";
    guestBase = workload.backing.slice(0, workload.size);
  }
  for (const [id, data] of Object.entries(workload.secrets ?? {})) if (!hasSecret(id)) defineSecret(id, { data });
  // An unsafe host (cache.no-flush) never passes a flush on: the oracles must notice.
  const host = await open({ driver: "recorder", ...(opts.unsafeHost ? { cache: { "no-flush": true } } : {}), file: { driver: "memory" } });
  let guest: BlockNode | undefined;
  try {
    await createQcow2(host, workload, createOpts);
    if (workload.prepare) await prepareImage(host, workload);
    const base = await allBytes(host);
    if (workload.prepare) guestBase = await readGuest(base, { driver: "qcow2" });
    const hostRec = getRecorder(host);
    hostRec.clear();
    const recording: FormatSpec = { driver: "qcow2", options: { ...openOptions(mode, opts.wrongOrder ?? false), ...workload.open } };
    guest = await open({ driver: "recorder", file: { ...recording.options, driver: "qcow2", file: host } });
    const snapshots = (await workload.run(guest, rng(opts.seed ?? 1))) ?? undefined;
    const guestRec = getRecorder(guest);
    if (workload.closeInLog) {
      // The close belongs to the workload (bitmaps are stored then): its writes are explored too.
      await guest.close();
      guest = undefined;
    }
    const guestLog = [...guestRec.log];
    const hostLog = [...hostRec.log];
    const format: FormatSpec = { driver: "qcow2", options: { ...openOptions(mode, false), ...workload.open } };
    return { base, hostLog, guestLog, guestBase, format, clusterSize, bitmaps: workload.bitmaps, snapshots };
  } finally {
    if (guest) await guest.close();
    else if (!host.closed) await host.close();
  }
}

/** Runs the workload's `prepare` on a copy of the new image and puts the result on `host`. */
async function prepareImage(host: BlockNode, workload: CrashWorkload): Promise<void> {
  const copy = await stateNode(await allBytes(host));
  const image = await open({ driver: "qcow2", file: copy });
  try {
    await workload.prepare!(image);
  } finally {
    await image.close();
  }
  const bytes = capturedBytes(copy)!;
  if (bytes.length > host.length) await host.truncate(bytes.length);
  await host.pwrite(0, bytes);
  await host.flush();
}

/** The first few check messages, errors before leaks. */
function summary(messages: readonly string[]): string {
  const errors = messages.filter((m) => !m.startsWith("Leaked"));
  return [...errors, ...messages.filter((m) => m.startsWith("Leaked"))].slice(0, 3).join("; ");
}

/** Our structure check: clean or leaks only; a dirty image must repair to clean. */
export async function qcow2Structure(bytes: Uint8Array): Promise<string | undefined> {
  const file = await stateNode(bytes);
  try {
    if (qcow2Dirty(bytes)) {
      const r = await repairImage(file);
      if (r.corruptions || r.leaks || r.checkErrors) {
        return `dirty image did not repair to clean: ${r.corruptions} corruptions, ${r.leaks} leaks, ${r.checkErrors} check errors (${
          summary(r.messages)
        })`;
      }
      return undefined;
    }
    const r = await checkQcow2(file);
    const code = checkExitCode(r);
    if (code === 0 || code === 3) return undefined;
    return `checkQcow2: ${r.corruptions} corruptions, ${r.checkErrors} check errors (${summary(r.messages)})`;
  } catch (e) {
    return `checkQcow2 failed: ${e instanceof Error ? e.message : String(e)}`;
  } finally {
    await file.close();
  }
}

/** Options for {@linkcode exploreQcow2}. */
export interface Qcow2ExploreOptions {
  /** Directory for temp files (backing files, qemu-img check states). */
  dir: string;
  /** Workload seed (default 1). */
  seed?: number;
  /** Use a deliberately wrong write order (`true`: `x-wrong-order=l2-before-refblock`). */
  wrongOrder?: WrongOrderChoice;
  /** Drop every flush below qcow2 (`cache.no-flush` on the host recorder), to show the oracles catch it. */
  unsafeHost?: boolean;
  /** Run `qemu-img check` on every n-th state (0 = never; default 0). */
  qemuEvery?: number;
  /** Run the recovery oracle on every n-th state (default 1). */
  recoveryEvery?: number;
  /** Exploration options (seed, sample size, state limit, ...). */
  explore?: RunOptions;
}

/** The oracles for a recorded qcow2 workload. */
export function qcow2Oracles(rec: RecordedQcow2, opts: Qcow2ExploreOptions): CrashOracle[] {
  const oracles: CrashOracle[] = [{ name: "structure", check: (bytes) => qcow2Structure(bytes) }];
  // qemu-img check cannot open an encrypted state without its secret objects; our structure check needs no key.
  const encrypted = rec.format.options?.["encrypt.key-secret"] !== undefined;
  if (opts.qemuEvery && !encrypted) {
    oracles.push({ name: "qemu-img-check", every: opts.qemuEvery, check: (bytes) => qemuImgStructure(bytes, opts.dir) });
  }
  const recovery = recoveryOracle(rec.format, qcow2Structure, rec.clusterSize);
  oracles.push({ ...recovery, every: opts.recoveryEvery ?? 1 });
  oracles.push(durabilityOracle({ guestLog: rec.guestLog, guestBase: rec.guestBase, read: (bytes) => readGuest(bytes, rec.format) }));
  if (rec.bitmaps) {
    oracles.push(bitmapOracle({ format: rec.format, guestLog: rec.guestLog, base: rec.base, guestBase: rec.guestBase, ...rec.bitmaps }));
  }
  if (rec.snapshots) oracles.push(snapshotOracle(rec.format, rec.snapshots));
  return oracles;
}

/** A dedup key per crash point: the guest requests started and finished by then. */
function guestKey(guestLog: readonly RecordedOp[]): (t: number) => string {
  return (t) => {
    let started = 0;
    let done = 0;
    for (const op of guestLog) {
      if (op.submit <= t) started++;
      if (op.complete !== undefined && op.complete <= t) done++;
    }
    return `${started}/${done}`;
  };
}

/** What {@linkcode exploreQcow2} found, with the recording it explored (for reports). */
export interface Qcow2ExploreResult extends RunResult {
  /** The recorded workload: base image, host and guest logs. */
  recorded: RecordedQcow2;
}

/** Records `workload` in `mode` and explores its crash states with all qcow2 oracles. */
export async function exploreQcow2(workload: CrashWorkload, mode: Qcow2CrashMode, opts: Qcow2ExploreOptions): Promise<Qcow2ExploreResult> {
  const rec = await recordQcow2(workload, mode, opts);
  const extraPoints = rec.guestLog.filter((o) => o.op === "flush" && o.complete !== undefined).map((o) => o.complete!);
  const r = await runCrashExploration(rec.base, rec.hostLog, qcow2Oracles(rec, opts), {
    ...opts.explore,
    extraPoints,
    pointKey: guestKey(rec.guestLog),
  });
  return { ...r, recorded: rec };
}
