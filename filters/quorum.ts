/**
 * The `quorum` driver (QEMU's block/quorum.c): one node over several
 * children holding the same data, for replication and for catching silent
 * corruption.
 *
 * - Options: `children` (a list of node specs or node names; `children.0`,
 *   `children.1`, ... as dotted options), `vote-threshold` (required,
 *   1..number of children), `blkverify` (two children, threshold 2: any
 *   difference fails the read with where it is), `rewrite-corrupted`
 *   (outvoted children get the winning data written back), `read-pattern`
 *   (`quorum`, the default, or `fifo`). Errors are QEMU's words
 *   ("Parameter 'vote-threshold' expects a value >= 1", "threshold may not
 *   exceed children count", ...). As in QEMU, `fifo` ignores `blkverify`
 *   and `rewrite-corrupted`.
 * - Reads (`quorum`): every child is read; when they all agree that is the
 *   data, otherwise the version most children returned wins if at least
 *   `vote-threshold` did, else the read fails with EIO. With `fifo` the
 *   first child is read, then the next one on error.
 * - Writes and write-zeroes go to every child and succeed when at least
 *   `vote-threshold` children succeed (else the error most children gave);
 *   flushes likewise. Discard does nothing (QEMU 7.2's quorum has none, and
 *   an unsupported discard succeeds); there is no resize; block status says
 *   all data. The children must have the same length (EIO otherwise).
 * - Listeners get `quorum-report-bad` (a child failed, or its data lost the
 *   vote) and `quorum-failure` (no quorum) events, QEMU's QUORUM_REPORT_BAD
 *   and QUORUM_FAILURE.
 * - Its name is `json:{...}` with the children as a list, and it has no
 *   directory (relative backing file names under it cannot be resolved).
 *
 * @example
 * ```ts
 * import { open } from "../mod.ts";
 * await using q = await open({
 *   driver: "quorum",
 *   "vote-threshold": 2,
 *   children: [{ driver: "memory", size: 65536 }, { driver: "memory", size: 65536 }, { driver: "memory", size: 65536 }],
 * });
 * await q.pwrite(0, new Uint8Array(512).fill(7));
 * const buf = new Uint8Array(512);
 * await q.pread(0, buf);
 * console.log(buf[0], q.children.size); // 7 3
 * ```
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import type { BlockDriver, BlockNode, DriverInstance, OpenContext } from "../core/node.ts";
import { checkKnownOptions, optBool, optString } from "../core/options.ts";
import { registerDriver } from "../core/registry.ts";
import { QuorumInstance, type QuorumReadPattern } from "./_quorum_io.ts";

const QUORUM_OPTIONS: readonly string[] = ["vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern"];

/** The child specs given as `children`: a list, or an object numbered from 0 (dotted options). */
function childSpecs(given: unknown): unknown[] {
  if (given === undefined || given === null) return [];
  if (Array.isArray(given)) return given;
  if (typeof given === "object") {
    const keys = Object.keys(given);
    if (keys.every((k, i) => k === String(i)) || keys.sort((a, b) => Number(a) - Number(b)).every((k, i) => k === String(i))) {
      return keys.map((k) => (given as Record<string, unknown>)[k]);
    }
  }
  throw new BlockError("EINVAL", `Option children is not a valid array: ${JSON.stringify(given)}`, {
    qemuMessage: "Option children is not a valid array",
  });
}

function invalid(message: string): BlockError {
  return new BlockError("EINVAL", message);
}

function voteThreshold(v: unknown, children: number): number {
  let n = 0;
  if (v !== undefined && v !== null) {
    n = typeof v === "number" ? v : typeof v === "string" && /^\s*-?\d+\s*$/.test(v) ? Number(v) : NaN;
    if (!Number.isInteger(n)) throw invalid(`Parameter 'vote-threshold' expects a number`);
  }
  if (n < 1) throw invalid(`Parameter 'vote-threshold' expects a value >= 1`);
  if (n > children) throw invalid(`threshold may not exceed children count`);
  return n;
}

async function openQuorum(ctx: OpenContext): Promise<DriverInstance> {
  const o = ctx.options;
  const specs = childSpecs(ctx.childSpec?.("children"));
  if (specs.length < 1) throw invalid("Number of provided children must be 1 or more");
  checkKnownOptions(o, QUORUM_OPTIONS, "quorum");
  const blkverifyOpt = optBool(o, "blkverify", "quorum") ?? false;
  const rewriteOpt = optBool(o, "rewrite-corrupted", "quorum") ?? false;
  const threshold = voteThreshold(o["vote-threshold"], specs.length);
  const pattern = optString(o, "read-pattern", "quorum") ?? "quorum";
  if (pattern !== "quorum" && pattern !== "fifo") throw invalid("Please set read-pattern as fifo or quorum");
  const readPattern: QuorumReadPattern = pattern;
  const blkverify = readPattern === "quorum" && blkverifyOpt;
  const rewriteCorrupted = readPattern === "quorum" && rewriteOpt;
  if (blkverify && (specs.length !== 2 || threshold !== 2)) {
    throw invalid("blkverify=on can only be set if there are exactly two files and vote-threshold is 2");
  }
  if (rewriteCorrupted && blkverify) throw invalid("rewrite-corrupted=on cannot be used with blkverify=on");
  const children: BlockNode[] = [];
  for (let i = 0; i < specs.length; i++) children.push((await ctx.openChild(`children.${i}`, specs[i]))!);
  const inst = new QuorumInstance(ctx.node, { children, threshold, blkverify, rewriteCorrupted, readPattern });
  try {
    inst.getLength();
  } catch (e) {
    // QEMU fails the open when it first asks for the length.
    throw new BlockError("EIO", (e as Error).message, {
      node: ctx.node.name,
      cause: e,
      qemuMessage: "Could not refresh total sector count: Input/output error",
    });
  }
  return inst;
}

/** The quorum driver. */
export const quorumDriver: BlockDriver = {
  name: "quorum",
  // Not a filter: no child is primary, so nothing passes through to one.
  kind: "format",
  options: QUORUM_OPTIONS,
  childKeys: ["children"],
  strongOptions: QUORUM_OPTIONS,
  // QEMU's quorum_dirname: the children may lie in different directories.
  dirname: () => {
    throw new BlockError("EINVAL", "Cannot generate a base directory for quorum nodes");
  },
  open: openQuorum,
};

registerDriver(quorumDriver);
