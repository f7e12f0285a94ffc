/**
 * `blkgraph map`: qemu-img map's extent list (human or JSON), walking the
 * backing chain for unallocated ranges and merging adjacent extents the way
 * qemu-img does; or (`--output=svg`) the picture of it: guest offsets against
 * host offsets per backing-chain layer, metadata clusters coloured by kind.
 *
 * @module
 */

import type { BlockNode } from "../core/node.ts";
import { renderMapSvg } from "./_map_svg.ts";
import {
  checkOutputFormat,
  CliError,
  type CliIO,
  flagString,
  IMAGE_FLAGS,
  imageArgs,
  needPositionals,
  openImage,
  parseVerbArgs,
  sizeArg,
  type Verb,
} from "./_common.ts";

const USAGE = `Usage: blkgraph map [-f fmt] [--output=human|json|svg] [--start-offset=N] [--max-length=N] [--image-opts] [-U] filename

Prints the image's extents as qemu-img map does: for each range whether it
holds data, reads as zeros, which layer of the backing chain defines it and
where it lives in the host file. --output=svg draws the whole image instead:
guest offsets coloured by layer, each layer's host file with its metadata
clusters (header, L1, L2, refcount table and blocks, snapshots, bitmaps)
coloured by kind, and guest against host offsets.
`;

/** One extent of `map` output (qemu-img's MapEntry). */
export interface MapEntry {
  /** Guest offset. */
  start: number;
  /** Length in bytes. */
  length: number;
  /** Backing-chain depth that defines the range (0 = the image itself). */
  depth: number;
  /** Some layer allocates the range. */
  present: boolean;
  /** The range reads as zeros. */
  zero: boolean;
  /** The range holds data. */
  data: boolean;
  /** The range is compressed. */
  compressed: boolean;
  /** Host offset, when known. */
  offset?: number;
  /** Host file name, when known. */
  filename?: string;
}

const CHUNK = 1 << 30;

/**
 * Block status of `[offset, offset+bytes)` through the backing chain as
 * qemu-img map's get_block_status sees it: the node's block status already
 * walks the chain (depth, present); this adds the host file name.
 */
export async function chainStatus(top: BlockNode, offset: number, bytes: number): Promise<MapEntry> {
  const st = await top.blockStatus(offset, bytes);
  const present = st.present ?? st.allocated;
  const e: MapEntry = {
    start: offset,
    length: st.length,
    depth: st.depth ?? 0,
    present,
    zero: st.zero || !present,
    data: present && st.data,
    compressed: st.compressed ?? false,
  };
  if (st.hostOffset !== undefined && !st.compressed && present) {
    e.offset = st.hostOffset;
    // Below filters (blkdebug, throttle) the host file is further down.
    let host = st.file;
    while (host && typeof host.options.filename !== "string") host = host.primaryChild;
    const f = host?.options.filename;
    // qemu joins a relative backing name to a bare image name without "./".
    if (typeof f === "string") e.filename = f.startsWith("./") ? f.slice(2) : f;
  }
  return e;
}

function mergeable(a: MapEntry, b: MapEntry): boolean {
  return a.present === b.present && a.zero === b.zero && a.data === b.data && a.depth === b.depth && a.compressed === b.compressed &&
    (a.offset === undefined) === (b.offset === undefined) && a.filename === b.filename &&
    (a.offset === undefined || a.offset + a.length === b.offset);
}

/** Lists merged extents of `[start, end)`; `human` coalesces as qemu-img's human format does. */
export async function mapExtents(node: BlockNode, start: number, end: number, human: boolean): Promise<MapEntry[]> {
  const out: MapEntry[] = [];
  let curr: MapEntry | undefined;
  for (let off = start; off < end;) {
    const next = await chainStatus(node, off, Math.min(CHUNK, end - off));
    off += next.length;
    if (human && (!next.data || next.zero)) {
      next.data = false;
      next.zero = true;
    }
    if (curr && mergeable(curr, next)) {
      curr.length += next.length;
      continue;
    }
    if (curr) out.push(curr);
    curr = next;
  }
  if (curr) out.push(curr);
  return out;
}

/**
 * qemu-img map's human output ("Offset Length Mapped to File"). Like
 * qemu-img, it stops with an error at the first compressed extent, after
 * printing what came before it (`io` receives the text as it goes).
 */
export function formatMapHuman(entries: MapEntry[], out: (s: string) => void): void {
  const hex = (n: number) => (n === 0 ? "0" : "0x" + n.toString(16)).padEnd(16);
  out(`${"Offset".padEnd(16)}${"Length".padEnd(16)}${"Mapped to".padEnd(16)}File\n`);
  for (const e of entries) {
    if (e.data && e.offset === undefined) throw new CliError("File contains external, encrypted or compressed clusters.");
    if (e.data && !e.zero) out(`${hex(e.start)}${hex(e.length)}${hex(e.offset ?? 0)}${e.filename ?? ""}\n`);
  }
}

/** qemu-img map's JSON output (one entry per line). */
export function formatMapJson(entries: MapEntry[]): string {
  const items = entries.map((e) =>
    `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}, "compressed": ${e.compressed}` +
    (e.offset !== undefined ? `, "offset": ${e.offset}` : "") + "}"
  );
  return `[${items.join(",\n")}]\n`;
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      ...IMAGE_FLAGS,
      output: { type: "string" },
      "start-offset": { type: "string", short: "s" },
      "max-length": { type: "string", short: "l" },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  const svg = flagString(p.values, "output") === "svg";
  if (!svg) checkOutputFormat(p.values);
  needPositionals(p.positionals, 1, 1, "filename");
  const json = flagString(p.values, "output") === "json";
  const node = await openImage(p.positionals[0], imageArgs(p.values, true));
  try {
    if (svg) {
      io.stdout(await renderMapSvg(node, { title: p.positionals[0] }) + "\n");
      return 0;
    }
    const startText = flagString(p.values, "start-offset");
    const maxText = flagString(p.values, "max-length");
    const start = startText ? sizeArg(startText, "start offset") : 0;
    const length = node.length;
    const end = maxText ? Math.min(length, start + sizeArg(maxText, "max length")) : length;
    const entries = await mapExtents(node, Math.min(start, length), end, !json);
    if (json) io.stdout(formatMapJson(entries));
    else formatMapHuman(entries, io.stdout);
  } finally {
    await node.close();
  }
  return 0;
}

/** The `map` verb. */
export const mapVerb: Verb = { name: "map", summary: "show the image's allocation map", run };
