/**
 * `blkgraph amend`: qemu-img amend: opens the image read-write (without its
 * backing chain) and hands the `-o` options to the format driver's `amend`
 * (qcow2: compat, refcount_bits, size, lazy_refcounts, data_file,
 * data_file_raw, backing_file/backing_fmt as they are; creation-only
 * options are refused as qemu-img does; luks: key slots, with `--object`
 * secrets).
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import { getDriver } from "../core/registry.ts";
import {
  CliError,
  type CliIO,
  flagList,
  flagString,
  IMAGE_FLAGS,
  imageArgs,
  openImage,
  parseVerbArgs,
  progName,
  type Verb,
} from "./_common.ts";
import { formatOptionHelp, parseCreateOptions, wantsOptionHelp } from "./create.ts";
import { progressPrinter } from "./_progress.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

/** Whether the format's driver takes amend options (it lists them); a format blkgraph only recognises does not. */
function amendable(format: string): boolean {
  try {
    return getDriver(format).amendOptions !== undefined;
  } catch (e) {
    if (e instanceof BlockError && e.code === "ENOTSUP") return false;
    throw e;
  }
}

/** qemu-img's `amend -o help`: the options the format can change. */
function amendOptionHelp(format: string): string {
  if (!amendable(format)) throw new CliError(`Format driver '${format}' does not support option amendment`);
  return `Amend options for '${format}':\n${formatOptionHelp(getDriver(format).amendOptions ?? [])}`;
}

const USAGE = `Usage: blkgraph amend [--object objectdef] [-f fmt] [-q] [--force] [--image-opts] -o options filename

Changes format options of an existing image. qcow2: compat=0.10|1.1,
refcount_bits=1..64, size=SIZE (grow or shrink), lazy_refcounts=on|off,
data_file=NAME, data_file_raw=off, encrypt.* key slots of luks-encrypted
images. luks: key slots: state=active|inactive, keyslot, new-secret,
old-secret, iter-time (--force overwrites an active slot or erases the
last one).
`;

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      ...IMAGE_FLAGS,
      options: { type: "string", short: "o", multiple: true },
      progress: { type: "boolean", short: "p" },
      force: { type: "boolean" },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  const lists = flagList(p.values, "options");
  const help = wantsOptionHelp(lists);
  const format = flagString(p.values, "format");
  if (help && format !== undefined) {
    io.stdout(amendOptionHelp(format));
    return 0;
  }
  const opts = parseCreateOptions(lists);
  // qemu-img amend's order: the options first, then the file name.
  if (!Object.keys(opts).length && !help) {
    throw new CliError(`Must specify options (-o)\nTry '${progName(io)} --help' for more information`);
  }
  if (p.positionals.length !== 1) throw new CliError("Expecting one image file name");
  const node = await openImage(p.positionals[0], { ...imageArgs(p.values, false), noBacking: true });
  try {
    if (help) {
      io.stdout(amendOptionHelp(node.formatName));
      return 0;
    }
    if (!amendable(node.formatName)) throw new CliError(`Format driver '${node.formatName}' does not support option amendment`);
    // qemu-img amend's progress: 0 first, every 1% the format reports, 100 once done.
    const show = progressPrinter(io, p.values.progress === true, 1.0);
    show(0);
    try {
      await node.amend(opts, { force: p.values.force === true, progress: (done, total) => show(Math.fround(100 * done) / total) });
    } finally {
      show(100); // also after a failure, as qemu-img prints it
      show.end();
    }
  } finally {
    await node.close();
  }
  return 0;
}

/** The `amend` verb. */
export const amendVerb: Verb = {
  name: "amend",
  summary: VERB_SUMMARIES.amend,
  run,
};
