/**
 * `blkgraph create`: qemu-img create, including its "Formatting ..." line
 * with the options in qemu's order.
 *
 * @module
 */

import { checkCreateOptions, checkImageCreate, createImage } from "../core/open.ts";
import { BlockError } from "../core/errors.ts";
import { parseSize } from "../core/options.ts";
import { driverForPrefix, getDriver } from "../core/registry.ts";
import type { OptionHelp } from "../core/types.ts";
import {
  CliError,
  type CliIO,
  errorText,
  flagList,
  flagString,
  needPositionals,
  openImage,
  openReason,
  parseVerbArgs,
  progName,
  resolveBackingPath,
  sizeArg,
  type Verb,
} from "./_common.ts";
import { QCOW2_CREATE_NAMES, QCOW2_SHOWN_DEFAULTS } from "../drivers/qcow2/_image_options.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph create [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] [-q] filename [size]

Creates an image of the given format (default raw). Sizes take k, M, G, T
suffixes. Options (-o) are the format's creation options, comma-separated
(for qcow2: cluster_size, compat, lazy_refcounts, refcount_bits,
compression_type, extended_l2, preallocation, data_file).
`;

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

/**
 * Checks an `-o` argument as qemu-img does: not empty, not starting with a
 * comma, and not ending in an odd number of commas ("a=b," is cut off).
 */
function checkOptionList(list: string): void {
  let i = list.length;
  while (i > 0 && list[i - 1] === ",") i--;
  if (list === "" || list[0] === "," || (list.length - i) % 2 !== 0) throw new CliError(`Invalid option list: ${list}`);
}

/** Splits one `-o` list into `[key, value]` items (`,,` is a comma; a bare `key` means `key=on`). */
function optionItems(list: string): [string, string][] {
  const items: [string, string][] = [];
  let cur = "";
  const push = () => {
    if (cur === "") return;
    const eq = cur.indexOf("=");
    items.push(eq < 0 ? [cur, "on"] : [cur.slice(0, eq), cur.slice(eq + 1)]);
    cur = "";
  };
  for (let i = 0; i < list.length; i++) {
    if (list[i] === ",") {
      if (list[i + 1] === ",") {
        cur += ",";
        i++;
      } else push();
    } else cur += list[i];
  }
  push();
  return items;
}

/**
 * Parses `-o a=b,c=d` lists as qemu-img does: repeatable, `,,` escapes a
 * comma, a later value of a key replaces an earlier one (`-o
 * cluster_size=4k -o cluster_size=8k`). `help` and `?` are not options
 * (see {@linkcode wantsOptionHelp}).
 */
export function parseCreateOptions(lists: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const list of lists) {
    checkOptionList(list);
    for (const [k, v] of optionItems(list)) if (k !== "help" && k !== "?") out[k] = v;
  }
  return out;
}

/** Whether the `-o` lists ask for the option list (`help` or `?` as an item). */
export function wantsOptionHelp(lists: string[]): boolean {
  for (const list of lists) checkOptionList(list);
  return lists.some((l) => optionItems(l).some(([k]) => k === "help" || k === "?"));
}

const TYPE_NAMES = { str: "str", size: "size", num: "num", bool: "bool (on/off)" } as const;

/** Formats an option table as qemu's `-o help` does: sorted, `  name=<type>` padded to 24, then ` - help`. */
export function formatOptionHelp(options: readonly OptionHelp[]): string {
  const byName = new Map<string, OptionHelp>();
  for (const o of options) if (!byName.has(o.name)) byName.set(o.name, o);
  return [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((o) => {
    const head = `  ${o.name}=<${TYPE_NAMES[o.type]}>`;
    return `${head.padEnd(24)} - ${o.help}\n`;
  }).join("");
}

/**
 * qemu-img's `create -o help` (and `convert -O fmt -o help`): the format's
 * options, with the protocol's when the target filename is known.
 */
export function createOptionHelp(format: string, filename: string | undefined): string {
  if (!canCreate(format)) throw new CliError(`Format driver '${format}' does not support image creation`);
  const driver = getDriver(format);
  if (filename === undefined) {
    return `Supported ${format} options:\n${formatOptionHelp(driver.createOptions ?? [])}\n` +
      "The protocol level may support further options.\nSpecify the target filename to include those options.\n";
  }
  const proto = driverForPrefix(filename) ?? getDriver("file");
  return `Supported options:\n${formatOptionHelp([...(driver.createOptions ?? []), ...(proto.createOptions ?? [])])}`;
}

/**
 * Whether images of `format` can be created; a format blkgraph only
 * recognises (bochs, vmdk, ...) cannot. An unknown name is an error naming it.
 */
export function canCreate(format: string): boolean {
  try {
    return getDriver(format).create !== undefined;
  } catch (e) {
    if (e instanceof BlockError && e.code === "ENOTSUP") return false;
    throw e;
  }
}

const SHIFT: Record<string, bigint> = { "": 0n, b: 0n, k: 10n, m: 20n, g: 30n, t: 40n, p: 50n, e: 60n };

/** A whole size at or past 2^53, exactly (qemu-img takes it below 2^63 and says so past it); undefined for anything else. */
function hugeSize(text: string): bigint | undefined {
  const m = /^\s*(\d+)\s*([bkmgtpe]?)\s*$/i.exec(text);
  if (!m) return undefined;
  const n = BigInt(m[1]) << SHIFT[m[2].toLowerCase()];
  return n >= 2n ** 53n ? n : undefined;
}

/** The line qemu-img prints before creating: "Formatting 'f', fmt=qcow2 cluster_size=65536 ...". */
export function formattingLine(filename: string, format: string, size: number | bigint, options: Record<string, string>): string {
  const shown: Record<string, string> = { ...options, size: String(size) };
  let order: string[];
  if (format === "qcow2") {
    for (const [k, v] of Object.entries(QCOW2_SHOWN_DEFAULTS)) shown[k] ??= v;
    shown.cluster_size = String(sizeArg(shown.cluster_size, "cluster_size"));
    order = [...QCOW2_CREATE_NAMES];
  } else if (format === "luks") {
    order = LUKS_ORDER;
  } else {
    order = ["size", "backing_file", "backing_fmt"];
  }
  // The file protocol's options follow the format's, in file-posix's order.
  order = [...order, ...["nocow", "preallocation", "extent_size_hint"].filter((k) => !order.includes(k))];
  // Sizes show in bytes (qemu_opts_print), the protocol's too (file's extent_size_hint, rbd's cluster_size).
  const proto = driverForPrefix(filename) ?? getDriver("file");
  for (const o of [...(getDriver(format).createOptions ?? []), ...(proto.createOptions ?? [])]) {
    if (o.type === "size" && o.name !== "size" && shown[o.name] !== undefined) shown[o.name] = String(sizeArg(shown[o.name], o.name));
  }
  const keys = [...order.filter((k) => k in shown), ...Object.keys(shown).filter((k) => !order.includes(k))];
  // Commas in values are doubled, as qemu_opts_print escapes them.
  return `Formatting '${filename}', fmt=${format} ${keys.map((k) => `${k}=${shown[k].replaceAll(",", ",,")}`).join(" ")}\n`;
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
  const format = flagString(p.values, "format") ?? "raw";
  const lists = flagList(p.values, "options");
  if (wantsOptionHelp(lists)) {
    io.stdout(createOptionHelp(format, p.positionals[0]));
    return 0;
  }
  needPositionals(p.positionals, 1, 2, "filename");
  const [filename, sizeText] = p.positionals;
  if (!canCreate(format)) throw new CliError(`${filename}: Format driver '${format}' does not support image creation`);
  const options = parseCreateOptions(lists);
  const fail = (e: unknown) => new CliError(`${filename}: ${errorText(e, io)}`);
  // As qemu-img: the -o options parse first, then -b and -F are set as the options they stand for.
  try {
    checkCreateOptions(format, filename, options);
  } catch (e) {
    throw fail(e);
  }
  const optionNames = new Set((getDriver(format).createOptions ?? []).map((o) => o.name));
  if (p.values.backing !== undefined && optionNames.size && !optionNames.has("backing_file")) {
    throw new CliError(`${filename}: Backing file not supported for file format '${format}'`);
  }
  if (p.values["backing-format"] !== undefined && optionNames.size && !optionNames.has("backing_fmt")) {
    throw new CliError(`${filename}: Backing file format not supported for file format '${format}'`);
  }
  const backing = flagString(p.values, "backing") ?? options.backing_file;
  const backingFmt = flagString(p.values, "backing-format") ?? options.backing_fmt;
  if (backing !== undefined) options.backing_file = backing;
  if (backingFmt !== undefined) options.backing_fmt = backingFmt;
  let size: number | undefined;
  if (sizeText !== undefined && options.size !== undefined) throw new CliError(`${filename}: The image size must be specified only once`);
  // A size past 2^53 (up to qemu-img's 2^63) parses too, exactly: the format judges it (too large: EFBIG).
  let exact: bigint | undefined;
  if (sizeText !== undefined) {
    size = parseSize(sizeText);
    exact = size === undefined ? hugeSize(sizeText) : undefined;
    if (exact !== undefined && exact >= 2n ** 63n) {
      throw new CliError("Invalid image size specified. Must be between 0 and 9223372036854775807.");
    }
    if (exact !== undefined) size = Number(exact);
    if (size === undefined) {
      io.stderr(`${progName(io)}: Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n`);
      throw new CliError("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
    }
  } else if (options.size !== undefined) {
    size = parseSize(options.size);
    if (size === undefined) {
      throw new CliError(
        `${filename}: Parameter 'size' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.`,
      );
    }
  }
  delete options.size;
  if (backing !== undefined) {
    if (backing === filename) {
      throw new CliError(`${filename}: Error: Trying to create an image with the same filename as the backing file`);
    }
    if (backing === "") throw new CliError(`${filename}: Expected backing file name, got empty string`);
  }
  if (backing !== undefined && p.values.unsafe !== true) {
    // As qemu-img: the backing file is opened shared (a VM may be using it), for its size and to check it exists.
    const path = resolveBackingPath(filename.startsWith("file:") ? filename.slice(5) : filename, backing);
    // Without I/O (QEMU opens it BDRV_O_NO_IO): an encrypted backing file needs no key for its size.
    const b = await openImage(path, { format: backingFmt, readOnly: true, forceShare: true, noIo: true }).catch((e) => {
      throw new CliError(`${filename}: ${openReason(e, io)}\nCould not open backing image.`);
    });
    const detected = b.formatName;
    const backingSize = b.length;
    await b.close();
    if (backingFmt === undefined) {
      throw new CliError(`${filename}: Backing file specified without backing format\nDetected format of ${detected}.`);
    }
    size ??= backingSize;
  }
  if (size === undefined) throw new CliError("Image creation needs a size parameter");
  // Everything is validated before a file is touched. qemu-img parses the
  // options, says "Formatting", then its driver checks the values: the
  // drop-in prints the line there too; blkgraph prints it once all is valid.
  const say = () => {
    if (p.values.quiet === true) return;
    io.stdout(formattingLine(filename, format, exact ?? size, options));
    // qemu-img flushes the line (bdrv_img_create's fflush), so it comes before an error on stderr.
    io.flush?.();
  };
  if (io.prog !== undefined) say();
  try {
    await checkImageCreate(filename, format, size, { options });
  } catch (e) {
    throw fail(e);
  }
  if (io.prog === undefined) say();
  try {
    await createImage(filename, format, size, { options });
  } catch (e) {
    throw fail(e);
  }
  return 0;
}

/** The `create` verb. */
export const createVerb: Verb = { name: "create", summary: VERB_SUMMARIES.create, run };
