/**
 * `blkgraph info`: what `qemu-img info` prints, in human or JSON form, with
 * the same field names, shapes and key order as qemu-img 7.2.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import type { BlockNode } from "../core/node.ts";
import { absoluteFilename, refreshFilename } from "../core/_filename.ts";
import { looksDotted } from "../core/spec.ts";
import { formatSnapshotTable, readSnapshots, type SnapshotInfo } from "./_snapshots.ts";
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
  sizeToStr,
  type Verb,
} from "./_common.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph info [-f fmt] [--output=human|json] [--backing-chain] [--image-opts] [-U] filename

Prints what qemu-img info prints: format, virtual and disk size, backing
file and format-specific information.
`;

/** One image's information, keyed as qemu-img's ImageInfo. */
export type ImageInfo = Record<string, unknown>;

/** Gathers qemu-img-info fields for an open node (`filename` as the user named it). */
export async function imageInfo(top: BlockNode, filename: string): Promise<ImageInfo> {
  const node = formatNode(top);
  const extra = await node.info();
  const out: ImageInfo = {};
  const snapshots = await readSnapshots(node);
  if (snapshots.length) out.snapshots = snapshots;
  const backingName = str(extra["backing-filename"]) ?? str(extra.backingFile) ?? str(extra["backing_file"]);
  const backingFmt = str(extra["backing-filename-format"]) ?? str(extra.backingFormat);
  if (backingName !== undefined && backingFmt !== undefined) out["backing-filename-format"] = backingFmt;
  out["virtual-size"] = node.length;
  out.filename = filename;
  const clusterSize = num(extra["cluster-size"]) ?? num(extra.clusterSize);
  if (clusterSize !== undefined) out["cluster-size"] = clusterSize;
  out.format = node.driver.name;
  // QEMU's bdrv_get_allocated_file_size: the image file's allocated blocks (with an external data file's).
  const actual = await node.allocatedSize();
  if (actual !== undefined) out["actual-size"] = actual;
  const fs = formatSpecific(node.driver.name, extra);
  if (fs) out["format-specific"] = fs;
  const fullBacking = backingName === undefined ? undefined : str(extra["full-backing-filename"]) ?? fullBackingName(node, backingName);
  if (fullBacking !== undefined) out["full-backing-filename"] = fullBacking;
  // qemu-img's key order (a QDict's): encrypted sits between the two backing names.
  if (extra.encrypted === true) out.encrypted = true;
  if (backingName !== undefined) out["backing-filename"] = backingName;
  out["dirty-flag"] = extra["dirty-flag"] === true || extra.dirty === true;
  return out;
}

function str(v: unknown): string | undefined {
  return typeof v === "string" ? v : undefined;
}

function num(v: unknown): number | undefined {
  return typeof v === "number" ? v : undefined;
}

function formatSpecific(format: string, extra: Record<string, unknown>): Record<string, unknown> | undefined {
  const fs = extra["format-specific"];
  if (fs && typeof fs === "object") return fs as Record<string, unknown>;
  if (extra.data && typeof extra.data === "object" && typeof extra.type === "string") return { type: extra.type, data: extra.data };
  return format === "qcow2" && "compat" in extra ? { type: format, data: extra } : undefined;
}

/** The backing file's path as QEMU's bdrv_get_full_backing_filename makes it; undefined when the image has no directory (over quorum). */
function fullBackingName(node: BlockNode, backing: string): string | undefined {
  try {
    return absoluteFilename(node, backing);
  } catch (e) {
    if (e instanceof BlockError) return undefined;
    throw e;
  }
}

/** Formats one image's information as qemu-img's human output. */
export function formatInfoHuman(info: ImageInfo): string {
  const lines = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${sizeToStr(info["virtual-size"] as number)} (${info["virtual-size"]} bytes)`,
    `disk size: ${info["actual-size"] === undefined ? "unavailable" : sizeToStr(info["actual-size"] as number)}`,
  ];
  if (info.encrypted === true) lines.push("encrypted: yes");
  if (info["cluster-size"] !== undefined) lines.push(`cluster_size: ${info["cluster-size"]}`);
  if (info["dirty-flag"] === true) lines.push("cleanly shut down: no");
  if (info["backing-filename"] !== undefined) {
    const b = info["backing-filename"];
    const full = info["full-backing-filename"];
    const actual = full === undefined ? " (cannot determine actual path)" : full !== b ? ` (actual path: ${full})` : "";
    lines.push(`backing file: ${b}${actual}`);
    if (info["backing-filename-format"] !== undefined) lines.push(`backing file format: ${info["backing-filename-format"]}`);
  }
  const snaps = info.snapshots as SnapshotInfo[] | undefined;
  if (snaps?.length) lines.push("Snapshot list:", ...formatSnapshotTable(snaps).trimEnd().split("\n"));
  const fs = info["format-specific"] as { data?: unknown } | undefined;
  if (fs?.data && typeof fs.data === "object") {
    lines.push("Format specific information:");
    dumpHuman(fs.data as Record<string, unknown>, 1, lines);
  }
  return lines.join("\n") + "\n";
}

/** qemu's QObject dump: keys with '-' shown as spaces, nested values indented by 4. */
export function dumpHuman(obj: Record<string, unknown> | unknown[], depth: number, lines: string[]): void {
  const pad = "    ".repeat(depth);
  const entries: [string, unknown][] = Array.isArray(obj) ? obj.map((v, i) => [`[${i}]`, v]) : Object.entries(obj);
  for (const [k, v] of entries) {
    const key = k.replaceAll("-", " ");
    if (v !== null && typeof v === "object") {
      lines.push(`${pad}${key}:`);
      dumpHuman(v as Record<string, unknown>, depth + 1, lines);
    } else {
      lines.push(`${pad}${key}: ${v}`);
    }
  }
}

/** Renders JSON the way qemu does: 4-space indent, `": "` separators, an empty list or dict opened and closed on two lines. */
export function qemuJson(v: unknown): string {
  return JSON.stringify(v, null, 4).replace(
    /^( *)(.*)(\[\]|\{\})(,?)$/gm,
    (_m, pad, head, pair, comma) => `${pad}${head}${pair[0]}\n${pad}${pair[1]}${comma}`,
  );
}

/**
 * The name qemu-img shows for an image opened from `given`: its refreshed
 * filename (QEMU's bdrv_refresh_filename, `refreshFilename`): the file's
 * name for a format over a file with no strong options, a protocol's own
 * name (`nbd://host:port`), else `json:{...}` of the strong options.
 */
export function shownFilename(node: BlockNode, given: string, imageOpts: boolean): string {
  const r = refreshFilename(node);
  // A node opened from a filename starts with that name as its exact one (QEMU's bdrv_open_common): a protocol
  // without a naming rule of its own (rbd:...) keeps it.
  if (r.exact === undefined && !imageOpts && !given.startsWith("json:") && !looksDotted(given)) return given;
  return r.filename;
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(args, { ...IMAGE_FLAGS, output: { type: "string" }, "backing-chain": { type: "boolean" } }, USAGE, io);
  if (!p) return 0;
  checkOutputFormat(p.values);
  needPositionals(p.positionals, 1, 1, "filename");
  const filename = p.positionals[0];
  const json = flagString(p.values, "output") === "json";
  // Like qemu-img info, a missing backing file does not stop plain info.
  const chainWanted = p.values["backing-chain"] === true;
  let node: BlockNode;
  try {
    // Like qemu-img info (BDRV_O_NO_IO), an encrypted image opens without its key.
    node = await openImage(filename, { ...imageArgs(p.values, true), noBacking: !chainWanted, noIo: true });
  } catch (e) {
    // A chain that loops: qemu-img info --backing-chain says only which file does it (iotest 043).
    const m = e instanceof BlockError || e instanceof CliError ? e.message : "";
    const at = m.lastIndexOf("Backing file '");
    if (chainWanted && at >= 0 && m.endsWith("creates an infinite loop.")) throw new CliError(m.slice(at));
    throw e;
  }
  try {
    const chain: ImageInfo[] = [];
    let n: BlockNode | undefined = formatNode(node);
    let name = shownFilename(node, filename, p.values["image-opts"] === true);
    while (n) {
      const info = await imageInfo(n, name);
      chain.push(info);
      if (p.values["backing-chain"] !== true) break;
      n = formatNode(n).backing;
      if (n) {
        const full = info["full-backing-filename"];
        if (typeof full !== "string") throw new CliError(`Cannot follow the backing chain of '${name}': backing file name unknown`);
        name = full;
      }
    }
    if (json) io.stdout(qemuJson(p.values["backing-chain"] === true ? chain : chain[0]) + "\n");
    else io.stdout(chain.map(formatInfoHuman).join("\n"));
  } finally {
    await node.close();
  }
  return 0;
}

/** The `info` verb. */
export const infoVerb: Verb = { name: "info", summary: VERB_SUMMARIES.info, run };
