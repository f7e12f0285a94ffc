/**
 * `blkgraph rebase`: unsafe mode (`-u`) only. It records the new backing
 * file name and format in the image through the format driver's
 * `changeBackingFile`, without comparing or copying data; safe rebase is not
 * supported yet.
 *
 * @module
 */

import {
  CliError,
  type CliIO,
  flagString,
  IMAGE_FLAGS,
  imageArgs,
  needPositionals,
  openImage,
  parseVerbArgs,
  type Verb,
} from "./_common.ts";

const USAGE = `Usage: blkgraph rebase -u -b backing_file [-F backing_fmt] [-f fmt] [-q] filename

Changes the backing file recorded in a qcow2 image (unsafe mode: the data
is not compared or copied). -b "" removes the backing file. Safe rebase
(without -u) is not supported yet.
`;

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      ...IMAGE_FLAGS,
      unsafe: { type: "boolean", short: "u" },
      backing: { type: "string", short: "b" },
      "backing-format": { type: "string", short: "F" },
      progress: { type: "boolean", short: "p" },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 1, 1, "filename");
  if (p.values.unsafe !== true) throw new CliError("'rebase' without -u (safe mode) is not supported yet");
  const backing = flagString(p.values, "backing");
  if (backing === undefined) throw new CliError("Expecting a backing file name (-b)");
  const format = flagString(p.values, "backing-format");
  if (backing !== "" && format === undefined) {
    throw new CliError(`Could not change the backing file to '${backing}': backing format must be specified`);
  }
  const node = await openImage(p.positionals[0], { ...imageArgs(p.values, false), noBacking: true });
  try {
    await node.changeBackingFile(backing === "" ? undefined : backing, backing === "" ? undefined : format);
  } finally {
    await node.close();
  }
  return 0;
}

/** The `rebase` verb. */
export const rebaseVerb: Verb = { name: "rebase", summary: "change the backing file of a qcow2 image (-u only)", run };
