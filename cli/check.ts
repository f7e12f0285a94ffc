/**
 * `blkgraph check`: qemu-img check's output and exit codes (0 clean, 1 check
 * failed, 2 corrupt, 3 leaks only, 63 format without checks). A qcow2 image
 * is checked on its file node, so even an image too damaged to open as
 * qcow2 can be checked and repaired.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import type { CheckResult } from "../core/types.ts";
import { checkExitCode } from "../drivers/qcow2/check.ts";
import {
  cFixed,
  checkOutputFormat,
  CliError,
  type CliIO,
  flagString,
  IMAGE_FLAGS,
  imageArgs,
  needPositionals,
  openImage,
  parseVerbArgs,
  progName,
  type Verb,
} from "./_common.ts";
import { qemuJson } from "./info.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph check [-f fmt] [-r leaks|all] [--output=human|json] [-q] [-U] [--image-opts] filename

Checks an image for consistency (qcow2). Exit codes as qemu-img: 0 no
errors, 1 check not completed, 2 corruptions, 3 leaked clusters only,
63 the format does not support checks.
`;

/** Key order of qemu-img 7.2's `check --output=json` (its QDict's iteration order). */
const JSON_ORDER = [
  "image-end-offset",
  "compressed-clusters",
  "total-clusters",
  "corruptions",
  "corruptions-fixed",
  "check-errors",
  "leaks",
  "leaks-fixed",
  "allocated-clusters",
  "filename",
  "format",
  "fragmented-clusters",
];

function qemuOrder(o: Record<string, string | number>): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  for (const k of JSON_ORDER) if (k in o) out[k] = o[k];
  for (const k of Object.keys(o)) if (!(k in out)) out[k] = o[k];
  return out;
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(args, { ...IMAGE_FLAGS, output: { type: "string" }, repair: { type: "string", short: "r" } }, USAGE, io);
  if (!p) return 0;
  checkOutputFormat(p.values);
  needPositionals(p.positionals, 1, 1, "filename");
  const repair = flagString(p.values, "repair");
  if (repair !== undefined && repair !== "leaks" && repair !== "all") {
    throw new CliError(`Unknown option value for -r (expecting 'leaks' or 'all'): ${repair}`);
  }
  const filename = p.positionals[0];
  // The check runs on the graph as named, filters included (qemu-img check's BDRV_O_CHECK open).
  const top = await openImage(filename, { ...imageArgs(p.values, repair === undefined), check: true });
  try {
    let result;
    try {
      result = await top.check({ repair, onMessage: (m) => io.stderr(m.endsWith("\n") ? m : m + "\n") });
    } catch (e) {
      if (e instanceof BlockError && e.code === "ENOTSUP") throw new CliError("This image format does not support checks", 63);
      // A check that fails says why, then "Check failed: <strerror>" (qemu-img's img_check), exit code 1.
      if (e instanceof BlockError) {
        io.stderr(`${progName(io)}: ${e.message}\n`);
        throw new CliError(`Check failed: ${e.strerror}`);
      }
      throw e;
    }
    const code = checkExitCode(result);
    if (flagString(p.values, "output") === "json") {
      io.stdout(qemuJson(qemuOrder(checkResultJson(result, filename, top.formatName))) + "\n");
    } else if (p.values.quiet !== true) io.stdout(formatCheckHuman(result, filename));
    return code;
  } finally {
    await top.close();
  }
}

/**
 * Formats a result as `qemu-img check` prints it (stdout part), including
 * the repair summary when something was fixed.
 *
 * @example
 * ```ts
 * import { formatCheckHuman } from "./check.ts";
 * const text = formatCheckHuman({
 *   corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0,
 *   imageEndOffset: 262144, totalClusters: 16, allocatedClusters: 0,
 *   fragmentedClusters: 0, compressedClusters: 0, messages: [],
 * }, "disk.qcow2");
 * console.log(text); // No errors were found on the image.\nImage end offset: 262144\n
 * ```
 */
export function formatCheckHuman(result: CheckResult, _filename: string): string {
  let out = "";
  if (result.corruptionsFixed || result.leaksFixed) {
    out += "The following inconsistencies were found and repaired:\n\n" +
      `    ${result.leaksFixed} leaked clusters\n` +
      `    ${result.corruptionsFixed} corruptions\n\n` +
      "Double checking the fixed image now...\n";
  }
  if (!(result.corruptions || result.leaks || result.checkErrors)) {
    out += "No errors were found on the image.\n";
  } else {
    if (result.corruptions) {
      out += `\n${result.corruptions} errors were found on the image.\n` +
        "Data may be corrupted, or further writes to the image may corrupt it.\n";
    }
    if (result.leaks) {
      out += `\n${result.leaks} leaked clusters were found on the image.\n` +
        "This means waste of disk space, but no harm to data.\n";
    }
    if (result.checkErrors) out += `\n${result.checkErrors} internal errors have occurred during the check.\n`;
  }
  if (result.totalClusters !== 0 && result.allocatedClusters !== 0) {
    const a = result.allocatedClusters;
    // printf's %.2f: an exact tie rounds to even (2/64 = 3.125 is "3.12"), as qemu-img prints.
    out += `${a}/${result.totalClusters} = ${cFixed(a * 100 / result.totalClusters, 2)}% allocated, ` +
      `${cFixed(result.fragmentedClusters * 100 / a, 2)}% fragmented, ` +
      `${cFixed(result.compressedClusters * 100 / a, 2)}% compressed clusters\n`;
  }
  if (result.imageEndOffset) out += `Image end offset: ${result.imageEndOffset}\n`;
  return out;
}

/**
 * The result as `qemu-img check --output=json` prints it (zero counters left
 * out, as qemu-img does).
 *
 * @example
 * ```ts
 * import { checkResultJson } from "./check.ts";
 * const json = checkResultJson({
 *   corruptions: 0, leaks: 1, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0,
 *   imageEndOffset: 262144, totalClusters: 16, allocatedClusters: 0,
 *   fragmentedClusters: 0, compressedClusters: 0, messages: [],
 * }, "disk.qcow2");
 * console.log(json.leaks); // 1
 * ```
 */
export function checkResultJson(result: CheckResult, filename: string, format = "qcow2"): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  const put = (key: string, v: number) => {
    if (v) out[key] = v;
  };
  put("image-end-offset", result.imageEndOffset);
  put("total-clusters", result.totalClusters);
  put("allocated-clusters", result.allocatedClusters);
  put("fragmented-clusters", result.fragmentedClusters);
  put("compressed-clusters", result.compressedClusters);
  out["check-errors"] = result.checkErrors;
  put("leaks", result.leaks);
  put("leaks-fixed", result.leaksFixed);
  put("corruptions", result.corruptions);
  put("corruptions-fixed", result.corruptionsFixed);
  out.filename = filename;
  out.format = format;
  return out;
}

/** The `check` verb. */
export const checkVerb: Verb = { name: "check", summary: VERB_SUMMARIES.check, run };
