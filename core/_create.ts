/**
 * Creating images (`createImage`, `checkImageCreate`): every option and the
 * size are validated before a file exists, the protocol's object is made
 * (a host file, an RBD image), and the format writes its empty layout onto
 * it. Re-exported by `core/open.ts`.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import { BlockNode } from "./node.ts";
import { type Options, parseSize } from "./options.ts";
import { driverForPrefix, getDriver } from "./registry.ts";
import { type BlockSpec, isPlainObject, normaliseSpec } from "./spec.ts";
import type { BlockDriver } from "./node.ts";
import { hasProtocol, openNode, unknownProtocol, withoutKey } from "./_open_node.ts";

/**
 * The protocol node at the bottom of a `file` spec given to createImage
 * (below any filters) is created as QEMU's bdrv_create_file does: a host
 * file gets `create: true`, a protocol with `createFile` (rbd) makes its
 * object first.
 */
async function withProtocolCreated(spec: Options, size: number): Promise<Options> {
  const child = isPlainObject(spec.file) ? "file" : isPlainObject(spec.image) ? "image" : undefined;
  if (child) return { ...spec, [child]: await withProtocolCreated(spec[child] as Options, size) };
  const name = typeof spec.driver === "string" ? spec.driver : "file";
  if (name === "file") return spec.create === undefined ? { ...spec, driver: "file", create: true } : spec;
  const driver = getDriver(name);
  if (driver.kind === "protocol" && driver.createFile) await driver.createFile(withoutKey(spec, "driver"), size);
  return spec;
}

/** Options for {@linkcode createImage}. */
export interface CreateOptions {
  /** Format options (`cluster_size`, `compat`, `backing_file`, ...). */
  options?: Record<string, string | number | boolean>;
  /** Protocol node options for the new file (e.g. `{driver: "memory"}`); default a host file. */
  file?: Options | BlockNode;
}

/**
 * Creates an image: an empty file of the format's layout and virtual `size`
 * (rounded up to whole 512-byte sectors, as QEMU's drivers do).
 *
 * @example
 * ```ts
 * import { createImage, open } from "@blkgraph/blkgraph";
 * const path = await Deno.makeTempFile({ suffix: ".img" });
 * await createImage(path, "raw", 1 << 20);
 * await using img = await open(path);
 * console.log(img.length); // 1048576
 * await Deno.remove(path);
 * ```
 */
export function createImage(filename: string, format: string, size: number, opts: CreateOptions = {}): Promise<void> {
  return createAndWrite(filename, format, size, opts).catch((e) => {
    throw tooLarge(e, format);
  });
}

/**
 * As QEMU's bdrv_img_create: a format's EFBIG keeps its message, and its
 * QEMU words become "The image size is too large for file format 'F'", with
 * a hint where the format has clusters.
 */
function tooLarge(e: unknown, format: string): unknown {
  if (!(e instanceof BlockError) || e.code !== "EFBIG") return e;
  const hint = (getDriver(format).createOptions ?? []).some((o) => o.name === "cluster_size") ? " (try using a larger cluster size)" : "";
  return new BlockError("EFBIG", e.message, {
    node: e.node,
    offset: e.offset,
    length: e.length,
    cause: e,
    qemuMessage: `The image size is too large for file format '${format}'${hint}`,
  });
}

async function createAndWrite(filename: string, format: string, size: number, opts: CreateOptions): Promise<void> {
  const plan = await planCreate(filename, format, size, opts);
  // Not a host file: the protocol creates its object (an RBD image) first.
  await plan.createFile?.();
  // The protocol made the object at its size and the format writes nothing more (raw): done, as qemu-img.
  if (plan.createFileSizes && plan.driver.createOnlySizes?.(plan.options)) return;
  let file: BlockNode | undefined;
  try {
    file = await openNode(plan.fileSpec, { readOnly: false, probe: false, top: false }).catch((e) => {
      throw plan.opensExisting ? cannotOpenExisting(e, plan.opensExisting) : e;
    });
    const allowed = file.allowBeyondEof;
    file.allowBeyondEof = true; // the new image is written past the end of the empty file
    try {
      // Emptied; a protocol that cannot shrink (an NBD export) keeps its size and gets its first sector
      // zeroed, so no old header shows through (QEMU's bdrv_co_create_opts_simple).
      if (file.length > 0) await file.truncate(0, { exact: false });
      if (file.length > 0) await file.pwriteZeroes(0, Math.min(file.length, 512));
      await plan.driver.create!({ file, size: plan.size, options: plan.options, filename });
      await file.flush();
    } finally {
      file.allowBeyondEof = allowed;
    }
  } catch (e) {
    if (plan.created !== undefined) {
      if (file && !(opts.file instanceof BlockNode)) await file.close().catch(() => {});
      await Deno.remove(plan.created).catch(() => {});
    }
    throw e;
  } finally {
    if (file && !(opts.file instanceof BlockNode)) await file.close();
  }
}

/**
 * Validates what {@linkcode createImage} would do (format, size, every
 * option, the protocol's own options) without touching any file: the
 * errors `createImage` would raise before it writes.
 *
 * @example
 * ```ts
 * import { checkImageCreate } from "@blkgraph/blkgraph";
 * import "../mod.ts";
 * await checkImageCreate("/tmp/never-created.qcow2", "qcow2", 1 << 20, { options: { cluster_size: "3000" } })
 *   .catch((e) => console.log(e.code)); // EINVAL
 * ```
 */
export async function checkImageCreate(filename: string, format: string, size: number, opts: CreateOptions = {}): Promise<void> {
  await planCreate(filename, format, size, opts).catch((e) => {
    throw tooLarge(e, format);
  });
}

const SIZE_HELP = "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.";
const BOOLS = ["on", "off", "yes", "no", "true", "false", "y", "n"];

/**
 * Checks creation options against the option tables of the format and of
 * the protocol `filename` names (`createOptions`), as qemu-img parses `-o`
 * before it creates anything: an option neither knows is refused, and a
 * string value must parse as the option's type (size, number, on/off);
 * a prefixed name whose protocol cannot create anything (`null-co://`) is
 * refused first.
 * What the values mean is the driver's to check (`checkImageCreate`). A
 * format without an option table checks its options itself, and so do the
 * drivers for names outside the tables when the protocol has none.
 *
 * @example
 * ```ts
 * import { BlockError, checkCreateOptions } from "@blkgraph/blkgraph";
 * try {
 *   checkCreateOptions("qcow2", "x.qcow2", { lazy_refcounts: "maybe" });
 * } catch (e) {
 *   console.log((e as BlockError).qemuMessage); // Parameter 'lazy_refcounts' expects 'on' or 'off'
 * }
 * ```
 */
export function checkCreateOptions(format: string, filename: string, options: Record<string, string | number | boolean>): void {
  const driver = getDriver(format);
  // First, as qemu-img's bdrv_img_create: a prefixed name whose protocol can neither create nor open-and-reuse an object.
  const named = driverForPrefix(filename);
  if (named && named.name !== "file" && !named.createFile && !named.createOpensExisting) {
    throw new BlockError("ENOTSUP", `Cannot create '${filename}': protocol driver '${named.name}' does not support image creation`, {
      qemuMessage: `Protocol driver '${named.name}' does not support image creation`,
    });
  }
  if (!driver.createOptions) return;
  const proto = named ?? getDriver("file");
  const types = new Map<string, string>();
  for (const o of [...driver.createOptions, ...(proto.createOptions ?? [])]) if (!types.has(o.name)) types.set(o.name, o.type);
  for (const [k, v] of Object.entries(options)) {
    const type = types.get(k) ?? types.get(k.replaceAll("-", "_"));
    // A protocol without an option table may take options of its own: the drivers check those.
    if (type === undefined && !proto.createOptions) continue;
    if (type === undefined) {
      throw new BlockError("EINVAL", `Unknown option '${k}' for format '${format}' (known options: ${[...types.keys()].join(", ")})`, {
        qemuMessage: `Invalid parameter '${k}'`,
      });
    }
    if (typeof v !== "string") continue;
    if (type === "size" && parseSize(v) === undefined) {
      throw new BlockError("EINVAL", `Invalid value '${v}' for option '${k}': expected a size (bytes, or a k, M, G, T, P or E suffix)`, {
        qemuMessage: `Parameter '${k}' expects a non-negative number below 2^64\n${SIZE_HELP}`,
      });
    }
    if (type === "num" && !/^[-+]?(0[xX][0-9a-fA-F]+|\d+)$/.test(v)) {
      throw new BlockError("EINVAL", `Invalid value '${v}' for option '${k}': expected a number`, {
        qemuMessage: `Parameter '${k}' expects a number`,
      });
    }
    if (type === "bool" && !BOOLS.includes(v)) {
      throw new BlockError("EINVAL", `Invalid value '${v}' for option '${k}': expected on or off`, {
        qemuMessage: `Parameter '${k}' expects 'on' or 'off'`,
      });
    }
  }
}

/** QEMU's bdrv_co_create_opts_simple: the object to write the image to could not be opened. */
function cannotOpenExisting(e: unknown, driver: string): unknown {
  if (!(e instanceof BlockError)) return e;
  return new BlockError(e.code, `Cannot create an image on protocol '${driver}', which only opens existing objects: ${e.message}`, {
    node: e.node,
    cause: e,
    qemuMessage: `Protocol driver '${driver}' does not support image creation, and opening the image failed: ${e.qemuMessage}`,
  });
}

interface CreatePlan {
  driver: BlockDriver;
  size: number;
  options: Record<string, string | number | boolean>;
  fileSpec: Options | BlockNode;
  /** The file that creating makes (removed again on failure). */
  created?: string;
  /** Creates the protocol's object first (protocols that are not host files). */
  createFile?: () => Promise<void>;
  /** `createFile` makes the object at the image's size (a prefixed name such as `rbd:`). */
  createFileSizes?: boolean;
  /** The protocol (nbd) only opens an existing object: its name, for the message when that fails. */
  opensExisting?: string;
}

async function planCreate(filename: string, format: string, size: number, opts: CreateOptions): Promise<CreatePlan> {
  const driver = getDriver(format);
  if (!driver.create) throw new BlockError("ENOTSUP", `Cannot create '${filename}': format '${format}' does not support image creation`);
  if (Number.isFinite(size) && size >= 2 ** 53) {
    throw new BlockError("EFBIG", `Cannot create '${filename}': a size of ${size} bytes is past 2^53, the largest blkgraph handles`);
  }
  if (!Number.isSafeInteger(size) || size < 0) throw new BlockError("EINVAL", `Cannot create '${filename}': invalid size ${size}`);
  size = Math.ceil(size / 512) * 512;
  let options = opts.options ?? {};
  if (!opts.file) checkCreateOptions(format, filename, options);
  const named = opts.file ? undefined : driverForPrefix(filename);
  let fileSpec: Options | BlockNode;
  let created: string | undefined;
  let createFile: (() => Promise<void>) | undefined;
  let proto: BlockDriver | undefined;
  let protocolOptions: Record<string, string | number | boolean> = {};
  const createSpec: Options = {};
  if (opts.file instanceof BlockNode) fileSpec = opts.file;
  else if (opts.file) {
    // The protocol below filters (an RBD image under blkdebug) is created as QEMU's bdrv_create_file does.
    const spec = normaliseSpec(opts.file as BlockSpec);
    fileSpec = spec;
    createFile = async () => {
      plan.fileSpec = await withProtocolCreated(spec, size);
    };
  } else {
    const spec = createFileSpec(filename);
    // Options only the protocol takes (the file driver's extent_size_hint, nocow, rbd's cluster_size) go to the new
    // file. size and preallocation stay with the format, whose create applies them through the file's truncate.
    proto = getDriver(String(spec.driver));
    const formatOwn = new Set((driver.createOptions ?? []).map((o) => o.name));
    // What QEMU's format passes down to its protocol's create: what the format does not take itself (raw: all but
    // the size). A format without an option table (luks) checks and applies all of its options itself.
    if (driver.createOptions) protocolOptions = Object.fromEntries(Object.entries(options).filter(([k]) => !formatOwn.has(k)));
    const own = new Set(["size", "preallocation", ...formatOwn]);
    for (const o of proto.createOptions ?? []) {
      if (own.has(o.name) || !(o.name in options)) continue;
      const { [o.name]: v, ...rest } = options;
      const key = o.name.replaceAll("_", "-");
      createSpec[key] = v;
      // Only the protocol's runtime options stay for opening the new file (rbd's cluster_size is for creating it).
      if (proto.options?.includes(key)) spec[key] = v;
      options = rest;
    }
    if (spec["extent-size-hint"] !== undefined) {
      const hint = parseSize(spec["extent-size-hint"]);
      if (hint === undefined) {
        throw new BlockError(
          "EINVAL",
          `Invalid value '${String(spec["extent-size-hint"])}' for option 'extent_size_hint': expected a size`,
        );
      }
      if (hint > 0xffffffff) throw new BlockError("EINVAL", `Extent size hint is too large (extent_size_hint ${hint})`);
    }
    fileSpec = spec;
    if (spec.driver === "file" && typeof spec.filename === "string" && !(await exists(spec.filename))) created = spec.filename;
  }
  // Everything is validated before a file exists (a failed create leaves nothing behind). The protocol judges what
  // the format hands down first: raw hands down everything (QEMU's raw_co_create_opts has no checks of its own), so
  // `-f raw -o preallocation=full nbd://…` is the NBD driver's to refuse.
  await proto?.checkCreate?.({ size, options: protocolOptions, filename });
  await driver.checkCreate?.({ size, options, filename });
  const protocol = opts.file ? undefined : driverForPrefix(filename);
  const sizes = !!(protocol?.createFile && protocol.parseFilename);
  // The object is made at the image's size only when that is the whole image (raw); a format that writes its own
  // layout (qcow2) gets an empty one, as QEMU's qcow2 creates its protocol file: on ssh, which cannot shrink a file,
  // `qemu-img create -f qcow2 ssh://… 4M` leaves a 192 KiB file.
  if (sizes) {
    const target = { ...protocol!.parseFilename!(filename), ...createSpec };
    createFile = () => protocol!.createFile!(target, driver.createOnlySizes?.(options) ? size : 0);
  }
  const opensExisting = named?.createOpensExisting ? named.name : undefined;
  const plan: CreatePlan = { driver, size, options, fileSpec, created, createFile, createFileSizes: sizes, opensExisting };
  return plan;
}

/** The protocol node a new image named `filename` is written to (`file:` and other prefixes parsed). */
function createFileSpec(filename: string): Options {
  const prefixed = driverForPrefix(filename);
  if (prefixed?.kind === "protocol" && prefixed.parseFilename) {
    const spec = { driver: prefixed.name, ...prefixed.parseFilename(filename) };
    return prefixed.name === "file" ? { ...spec, create: true } : spec;
  }
  if (!prefixed && hasProtocol(filename)) throw unknownProtocol(filename);
  return { driver: "file", filename, create: true };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}
