/**
 * `blkgraph snapshot`: `-l` lists internal snapshots (qemu-img's table; an
 * image without snapshots prints nothing). Creating, applying and deleting
 * snapshots is not supported yet.
 *
 * @module
 */

import {
  CliError,
  type CliIO,
  formatNode,
  IMAGE_FLAGS,
  imageArgs,
  needPositionals,
  openImage,
  parseVerbArgs,
  type Verb,
} from "./_common.ts";
import { formatSnapshotTable, readSnapshots } from "./_snapshots.ts";

const USAGE = `Usage: blkgraph snapshot [-l | -a snapshot | -c snapshot | -d snapshot] [-f fmt] [-q] [-U] [--image-opts] filename

Lists internal snapshots (-l). -a, -c and -d are not supported yet.
`;

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      ...IMAGE_FLAGS,
      list: { type: "boolean", short: "l" },
      apply: { type: "string", short: "a" },
      create: { type: "string", short: "c" },
      delete: { type: "string", short: "d" },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 1, 1, "filename");
  for (const [flag, what] of [["apply", "-a"], ["create", "-c"], ["delete", "-d"]] as const) {
    if (p.values[flag] !== undefined) throw new CliError(`'snapshot ${what}' is not supported yet`);
  }
  const node = await openImage(p.positionals[0], imageArgs(p.values, true));
  try {
    const snaps = await readSnapshots(formatNode(node));
    if (snaps.length) io.stdout("Snapshot list:\n" + formatSnapshotTable(snaps));
  } finally {
    await node.close();
  }
  return 0;
}

/** The `snapshot` verb. */
export const snapshotVerb: Verb = { name: "snapshot", summary: "list internal snapshots", run };
