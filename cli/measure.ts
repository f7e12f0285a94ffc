/**
 * `blkgraph measure`: qemu-img measure for raw and qcow2 output: the size a
 * converted image needs (`required`) and its size fully allocated, computed
 * with qemu's formulas (qcow2_calc_prealloc_size and the refcount fixpoint).
 *
 * @module
 */

import { driverNames, getDriver } from "../core/registry.ts";
import {
  checkOutputFormat,
  CliError,
  type CliIO,
  flagList,
  flagString,
  IMAGE_FLAGS,
  imageArgs,
  needPositionals,
  openImage,
  parseVerbArgs,
  sizeArg,
  type Verb,
} from "./_common.ts";
import { parseCreateOptions } from "./create.ts";
import { qemuJson } from "./info.ts";

const USAGE = `Usage: blkgraph measure [--output=human|json] [-O fmt] [-o options] [--size N | [-f fmt] [--image-opts] filename]

Computes the size of an image in format -O (raw or qcow2): the space
needed for the data of 'filename' (or an empty image of --size), and when
fully allocated.
`;

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      ...IMAGE_FLAGS,
      output: { type: "string" },
      "output-format": { type: "string", short: "O" },
      options: { type: "string", short: "o", multiple: true },
      size: { type: "string" },
      snapshot: { type: "string", short: "l" },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  checkOutputFormat(p.values);
  const sizeText = flagString(p.values, "size");
  needPositionals(p.positionals, sizeText === undefined ? 1 : 0, sizeText === undefined ? 1 : 0, "either --size N or one filename");
  const outFmt = flagString(p.values, "output-format") ?? "raw";
  const driver = driverNames().includes(outFmt) ? getDriver(outFmt) : undefined;
  if (!driver) throw new CliError(`Unknown file format '${outFmt}'`);
  if (!driver.measure) throw new CliError(`Block driver '${outFmt}' does not support size measurement`);
  const options = parseCreateOptions(flagList(p.values, "options"));
  let result;
  if (sizeText !== undefined) {
    result = await driver.measure({ size: sizeArg(sizeText, "size"), options });
  } else {
    const top = await openImage(p.positionals[0], imageArgs(p.values, true));
    try {
      result = await driver.measure({ size: top.length, options, source: top });
    } finally {
      await top.close();
    }
  }
  const required = result.required;
  const full = result.fullyAllocated;
  // The driver counts persistent bitmaps when the target can hold the source's (qcow2 v3 from qcow2 v3).
  const bitmaps = result.bitmaps;
  if (flagString(p.values, "output") === "json") {
    const o: Record<string, number> = bitmaps !== undefined ? { bitmaps } : {};
    io.stdout(qemuJson({ ...o, required, "fully-allocated": full }) + "\n");
  } else {
    io.stdout(`required size: ${required}\nfully allocated size: ${full}\n${bitmaps !== undefined ? `bitmaps size: ${bitmaps}\n` : ""}`);
  }
  return 0;
}

/** The `measure` verb. */
export const measureVerb: Verb = { name: "measure", summary: "compute the size an image needs", run };
