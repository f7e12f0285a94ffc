/**
 * `blkgraph rebase`: unsafe mode (`-u`) only. It rewrites the backing file
 * name and format in the qcow2 header (with the qcow2 header codec), without
 * comparing or copying data; safe rebase is not supported yet.
 *
 * @module
 */

import { open } from "../core/open.ts";
import { parseHeader, serializeHeader } from "../drivers/qcow2/header.ts";
import { CliError, type CliIO, flagString, IMAGE_FLAGS, needPositionals, parseVerbArgs, type Verb } from "./_common.ts";

const USAGE = `Usage: blkgraph rebase -u -b backing_file [-F backing_fmt] [-f fmt] [-q] filename

Changes the backing file recorded in a qcow2 image (unsafe mode: the data
is not compared or copied). -b "" removes the backing file. Safe rebase
(without -u) is not supported yet.
`;

/** Rewrites the backing file name and format in the header of the qcow2 image at `filename`. */
export async function rebaseUnsafe(filename: string, backing: string | undefined, format: string | undefined): Promise<void> {
  const file = await open({ driver: "file", filename });
  try {
    const head = new Uint8Array(Math.min(file.length, 72));
    await file.pread(0, head);
    if (head.length < 72 || head[0] !== 0x51 || head[1] !== 0x46 || head[2] !== 0x49 || head[3] !== 0xfb) {
      throw new CliError(`Cannot rebase '${filename}': not a qcow2 image (only qcow2 images have a backing file)`);
    }
    const bits = new DataView(head.buffer).getUint32(20);
    if (bits < 9 || bits > 21) throw new CliError(`Cannot rebase '${filename}': invalid cluster_bits ${bits} in the header`);
    const cs = 2 ** bits;
    const cluster = new Uint8Array(Math.min(cs, file.length));
    await file.pread(0, cluster);
    const h = parseHeader(cluster, file.length);
    h.backingFile = backing;
    h.backingFormat = backing === undefined ? undefined : format;
    await file.pwrite(0, serializeHeader(h, cs));
    await file.flush();
  } finally {
    await file.close();
  }
}

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
  const fmt = flagString(p.values, "format");
  if (fmt !== undefined && fmt !== "qcow2") throw new CliError(`Cannot rebase a '${fmt}' image: only qcow2 images have a backing file`);
  await rebaseUnsafe(p.positionals[0], backing === "" ? undefined : backing, format);
  return 0;
}

/** The `rebase` verb. */
export const rebaseVerb: Verb = { name: "rebase", summary: "change the backing file of a qcow2 image (-u only)", run };
