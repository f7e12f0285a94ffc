/**
 * `blkgraph dd`: qemu-img dd. Copies `count` blocks of `bs` bytes from
 * `if=` (after skipping `skip` blocks) into a new image `of=` of format
 * `-O` (default raw), sized to what is copied; every block is written, as
 * qemu-img does.
 *
 * @module
 */

import { createImage } from "../core/open.ts";
import type { BlockNode } from "../core/node.ts";
import { parseSize } from "../core/options.ts";
import { getDriver } from "../core/registry.ts";
import { CliError, type CliIO, flagString, IMAGE_FLAGS, imageArgs, openImage, parseVerbArgs, progName, type Verb } from "./_common.ts";
import { strerror } from "./io_commands/_session.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";
import { ioBuffer } from "../core/_io_buffer.ts";

const USAGE =
  `Usage: blkgraph dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output

Copies the input image to a new output image block by block, as dd(1):
bs (default 512 bytes, k/M/G suffixes), count (blocks to copy), skip
(blocks of the input to skip).
`;

const INT_MAX = 2 ** 31 - 1;

/** qemu-img's cvtnum_full: a size within [min, max]; the two error messages otherwise. */
function ddNumber(io: CliIO, name: string, value: string, min: number, max: number): number {
  const n = parseSize(value);
  if (n === undefined && !/^\d+(\.\d+)?[bkmgtpe]?$/i.test(value.trim())) {
    io.stderr(`${progName(io)}: Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for\n`);
    throw new CliError("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
  }
  if (n === undefined || n < min || n > max) throw new CliError(`Invalid ${name} specified. Must be between ${min} and ${max}.`);
  return n;
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(args, { ...IMAGE_FLAGS, "output-format": { type: "string", short: "O" } }, USAGE, io);
  if (!p) return 0;
  let bs = 512;
  let count: number | undefined;
  let skip: number | undefined;
  let input: string | undefined;
  let output: string | undefined;
  for (const operand of p.positionals) {
    const eq = operand.indexOf("=");
    const key = eq < 0 ? "" : operand.slice(0, eq);
    const value = operand.slice(eq + 1);
    if (key === "bs") bs = ddNumber(io, "bs", value, 1, INT_MAX);
    else if (key === "count") count = ddNumber(io, "count", value, 0, Number.MAX_SAFE_INTEGER);
    else if (key === "skip") skip = ddNumber(io, "skip", value, 0, Number.MAX_SAFE_INTEGER);
    else if (key === "if") input = value;
    else if (key === "of") output = value;
    else throw new CliError(`unrecognized operand ${eq < 0 ? operand : key}`);
  }
  if (input === undefined || output === undefined) throw new CliError("Must specify both input and output files");
  const outFmt = flagString(p.values, "output-format") ?? "raw";
  const src = await openImage(input, imageArgs(p.values, true));
  let dst: BlockNode | undefined;
  try {
    const driver = getDriver(outFmt);
    if (!driver.create) throw new CliError(`Format driver '${outFmt}' does not support image creation`);
    let size = src.length;
    if (count !== undefined && count * bs < size) size = count * bs;
    const skipBytes = (skip ?? 0) * bs;
    const beyond = skip !== undefined && size < skipBytes;
    try {
      await createImage(output, outFmt, beyond ? 0 : size - skipBytes);
    } catch (e) {
      throw new CliError(`${output}: error while creating output image: ${(e as Error).message}`);
    }
    dst = await openImage(output, { format: outFmt });
    let inPos = skipBytes;
    if (beyond) {
      // Like dd(1): an empty output, and a warning.
      io.stderr(`${progName(io)}: ${input}: cannot skip to specified offset\n`);
      inPos = size;
    }
    const buf = ioBuffer(bs);
    for (let outPos = 0; inPos < size;) {
      const n = Math.min(bs, size - inPos);
      const chunk = buf.subarray(0, n);
      try {
        await src.pread(inPos, chunk);
      } catch (e) {
        throw new CliError(`error while reading from input image file: ${strerror(e)}`);
      }
      inPos += n;
      try {
        await dst.pwrite(outPos, chunk);
      } catch (e) {
        throw new CliError(`error while writing to output image file: ${strerror(e)}`);
      }
      outPos += n;
    }
    await dst.flush();
  } finally {
    await src.close().catch(() => {});
    await dst?.close();
  }
  return 0;
}

/** The `dd` verb. */
export const ddVerb: Verb = { name: "dd", summary: VERB_SUMMARIES.dd, run };
