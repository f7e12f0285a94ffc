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
  openImage,
  parseVerbArgs,
  progName,
  type Verb,
} from "./_common.ts";
import { parseSize } from "../core/options.ts";
import { resolveSnapshot, snapshotArg } from "./_snapshot_view.ts";
import { parseCreateOptions } from "./create.ts";
import { qemuJson } from "./info.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph measure [--output=human|json] [-O fmt] [-o options] [--size N | [-f fmt] [--image-opts] filename]

Computes the size of an image in format -O (raw or qcow2): the space
needed for the data of 'filename' (or an empty image of --size), and when
fully allocated.
`;

/**
 * `--size N` as qemu-img's cvtnum takes it: up to 2^63 - 1 (sizes past 2^53
 * are whole multiples of their suffix); "range" for a well-formed size past
 * that, undefined for one that is not a size.
 */
function measureSize(text: string): number | "range" | undefined {
  const n = parseSize(text);
  if (n !== undefined) return n;
  const m = /^\s*(\d+)\s*([kmgtpe]?)\s*$/i.exec(text);
  if (!m) return undefined;
  const big = BigInt(m[1]) << BigInt(10 * " kmgtpe".indexOf((m[2] || " ").toLowerCase()));
  return big >= 1n << 63n ? "range" : Number(big);
}

/** A size as qemu-img prints it: every digit, also past 2^53. */
function exact(n: number): string {
  return BigInt(n).toString();
}

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
  // qemu-img's order: each option as it is parsed, then the filename rules.
  const lists = flagList(p.values, "options");
  const options = parseCreateOptions(lists);
  const snapshot = snapshotArg(flagString(p.values, "snapshot"), io);
  checkOutputFormat(p.values);
  const sizeText = flagString(p.values, "size");
  const parsed = sizeText === undefined ? undefined : measureSize(sizeText);
  if (parsed === "range") throw new CliError("Invalid image size specified. Must be between 0 and 9223372036854775807.");
  const size = parsed;
  if (sizeText !== undefined && size === undefined) {
    io.stderr(`${progName(io)}: Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n`);
    throw new CliError("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
  }
  if (p.positionals.length > 1) throw new CliError("At most one filename argument is allowed.");
  const filename = p.positionals[0];
  if (filename === undefined && (p.values["image-opts"] || p.values.format !== undefined || snapshot)) {
    throw new CliError("--image-opts, -f, and -l require a filename argument.");
  }
  if (filename !== undefined && size !== undefined) throw new CliError("--size N cannot be used together with a filename.");
  if (filename === undefined && size === undefined) throw new CliError("Either --size N or one filename must be specified.");
  const outFmt = flagString(p.values, "output-format") ?? "raw";
  const driver = driverNames().includes(outFmt) ? getDriver(outFmt) : undefined;
  if (!driver) throw new CliError(`Unknown file format '${outFmt}'`);
  if (!driver.measure) throw new CliError(`Block driver '${outFmt}' does not support size measurement`);
  let result;
  if (size !== undefined) {
    result = await driver.measure({ size, options });
  } else {
    const args = imageArgs(p.values, true);
    let top = await openImage(filename, args);
    try {
      if (snapshot) {
        const view = await resolveSnapshot(top, snapshot);
        await top.close();
        top = await openImage(filename, { ...args, formatOptions: view });
      }
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
    const json = qemuJson({ ...o, required: -1, "fully-allocated": -2 });
    io.stdout(json.replace(": -1", `: ${exact(required)}`).replace(": -2", `: ${exact(full)}`) + "\n");
  } else {
    io.stdout(
      `required size: ${exact(required)}\nfully allocated size: ${exact(full)}\n${
        bitmaps !== undefined ? `bitmaps size: ${bitmaps}\n` : ""
      }`,
    );
  }
  return 0;
}

/** The `measure` verb. */
export const measureVerb: Verb = { name: "measure", summary: VERB_SUMMARIES.measure, run };
