/**
 * The internal snapshot a read-only verb reads instead of the active image
 * (`convert -l`, `measure -l`): `-l snapshot.id=ID,snapshot.name=NAME` or
 * `-l ID_OR_NAME`, as qemu-img 7.2 parses it, and the open options of that
 * snapshot's view (qemu-img's bdrv_snapshot_load_tmp).
 *
 * @module
 */

import type { BlockNode } from "../core/node.ts";
import { CliError, type CliIO, formatNode, progName } from "./_common.ts";

/**
 * `-l snapshot.id=ID,snapshot.name=NAME` or `-l ID_OR_NAME`, as qemu-img 7.2
 * convert and measure take them (convert's old `-s` is gone).
 */
export function snapshotArg(l: string | undefined, io: CliIO): { id?: string; name?: string; idOrName?: string } | undefined {
  if (l?.startsWith("snapshot.")) {
    const out: { id?: string; name?: string } = {};
    for (const part of l.split(",")) {
      const m = /^(snapshot\.[^=]*)(?:=(.*))?$/.exec(part);
      const key = m?.[1].slice("snapshot.".length);
      if (!m || (key !== "id" && key !== "name")) {
        io.stderr(`${progName(io)}: Invalid parameter '${m?.[1] ?? part}'\n`);
        throw new CliError(`Failed in parsing snapshot param '${l}'`);
      }
      out[key] = m[2] ?? "";
    }
    return out;
  }
  return l === undefined ? undefined : { idOrName: l };
}

/** The open options of the snapshot view: by ID and/or name, or a bare word tried as an ID, then as a name. */
export async function resolveSnapshot(
  src: BlockNode,
  want: { id?: string; name?: string; idOrName?: string },
): Promise<Record<string, string>> {
  const list = await formatNode(src).snapshots.list();
  const found = want.idOrName !== undefined
    ? list.find((sn) => sn.id === want.idOrName) ?? list.find((sn) => sn.name === want.idOrName)
    : list.find((sn) => (want.id === undefined || sn.id === want.id) && (want.name === undefined || sn.name === want.name));
  if (!found) throw new CliError("Failed to load snapshot: Can't find snapshot");
  return want.idOrName !== undefined ? { "snapshot.id": found.id } : {
    ...(want.id !== undefined ? { "snapshot.id": want.id } : {}),
    ...(want.name !== undefined ? { "snapshot.name": want.name } : {}),
  };
}
