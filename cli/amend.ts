/**
 * `blkgraph amend`: qemu-img amend for qcow2, limited to what is a header
 * change: `lazy_refcounts=on|off` on a clean compat=1.1 image. Other options
 * are refused clearly (creation-only ones as qemu-img does).
 *
 * @module
 */

import { open } from "../core/open.ts";
import { COMPAT_LAZY_REFCOUNTS, INCOMPAT_DIRTY, parseHeader, serializeHeader } from "../drivers/qcow2/header.ts";
import { CliError, type CliIO, flagList, flagString, IMAGE_FLAGS, needPositionals, parseVerbArgs, type Verb } from "./_common.ts";
import { parseCreateOptions } from "./create.ts";

const USAGE = `Usage: blkgraph amend [-f fmt] [-q] -o options filename

Changes format options of an existing qcow2 image. Supported:
lazy_refcounts=on|off (compat=1.1 images).
`;

const CREATION_ONLY = ["cluster_size", "preallocation", "extended_l2", "compression_type", "encryption", "encrypt.format"];

/** Sets or clears the lazy-refcounts feature of the qcow2 image at `filename`. */
export async function amendLazyRefcounts(filename: string, on: boolean): Promise<void> {
  const file = await open({ driver: "file", filename });
  try {
    const head = new Uint8Array(Math.min(file.length, 72));
    await file.pread(0, head);
    if (head.length < 72 || head[0] !== 0x51 || head[1] !== 0x46 || head[2] !== 0x49 || head[3] !== 0xfb) {
      throw new CliError(`Cannot amend '${filename}': not a qcow2 image`);
    }
    const bits = new DataView(head.buffer).getUint32(20);
    if (bits < 9 || bits > 21) throw new CliError(`Cannot amend '${filename}': invalid cluster_bits ${bits} in the header`);
    const cs = 2 ** bits;
    const cluster = new Uint8Array(Math.min(cs, file.length));
    await file.pread(0, cluster);
    const h = parseHeader(cluster, file.length);
    if (h.version < 3) {
      throw new CliError("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)");
    }
    if (!on && h.incompatibleFeatures & INCOMPAT_DIRTY) {
      throw new CliError(`Cannot turn lazy refcounts off on '${filename}': the image is dirty; run 'blkgraph check -r all' first`);
    }
    const flags = on ? h.compatibleFeatures | COMPAT_LAZY_REFCOUNTS : h.compatibleFeatures & ~COMPAT_LAZY_REFCOUNTS;
    if (flags === h.compatibleFeatures) return;
    h.compatibleFeatures = flags;
    await file.pwrite(0, serializeHeader(h, cs));
    await file.flush();
  } finally {
    await file.close();
  }
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    { ...IMAGE_FLAGS, options: { type: "string", short: "o", multiple: true }, progress: { type: "boolean", short: "p" } },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 1, 1, "filename");
  const format = flagString(p.values, "format");
  if (format !== undefined && format !== "qcow2") throw new CliError(`Format driver '${format}' does not support option amendment`);
  const opts = parseCreateOptions(flagList(p.values, "options"));
  if (!Object.keys(opts).length) throw new CliError("Expecting one or more options (-o)");
  let lazy: boolean | undefined;
  for (const [k, v] of Object.entries(opts)) {
    if (CREATION_ONLY.includes(k)) throw new CliError(`Invalid parameter '${k}'\nThis option is only supported for image creation`);
    if (k !== "lazy_refcounts") throw new CliError(`Changing '${k}' is not supported yet (only lazy_refcounts)`);
    if (!["on", "off", "true", "false"].includes(v)) throw new CliError(`Invalid value '${v}' for lazy_refcounts: expected on or off`);
    lazy = v === "on" || v === "true";
  }
  await amendLazyRefcounts(p.positionals[0], lazy!);
  return 0;
}

/** The `amend` verb. */
export const amendVerb: Verb = { name: "amend", summary: "change format options of a qcow2 image (lazy_refcounts)", run };
