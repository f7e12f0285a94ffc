/**
 * `blkgraph resize`: qemu-img resize (`[+|-]size`, "Image resized."). Growing
 * works for every format that can truncate, with `--preallocation` where the
 * format has it (qcow2: metadata, falloc, full); shrinking needs `--shrink`.
 *
 * @module
 */

import {
  CliError,
  type CliIO,
  flagString,
  formatNode,
  IMAGE_FLAGS,
  imageArgs,
  needPositionals,
  openImage,
  parseVerbArgs,
  progName,
  sizeArg,
  type Verb,
} from "./_common.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph resize [-f fmt] [--shrink] [--preallocation=mode] [-q] [--image-opts] filename [+|-]size

Changes the virtual size of an image. '+size' grows it by size, '-size'
shrinks it (with --shrink). --preallocation=metadata|falloc|full allocates
the grown area.
`;

async function run(args: string[], io: CliIO): Promise<number> {
  // A negative size ("-1M") is an operand, not an option.
  const last = args[args.length - 1];
  if (last !== undefined && /^-\d/.test(last) && !args.includes("--")) args = [...args.slice(0, -1), "--", last];
  const p = parseVerbArgs(args, { ...IMAGE_FLAGS, shrink: { type: "boolean" }, preallocation: { type: "string" } }, USAGE, io);
  if (!p) return 0;
  needPositionals(p.positionals, 2, 2, "a filename and a size");
  const [filename, sizeText] = p.positionals;
  const rel = sizeText[0] === "+" || sizeText[0] === "-" ? sizeText[0] : "";
  const amount = sizeArg(rel ? sizeText.slice(1) : sizeText, "image size");
  const prealloc = flagString(p.values, "preallocation") as "off" | "metadata" | "falloc" | "full" | undefined;
  if (prealloc !== undefined && !["off", "metadata", "falloc", "full"].includes(prealloc)) {
    throw new CliError(`Invalid preallocation mode '${prealloc}'`);
  }
  const top = await openImage(filename, imageArgs(p.values, false));
  try {
    const node = formatNode(top);
    const cur = node.length;
    const size = rel === "+" ? cur + amount : rel === "-" ? cur - amount : amount;
    // qemu-img resize's checks, in its order; whether a format can shrink is the driver's to say.
    if (size <= 0) throw new CliError("New image size must be positive");
    if (size <= cur && prealloc !== undefined && prealloc !== "off") {
      throw new CliError("Preallocation can only be used for growing images");
    }
    if (size < cur && p.values.shrink !== true) {
      io.stderr(`${progName(io)}: Use the --shrink option to perform a shrink operation.\n`);
      throw new CliError(
        "warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
      );
    }
    await node.truncate(size, { prealloc });
    await top.flush();
  } finally {
    await top.close();
  }
  if (p.values.quiet !== true) io.stdout("Image resized.\n");
  return 0;
}

/** The `resize` verb. */
export const resizeVerb: Verb = { name: "resize", summary: VERB_SUMMARIES.resize, run };
