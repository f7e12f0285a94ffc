/**
 * `blkgraph check`: qemu-img check's output and exit codes (0 clean, 1 check
 * failed, 2 corrupt, 3 leaks only, 63 format without checks). A qcow2 image
 * is checked on its file node, so even an image too damaged to open as
 * qcow2 can be checked and repaired.
 *
 * @module
 */

import { open } from "../core/open.ts";
import { probeFormat } from "../core/registry.ts";
import { looksDotted } from "../core/spec.ts";
import type { BlockNode } from "../core/node.ts";
import { checkExitCode, checkQcow2, checkResultJson, formatCheckHuman } from "../drivers/qcow2/check.ts";
import {
  checkOutputFormat,
  CliError,
  type CliIO,
  flagString,
  formatNode,
  IMAGE_FLAGS,
  imageArgs,
  needPositionals,
  openImage,
  parseVerbArgs,
  protocolNode,
  type Verb,
} from "./_common.ts";
import { qemuJson } from "./info.ts";

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

/** Opens the node a check runs on: the qcow2 image's file node, or the format node of anything else. */
async function openForCheck(
  filename: string,
  format: string | undefined,
  imageOpts: boolean,
  writable: boolean,
): Promise<{ top: BlockNode; file: BlockNode; format: string }> {
  if (imageOpts || looksDotted(filename) || filename.startsWith("json:")) {
    const top = await openImage(filename, { imageOpts, readOnly: !writable });
    const fmt = formatNode(top);
    return { top, file: protocolNode(fmt), format: fmt.driver.name };
  }
  let file: BlockNode;
  try {
    file = await open({ driver: "file", filename }, { readOnly: !writable });
  } catch (e) {
    throw new CliError(`Could not open '${filename}': ${(e as Error).message}`);
  }
  if (!format) {
    const head = new Uint8Array(Math.min(2048, file.length));
    await file.pread(0, head);
    // The qcow2 magic "QFI\xfb" is recognised even before a qcow2 driver is registered.
    const magic = head.length >= 4 && head[0] === 0x51 && head[1] === 0x46 && head[2] === 0x49 && head[3] === 0xfb;
    format = magic ? "qcow2" : probeFormat(head, filename).name;
  }
  return { top: file, file, format };
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
  const args0 = imageArgs(p.values, repair === undefined);
  const { top, file, format } = await openForCheck(filename, args0.format, args0.imageOpts ?? false, repair !== undefined);
  try {
    if (format !== "qcow2") throw new CliError("This image format does not support checks", 63);
    const result = await checkQcow2(file, { repair });
    for (const m of result.messages) io.stderr(m.endsWith("\n") ? m : m + "\n");
    const code = checkExitCode(result);
    if (flagString(p.values, "output") === "json") io.stdout(qemuJson(qemuOrder(checkResultJson(result, filename))) + "\n");
    else if (p.values.quiet !== true) io.stdout(formatCheckHuman(result, filename));
    return code;
  } finally {
    await top.close();
  }
}

/** The `check` verb. */
export const checkVerb: Verb = { name: "check", summary: "check an image for consistency", run };
