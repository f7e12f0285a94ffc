/**
 * `blkgraph create`: qemu-img create, including its "Formatting ..." line
 * with the options in qemu's order.
 *
 * @module
 */

import { createImage } from "../core/open.ts";
import { getDriver } from "../core/registry.ts";
import { parseDotted } from "../core/spec.ts";
import { CliError, type CliIO, flagList, flagString, needPositionals, openImage, parseVerbArgs, sizeArg, type Verb } from "./_common.ts";

const USAGE = `Usage: blkgraph create [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] [-q] filename [size]

Creates an image of the given format (default raw). Sizes take k, M, G, T
suffixes. Options (-o) are the format's creation options, comma-separated
(for qcow2: cluster_size, compat, lazy_refcounts, refcount_bits,
compression_type, extended_l2, preallocation, data_file).
`;

/** Order in which qemu-img prints qcow2 creation options. */
const QCOW2_ORDER = [
  "encryption",
  "encrypt.format",
  "encrypt.key-secret",
  "encrypt.cipher-alg",
  "encrypt.cipher-mode",
  "encrypt.ivgen-alg",
  "encrypt.ivgen-hash-alg",
  "encrypt.hash-alg",
  "encrypt.iter-time",
  "cluster_size",
  "extended_l2",
  "preallocation",
  "compression_type",
  "size",
  "compat",
  "backing_file",
  "backing_fmt",
  "data_file",
  "data_file_raw",
  "lazy_refcounts",
  "refcount_bits",
];
const QCOW2_DEFAULTS: Record<string, string> = {
  cluster_size: "65536",
  extended_l2: "off",
  compression_type: "zlib",
  lazy_refcounts: "off",
  refcount_bits: "16",
};

/** Order in which qemu-img prints luks creation options. */
const LUKS_ORDER = [
  "size",
  "key-secret",
  "cipher-alg",
  "cipher-mode",
  "ivgen-alg",
  "ivgen-hash-alg",
  "hash-alg",
  "iter-time",
  "preallocation",
];

/** Parses `-o a=b,c=d` lists (repeatable; `,,` escapes a comma) into flat options. */
export function parseCreateOptions(lists: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const list of lists) {
    const flat = flatten(parseDotted(list));
    for (const [k, v] of Object.entries(flat)) out[k] = v;
  }
  return out;
}

function flatten(o: Record<string, unknown>, prefix = ""): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(o)) {
    if (v !== null && typeof v === "object") Object.assign(out, flatten(v as Record<string, unknown>, `${prefix}${k}.`));
    else out[prefix + k] = String(v);
  }
  return out;
}

/** The line qemu-img prints before creating: "Formatting 'f', fmt=qcow2 cluster_size=65536 ...". */
export function formattingLine(filename: string, format: string, size: number, options: Record<string, string>): string {
  const shown: Record<string, string> = { ...options, size: String(size) };
  let order: string[];
  if (format === "qcow2") {
    for (const [k, v] of Object.entries(QCOW2_DEFAULTS)) shown[k] ??= v;
    shown.cluster_size = String(sizeArg(shown.cluster_size, "cluster_size"));
    order = QCOW2_ORDER;
  } else if (format === "luks") {
    order = LUKS_ORDER;
  } else {
    order = ["size", "backing_file", "backing_fmt", "preallocation"];
  }
  const keys = [...order.filter((k) => k in shown), ...Object.keys(shown).filter((k) => !order.includes(k))];
  return `Formatting '${filename}', fmt=${format} ${keys.map((k) => `${k}=${shown[k]}`).join(" ")}\n`;
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      format: { type: "string", short: "f" },
      backing: { type: "string", short: "b" },
      "backing-format": { type: "string", short: "F" },
      unsafe: { type: "boolean", short: "u" },
      options: { type: "string", short: "o", multiple: true },
      quiet: { type: "boolean", short: "q" },
      object: { type: "string", multiple: true },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 1, 2, "filename");
  const [filename, sizeText] = p.positionals;
  const format = flagString(p.values, "format") ?? "raw";
  if (!getDriver(format).create) throw new CliError(`${filename}: Format driver '${format}' does not support image creation`);
  const options = parseCreateOptions(flagList(p.values, "options"));
  const backing = flagString(p.values, "backing") ?? options.backing_file;
  const backingFmt = flagString(p.values, "backing-format") ?? options.backing_fmt;
  if (backing !== undefined) options.backing_file = backing;
  if (backingFmt !== undefined) options.backing_fmt = backingFmt;
  let size: number | undefined;
  if (sizeText !== undefined) size = sizeArg(sizeText, "image size");
  else if (options.size !== undefined) size = sizeArg(options.size, "image size");
  delete options.size;
  if (backing !== undefined && p.values.unsafe !== true) {
    const dir = filename.includes("/") ? filename.slice(0, filename.lastIndexOf("/") + 1) : "";
    const path = backing.startsWith("/") || backing.includes(":") ? backing : dir + backing;
    const b = await openImage(path, { format: backingFmt, readOnly: true }).catch((e) => {
      throw new CliError(`${filename}: ${(e as Error).message}`);
    });
    size ??= b.length;
    await b.close();
  }
  if (size === undefined) throw new CliError("Image creation needs a size parameter");
  if (p.values.quiet !== true) io.stdout(formattingLine(filename, format, size, options));
  try {
    await createImage(filename, format, size, { options });
  } catch (e) {
    throw new CliError(`${filename}: ${(e as Error).message}`);
  }
  return 0;
}

/** The `create` verb. */
export const createVerb: Verb = { name: "create", summary: "create a new image", run };
