/**
 * `blkgraph snapshot`: qemu-img snapshot. `-l` lists internal snapshots
 * (qemu-img's table; an image without snapshots prints nothing), `-c`
 * creates one (dated now, ID picked by the format), `-a` reverts the image
 * to one (by ID, or else by name), `-d` deletes one (found by name, as
 * qemu-img 7.2 finds it) — through the driver interface's snapshot
 * operations, which fall through raw and filters to the node that has them
 * (qcow2's internal snapshots, an rbd node's RBD snapshots), with qemu-img's
 * messages.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import type { BlockNode } from "../core/node.ts";
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
  type Verb,
} from "./_common.ts";
import { formatSnapshotTable, readSnapshots } from "./_snapshots.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph snapshot [-l | -a snapshot | -c snapshot | -d snapshot] [-f fmt] [-q] [-U] [--image-opts] filename

Lists (-l), creates (-c), applies (-a, reverts the image to it) or deletes
(-d) internal snapshots, as qemu-img snapshot. Snapshots of raw images on
rbd are RBD snapshots.
`;

type Action = "list" | "create" | "apply" | "delete";

function why(e: unknown): string {
  return e instanceof BlockError ? e.strerror : (e as Error).message;
}

const VERB = { create: ["snapshotCreate", "create"], apply: ["snapshotGoto", "apply"], delete: ["snapshotDelete", "delete"] } as const;

async function act(node: BlockNode, action: Exclude<Action, "list">, name: string): Promise<void> {
  const fmt = formatNode(node);
  const serving = fmt.snapshots.node();
  const [op, verb] = VERB[action];
  if (serving && !serving.instance[op]) {
    throw new CliError(`Could not ${verb} snapshot '${name}': driver '${serving.driver.name}' cannot ${verb} snapshots yet`);
  }
  switch (action) {
    case "create": {
      // qemu-img's snapshot info: dated now (microseconds), no VM state, VM clock 0, icount 0.
      const us = Math.floor((performance.timeOrigin + performance.now()) * 1000);
      const info = { id: "", name, vmStateSize: 0, dateSec: Math.floor(us / 1e6), dateNsec: (us % 1e6) * 1000, vmClockNsec: 0, icount: 0 };
      try {
        await fmt.snapshots.create(info);
      } catch (e) {
        const errno = e instanceof BlockError ? e.errno : 5;
        throw new CliError(`Could not create snapshot '${name}': -${errno} (${why(e)})`);
      }
      return;
    }
    case "apply":
      try {
        await fmt.snapshots.goto(name);
      } catch (e) {
        if (!serving) throw new CliError(`Could not apply snapshot '${name}': Block driver does not support snapshots`);
        // Refused before the driver loads anything (QEMU's bdrv_snapshot_goto: "Device has active dirty bitmaps").
        if (e instanceof BlockError && e.code === "EBUSY") throw new CliError(`Could not apply snapshot '${name}': ${e.message}`);
        throw new CliError(`Could not apply snapshot '${name}': Failed to load snapshot: ${why(e)}`, 1, undefined, { cause: e });
      }
      return;
    case "delete": {
      // As qemu-img: find it by name first.
      const found = (await readSnapshots(fmt)).find((s) => s.name === name);
      if (!found) throw new CliError(`Could not delete snapshot '${name}': snapshot not found`);
      try {
        await fmt.snapshots.delete(found.id);
      } catch (e) {
        // qcow2 names the stage that failed as QEMU does; rbd's message is QEMU's rbd driver's.
        const own = serving?.driver.name === "qcow2";
        const msg = own ? (e as Error).message : `Failed to remove the snapshot: ${why(e)}`;
        const qemu = own && e instanceof BlockError ? e.qemuMessage : msg;
        throw new CliError(`Could not delete snapshot '${name}': ${msg}`, 1, `Could not delete snapshot '${name}': ${qemu}`);
      }
      return;
    }
  }
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
  const chosen: [Action, string][] = [];
  if (p.values.list === true) chosen.push(["list", ""]);
  for (const a of ["apply", "create", "delete"] as const) {
    const v = flagString(p.values, a);
    if (v !== undefined) chosen.push([a, v]);
  }
  if (chosen.length > 1) throw new CliError("Cannot mix '-l', '-a', '-c', '-d'\nTry '--help' for more information.");
  needPositionals(p.positionals, 1, 1, "one image file name");
  const [action, name] = chosen[0] ?? ["list", ""];
  const node = await openImage(p.positionals[0], imageArgs(p.values, action === "list"));
  try {
    if (action === "list") {
      const snaps = await readSnapshots(formatNode(node));
      if (snaps.length) io.stdout("Snapshot list:\n" + formatSnapshotTable(snaps));
    } else {
      await act(node, action, name);
    }
  } finally {
    await node.close();
  }
  return 0;
}

/** The `snapshot` verb. */
export const snapshotVerb: Verb = { name: "snapshot", summary: VERB_SUMMARIES.snapshot, run };
