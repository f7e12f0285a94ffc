/**
 * `blkgraph bitmap`: qemu-img bitmap. Applies one or more actions, in the
 * order given, to one persistent dirty bitmap of an image: `--add [-g
 * granularity] [--disable]`, `--remove`, `--clear`, `--enable`,
 * `--disable`, `--merge SOURCE [-b source_file [-F source_fmt]]`. Actions
 * done before a failing one stay done (the image is closed, which stores
 * the bitmaps), as with qemu-img.
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { BlockNode } from "../core/node.ts";
import { defineObject } from "../core/secrets.ts";
import { CliError, type CliIO, errorMessage, openImage, type Verb } from "./_common.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
                       [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef]
                       [--image-opts | -f fmt] filename bitmap

Changes a persistent dirty bitmap of an image, as qemu-img bitmap does:
'bitmap' is the bitmap to change through one or more actions from --add,
--remove, --clear, --enable, --disable or --merge SOURCE, applied in order.
  -g granularity   the granularity of --add (k, M, G suffixes; default the
                   cluster size, within 4 KiB..64 KiB)
  -b source_file   --merge takes SOURCE from this image (-F its format)
`;

const OPTIONS = {
  help: { type: "boolean", short: "h" },
  add: { type: "boolean", multiple: true },
  remove: { type: "boolean", multiple: true },
  clear: { type: "boolean", multiple: true },
  enable: { type: "boolean", multiple: true },
  disable: { type: "boolean", multiple: true },
  merge: { type: "string", multiple: true },
  granularity: { type: "string", short: "g" },
  "source-file": { type: "string", short: "b" },
  "source-format": { type: "string", short: "F" },
  format: { type: "string", short: "f" },
  "image-opts": { type: "boolean" },
  object: { type: "string", multiple: true },
} as const;

type Action = "add" | "remove" | "clear" | "enable" | "disable" | "merge";
const ACTIONS: readonly string[] = ["add", "remove", "clear", "enable", "disable", "merge"];

/** qemu-img's cvtnum: a size with k, M, G, T, P or E suffixes (binary); its two-line error otherwise. */
function granularityArg(text: string, io: CliIO): number {
  const m = /^(\d+(?:\.\d+)?)([bkmgtpe]?)$/i.exec(text.trim());
  const unit = m ? { "": 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 }[m[2].toLowerCase()]! : NaN;
  const n = m ? Number(m[1]) * unit : NaN;
  if (!Number.isSafeInteger(n)) {
    io.stderr("blkgraph: Invalid granularity specified. You may use k, M, G, T, P or E suffixes for\n");
    throw new CliError("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
  }
  return n;
}

async function run(args: string[], io: CliIO): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true, tokens: true });
  } catch (e) {
    throw new CliError(`${(e as Error).message.replace(/\. To specify.*$/s, "")}\nTry '--help' for more information.`);
  }
  const v = parsed.values;
  if (v.help) {
    io.stdout(USAGE);
    return 0;
  }
  const actions: { act: Action; src?: string }[] = [];
  for (const t of parsed.tokens ?? []) {
    if (t.kind === "option" && ACTIONS.includes(t.name)) actions.push({ act: t.name as Action, src: t.value });
  }
  for (const o of v.object ?? []) defineObject(o);
  const g = v.granularity !== undefined ? granularityArg(v.granularity, io) : 0;
  if (!actions.length) throw new CliError("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
  if (g && !actions.some((a) => a.act === "add")) throw new CliError("granularity only supported with --add");
  if (v["source-format"] !== undefined && v["source-file"] === undefined) throw new CliError("-F only supported with -b");
  if (v["source-file"] !== undefined && !actions.some((a) => a.act === "merge")) {
    throw new CliError("Merge bitmap source file only supported with --merge");
  }
  if (parsed.positionals.length !== 2) throw new CliError("Expecting filename and bitmap name");
  const [filename, name] = parsed.positionals;

  const node = await openImage(filename, { format: v.format, imageOpts: v["image-opts"] === true });
  let source: BlockNode | undefined;
  try {
    // Only the source image's own bitmaps are read: qemu-img opens it without its backing chain (which may be the target itself).
    if (v["source-file"] !== undefined) {
      source = await openImage(v["source-file"], { format: v["source-format"], readOnly: true, noBacking: true });
    }
    for (const { act, src } of actions) {
      try {
        if (act === "add") await node.bitmaps.add(name, { granularity: g || undefined });
        else if (act === "remove") await node.bitmaps.remove(name);
        else if (act === "clear") await node.bitmaps.clear(name);
        else if (act === "enable") await node.bitmaps.enable(name);
        else if (act === "disable") await node.bitmaps.disable(name);
        else await node.bitmaps.merge(name, { name: src!, node: source });
      } catch (e) {
        throw new CliError(`Operation ${act} on bitmap ${name} failed: ${errorMessage(e)}`);
      }
    }
  } finally {
    await source?.close().catch(() => {});
    // Closing stores the bitmaps; an error there is the verb's error.
    await node.close();
  }
  return 0;
}

/** The `bitmap` verb (qemu-img bitmap). */
export const bitmapVerb: Verb = { name: "bitmap", summary: VERB_SUMMARIES.bitmap, run };
