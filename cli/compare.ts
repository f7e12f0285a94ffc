/**
 * `blkgraph compare`: qemu-img compare's messages and exit codes (0 identical,
 * 1 different, 2 error). Ranges both images report as zero are skipped
 * without reading them.
 *
 * @module
 */

import type { BlockNode } from "../core/node.ts";
import {
  CliError,
  type CliIO,
  errorMessage,
  flagString,
  formatNode,
  isZero,
  needPositionals,
  openImage,
  parseVerbArgs,
  type Verb,
} from "./_common.ts";
import { chainStatus } from "./_map_extents.ts";
import { strerror } from "./io_commands/_session.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";
import { ioBuffer } from "../core/_io_buffer.ts";

const USAGE = `Usage: blkgraph compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2

Compares the content of two images. Exit code 0: identical; 1: different;
2: an error. With -s (strict) images of different size or allocation differ.
`;

const CHUNK = 1 << 20;
const SECTOR = 512;

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

function firstNonZero(a: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== 0) return i;
  return -1;
}

/** A read error of the size-mismatch pass carries the warning printed before it. */
type CompareError = CliError & { before?: string };

/** Result of {@linkcode compareImages}: the message to print and the exit code. */
export interface CompareResult {
  /** qemu-img's message, with newline. */
  message: string;
  /** 0 identical, 1 different. */
  code: number;
}

/** Options of {@linkcode compareImages}. */
export interface CompareOptions {
  /** Images of different size or allocation differ (`-s`). */
  strict?: boolean;
  /** The names the images were given by (for read errors). */
  names?: [string, string];
}

/**
 * Compares two open images as qemu-img compare does. A failed read is a
 * {@linkcode CliError} with exit code 4 ("Error while reading offset N of
 * NAME: Input/output error").
 */
export async function compareImages(a: BlockNode, b: BlockNode, opts: CompareOptions = {}): Promise<CompareResult> {
  const strict = opts.strict ?? false;
  const [nameA, nameB] = opts.names ?? [a.name, b.name];
  const readAt = async (n: BlockNode, off: number, buf: Uint8Array) => {
    try {
      await n.pread(off, buf);
    } catch (e) {
      throw new CliError(`Error while reading offset ${off} of ${n === a ? nameA : nameB}: ${strerror(e)}`, 4);
    }
  };
  const lenA = a.length;
  const lenB = b.length;
  if (lenA !== lenB && strict) return { message: "Strict mode: Image size mismatch!\n", code: 1 };
  const common = Math.min(lenA, lenB);
  const bufA = ioBuffer(CHUNK);
  const bufB = ioBuffer(CHUNK);
  const mismatch = (off: number) => ({ message: `Content mismatch at offset ${off - (off % SECTOR)}!\n`, code: 1 });
  for (let off = 0; off < common;) {
    const n = Math.min(CHUNK, common - off);
    const [sa, sb] = await Promise.all([chainStatus(a, off, n), chainStatus(b, off, n)]);
    const len = Math.min(sa.length, sb.length);
    if (strict && sa.present !== sb.present) return { message: `Strict mode: Offset ${off} block status mismatch!\n`, code: 1 };
    if (sa.zero && sb.zero) {
      off += len;
      continue;
    }
    const ba = bufA.subarray(0, len);
    const bb = bufB.subarray(0, len);
    if (sa.zero) {
      await readAt(b, off, bb);
      const i = firstNonZero(bb);
      if (i >= 0) return mismatch(off + i);
    } else if (sb.zero) {
      await readAt(a, off, ba);
      const i = firstNonZero(ba);
      if (i >= 0) return mismatch(off + i);
    } else {
      await readAt(a, off, ba);
      await readAt(b, off, bb);
      const i = firstDiff(ba, bb);
      if (i >= 0) return mismatch(off + i);
    }
    off += len;
  }
  if (lenA !== lenB) {
    // Non-strict: the longer image must read as zeros past the shorter one.
    // qemu-img prints the warning before it looks there.
    const warning = "Warning: Image size mismatch!\n";
    const longer = lenA > lenB ? a : b;
    for (let off = common; off < longer.length;) {
      const st = await chainStatus(longer, off, Math.min(CHUNK, longer.length - off));
      if (!st.zero) {
        const buf = bufA.subarray(0, st.length);
        try {
          await readAt(longer, off, buf);
        } catch (e) {
          (e as CompareError).before = warning;
          throw e;
        }
        if (!isZero(buf)) return { ...mismatch(off + firstNonZero(buf)), message: warning + mismatch(off + firstNonZero(buf)).message };
      }
      off += st.length;
    }
    return { message: warning + "Images are identical.\n", code: 0 };
  }
  return { message: "Images are identical.\n", code: 0 };
}

async function run(args: string[], io: CliIO): Promise<number> {
  let p;
  try {
    p = parseVerbArgs(
      args,
      {
        "a-format": { type: "string", short: "f" },
        "b-format": { type: "string", short: "F" },
        "src-cache": { type: "string", short: "T" },
        "image-opts": { type: "boolean" },
        "force-share": { type: "boolean", short: "U" },
        progress: { type: "boolean", short: "p" },
        quiet: { type: "boolean", short: "q" },
        strict: { type: "boolean", short: "s" },
        object: { type: "string", multiple: true },
      },
      USAGE,
      io,
    );
    if (!p) return 0;
    needPositionals(p.positionals, 2, 2, "two image file names");
  } catch (e) {
    throw new CliError(errorMessage(e), 2);
  }
  const imageOpts = p.values["image-opts"] === true;
  const cache = flagString(p.values, "src-cache");
  const [fa, fb] = p.positionals;
  let a: BlockNode | undefined;
  let b: BlockNode | undefined;
  try {
    a = await openImage(fa, { format: flagString(p.values, "a-format"), imageOpts, readOnly: true, cache });
    b = await openImage(fb, { format: flagString(p.values, "b-format"), imageOpts, readOnly: true, cache });
    const r = await compareImages(formatNode(a), formatNode(b), { strict: p.values.strict === true, names: [fa, fb] });
    if (p.values.quiet !== true) io.stdout(r.message);
    return r.code;
  } catch (e) {
    if (e instanceof CliError && e.exitCode === 4) {
      const before = (e as CompareError).before;
      if (before && p.values.quiet !== true) io.stdout(before);
      throw e;
    }
    throw new CliError(errorMessage(e), 2);
  } finally {
    await a?.close().catch(() => {});
    await b?.close().catch(() => {});
  }
}

/** The `compare` verb. */
export const compareVerb: Verb = { name: "compare", summary: VERB_SUMMARIES.compare, run };
