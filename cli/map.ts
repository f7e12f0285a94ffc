/**
 * `blkgraph map`: qemu-img map's extent list (human or JSON), walking the
 * backing chain for unallocated ranges and merging adjacent extents the way
 * qemu-img does; or (`--output=svg`) the picture of it: guest offsets against
 * host offsets per backing-chain layer, metadata clusters coloured by kind.
 *
 * @module
 */

import { type MapEntry, mapExtents } from "./_map_extents.ts";
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
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph map [-f fmt] [--output=human|json|svg] [--start-offset=N] [--max-length=N] [--image-opts] [-U] filename

Prints the image's extents as qemu-img map does: for each range whether it
holds data, reads as zeros, which layer of the backing chain defines it and
where it lives in the host file. --output=svg draws the whole image instead:
guest offsets coloured by layer, each layer's host file with its metadata
clusters (header, L1, L2, refcount table and blocks, snapshots, bitmaps)
coloured by kind, and guest against host offsets.
`;

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

/** qemu-img 7.2's map JSON output, one entry per line (no "compressed" key: that came with 8.0). */
export function formatMapJson(entries: MapEntry[]): string {
  const items = entries.map((e) =>
    `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}` +
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
export const mapVerb: Verb = { name: "map", summary: VERB_SUMMARIES.map, run };
