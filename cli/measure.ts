/**
 * `blkgraph measure`: qemu-img measure for raw and qcow2 output: the size a
 * converted image needs (`required`) and its size fully allocated, computed
 * with qemu's formulas (qcow2_calc_prealloc_size and the refcount fixpoint).
 *
 * @module
 */

import { parseSize } from "../core/options.ts";
import {
  checkOutputFormat,
  CliError,
  type CliIO,
  flagList,
  flagString,
  formatNode,
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
import { chainStatus } from "./map.ts";

const USAGE = `Usage: blkgraph measure [--output=human|json] [-O fmt] [-o options] [--size N | [-f fmt] [--image-opts] filename]

Computes the size of an image in format -O (raw or qcow2): the space
needed for the data of 'filename' (or an empty image of --size), and when
fully allocated.
`;

/** Layout parameters of a qcow2 image being measured. */
export interface Qcow2Layout {
  /** Cluster size in bytes. */
  clusterSize: number;
  /** Refcount entry width in bits (1..64, power of two). */
  refcountBits: number;
  /** Extended L2 entries (16 bytes each instead of 8). */
  extendedL2: boolean;
}

const divRoundUp = (a: number, b: number) => Math.ceil(a / b);
const roundUp = (a: number, b: number) => divRoundUp(a, b) * b;

/** qemu's qcow2_refcount_metadata_size: refcount blocks and table for `clusters` clusters (bytes). */
export function refcountMetadataSize(clusters: number, clusterSize: number, refcountBits: number): number {
  const perTableCluster = clusterSize / 8;
  const perBlock = (clusterSize * 8) / refcountBits;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last;
  do {
    last = n;
    blocks = divRoundUp(clusters + table + blocks, perBlock);
    table = divRoundUp(blocks, perTableCluster);
    n = clusters + blocks + table;
  } while (n !== last);
  return (blocks + table) * clusterSize;
}

/** qemu's qcow2_calc_prealloc_size: bytes of a fully allocated qcow2 image of `size`. */
export function qcow2FullSize(size: number, l: Qcow2Layout): number {
  const cs = l.clusterSize;
  const aligned = roundUp(size, cs);
  const l2e = l.extendedL2 ? 16 : 8;
  let meta = cs; // header
  const nl2e = roundUp(aligned / cs, cs / l2e);
  meta += nl2e * l2e;
  const nl1e = roundUp((nl2e * l2e) / cs, cs / 8);
  meta += nl1e * 8;
  meta += refcountMetadataSize((aligned + meta) / cs, cs, l.refcountBits);
  return meta + aligned;
}

function layout(opts: Record<string, string>): Qcow2Layout {
  const clusterSize = opts.cluster_size !== undefined ? parseSize(opts.cluster_size) : 65536;
  if (!clusterSize || clusterSize < 512 || clusterSize > 2 * 1024 * 1024 || (clusterSize & (clusterSize - 1)) !== 0) {
    throw new CliError(`Invalid cluster_size '${opts.cluster_size}': expected a power of two between 512 and 2M`);
  }
  const refcountBits = opts.refcount_bits !== undefined ? Number(opts.refcount_bits) : 16;
  if (![1, 2, 4, 8, 16, 32, 64].includes(refcountBits)) {
    throw new CliError(`Invalid refcount_bits '${opts.refcount_bits}': expected a power of two up to 64`);
  }
  const extendedL2 = opts.extended_l2 === "on" || opts.extended_l2 === "true";
  return { clusterSize, refcountBits, extendedL2 };
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
  checkOutputFormat(p.values);
  const sizeText = flagString(p.values, "size");
  needPositionals(p.positionals, sizeText === undefined ? 1 : 0, sizeText === undefined ? 1 : 0, "either --size N or one filename");
  const outFmt = flagString(p.values, "output-format") ?? "raw";
  if (outFmt !== "raw" && outFmt !== "qcow2") {
    throw new CliError(`Format '${outFmt}' does not support size measurement (only raw and qcow2)`);
  }
  const opts = parseCreateOptions(flagList(p.values, "options"));
  let size: number;
  let data = 0;
  let inputFormat = "";
  const l = outFmt === "qcow2" ? layout(opts) : undefined;
  if (sizeText !== undefined) {
    size = sizeArg(sizeText, "size");
  } else {
    const top = await openImage(p.positionals[0], imageArgs(p.values, true));
    try {
      const node = formatNode(top);
      inputFormat = node.driver.name;
      size = node.length;
      for (let off = 0; off < size && l;) {
        const st = await chainStatus(node, off, size - off);
        let n = st.length;
        if (!st.zero && st.data && st.present) {
          n = roundUp(off + n, l.clusterSize) - off;
          data += (off % l.clusterSize) + n;
        }
        off += n;
      }
    } finally {
      await top.close();
    }
  }
  size = roundUp(size, 512);
  let required: number;
  let full: number;
  if (l) {
    full = qcow2FullSize(size, l);
    required = full - roundUp(size, l.clusterSize) + data;
  } else {
    required = full = size;
  }
  // qemu-img reports persistent bitmaps (none here) when both images are qcow2.
  const showBitmaps = inputFormat === "qcow2" && outFmt === "qcow2";
  if (flagString(p.values, "output") === "json") {
    const o: Record<string, number> = showBitmaps ? { bitmaps: 0 } : {};
    io.stdout(qemuJson({ ...o, required, "fully-allocated": full }) + "\n");
  } else {
    io.stdout(`required size: ${required}\nfully allocated size: ${full}\n${showBitmaps ? "bitmaps size: 0\n" : ""}`);
  }
  return 0;
}

/** The `measure` verb. */
export const measureVerb: Verb = { name: "measure", summary: "compute the size an image needs", run };
