/**
 * `blkgraph amend`: qemu-img amend: opens the image read-write (without its
 * backing chain) and hands the `-o` options to the format driver's `amend`
 * (qcow2: `lazy_refcounts=on|off`; creation-only options are refused as
 * qemu-img does; luks: key slots, with `--object` secrets).
 *
 * @module
 */

import { CliError, type CliIO, flagList, IMAGE_FLAGS, imageArgs, needPositionals, openImage, parseVerbArgs, type Verb } from "./_common.ts";
import { parseCreateOptions } from "./create.ts";

const USAGE = `Usage: blkgraph amend [--object objectdef] [-f fmt] [-q] [--force] [--image-opts] -o options filename

Changes format options of an existing image. Supported: qcow2
lazy_refcounts=on|off (compat=1.1 images); luks key slots:
state=active|inactive, keyslot, new-secret, old-secret, iter-time
(--force overwrites an active slot or erases the last one).
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
  needPositionals(p.positionals, 1, 1, "filename");
  const opts = parseCreateOptions(flagList(p.values, "options"));
  if (!Object.keys(opts).length) throw new CliError("Expecting one or more options (-o)");
  const node = await openImage(p.positionals[0], { ...imageArgs(p.values, false), noBacking: true });
  try {
    await node.amend(opts, { force: p.values.force === true });
  } finally {
    await node.close();
  }
  return 0;
}

/** The `amend` verb. */
export const amendVerb: Verb = { name: "amend", summary: "change format options (qcow2 lazy_refcounts, luks key slots)", run };
