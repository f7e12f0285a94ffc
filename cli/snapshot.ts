/**
 * `blkgraph snapshot`: qemu-img snapshot. `-l` lists internal snapshots
 * (qemu-img's table; an image without snapshots prints nothing), `-c`
 * creates one (named, dated now, ID picked by the format), `-a` reverts the
 * image to one (by ID, or else by name) and `-d` deletes one (by name, as
 * qemu-img 7.2 finds it). Messages and exit codes are qemu-img's.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
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

const USAGE =
  `Usage: blkgraph snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename

Lists (-l), creates (-c), applies (-a: reverts the image to) or deletes (-d)
an internal snapshot. -a takes an ID or, failing that, a name; -d a name.
`;

const ACTIONS = [["list", "-l"], ["apply", "-a"], ["create", "-c"], ["delete", "-d"]] as const;

function errnoText(e: unknown): string {
  return e instanceof BlockError ? e.strerror : (e as Error).message;
}

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
  const given = ACTIONS.filter(([flag]) => p.values[flag] !== undefined && p.values[flag] !== false);
  if (given.length > 1) throw new CliError("Cannot mix '-l', '-a', '-c', '-d'\nTry '--help' for more information.");
  if (p.positionals.length !== 1) throw new CliError("Expecting one image file name\nTry '--help' for more information.");
  needPositionals(p.positionals, 1, 1, "one image file name");
  const action = given[0]?.[0];
  const name = action && action !== "list" ? String(p.values[action]) : "";
  // -l needs no write access; everything else opens the image read-write, as qemu-img does.
  const top = await openImage(p.positionals[0], imageArgs(p.values, action === "list"));
  try {
    const node = formatNode(top);
    if (action === "list") {
      const snaps = await readSnapshots(node);
      if (snaps.length) io.stdout("Snapshot list:\n" + formatSnapshotTable(snaps));
    } else if (action === "create") {
      const us = Math.floor((performance.timeOrigin + performance.now()) * 1000);
      try {
        // qemu-img's snapshot info: no VM state, VM clock 0, icount 0.
        await node.snapshotCreate({
          id: "",
          name,
          vmStateSize: 0,
          dateSec: Math.floor(us / 1e6),
          dateNsec: (us % 1e6) * 1000,
          vmClockNsec: 0,
          icount: 0,
        });
      } catch (e) {
        const errno = e instanceof BlockError ? e.errno : 5;
        throw new CliError(`Could not create snapshot '${name}': -${errno} (${errnoText(e)})`);
      }
    } else if (action === "apply") {
      try {
        await node.snapshotGoto(name);
      } catch (e) {
        // bdrv_snapshot_goto reports every driver failure as this one line.
        throw new CliError(`Could not apply snapshot '${name}': Failed to load snapshot: ${errnoText(e)}`);
      }
    } else if (action === "delete") {
      // qemu-img 7.2 finds the snapshot to delete by name only (bdrv_snapshot_find), then deletes that one by its ID.
      const sn = (await node.snapshotList()).find((s) => s.name === name);
      if (!sn) throw new CliError(`Could not delete snapshot '${name}': snapshot not found`);
      try {
        await node.snapshotDelete(sn.id);
      } catch (e) {
        throw new CliError(`Could not delete snapshot '${name}': ${(e as Error).message}`);
      }
    }
  } finally {
    await top.close();
  }
  return 0;
}

/** The `snapshot` verb. */
export const snapshotVerb: Verb = { name: "snapshot", summary: "list, create, apply or delete internal snapshots", run };
