/**
 * Opening a graph: turns a spec (object, dotted string, `json:` filename or
 * plain filename) into connected {@linkcode BlockNode}s, probes formats,
 * hands out unique node names and creates images.
 *
 * @module
 */

import { BlockError, toBlockError } from "./errors.ts";
import { BlockNode } from "./node.ts";
import { optBool, type Options, optString, parseSize } from "./options.ts";
import { driverForPrefix, getDriver, PROBE_BYTES, probeFormat } from "./registry.ts";
import { type BlockSpec, isPlainObject, normaliseSpec } from "./spec.ts";
import type { ChildRole } from "./types.ts";
import type { BlockDriver, OpenContext } from "./node.ts";

const nodes = new Map<string, BlockNode>();
let generated = 0;

/**
 * What happens to nodes still open when the process ends:
 * - the script ends (the event loop drains): `beforeunload` closes every
 *   open graph from its top, so caches are written back and flushed, as
 *   `close()` does;
 * - `Deno.exit()`: `unload` runs no async code, so each node writes back
 *   synchronously what it can (`exitSync`: qcow2 metadata straight to a
 *   `file` node) and protocol nodes flush; what cannot be saved safely is
 *   lost as in a crash, with a warning on stderr — the image stays
 *   consistent;
 * - SIGKILL or a power cut: what the crash guarantee says — every write
 *   completed before the last completed flush survives, and the image is
 *   consistent (at worst leaked clusters).
 */
function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  globalThis.addEventListener("beforeunload", () => {
    for (const n of openRoots()) n.close().catch(() => {});
  });
  globalThis.addEventListener("unload", () => exitSyncAll());
}
let exitHooksInstalled = false;

/** Open nodes no other open node holds (the tops of the open graphs). */
function openRoots(): BlockNode[] {
  return [...nodes.values()].filter((n) => !n.hasParents && !n.closed);
}

/** Closes every open graph from its top (what the CLI does on SIGINT and SIGTERM). */
export async function closeAllNodes(): Promise<void> {
  for (const n of openRoots()) await n.close().catch(() => {});
}

function exitSyncAll(): void {
  // Formats and filters write back first; then protocol nodes make it durable.
  const all = [...nodes.values()].filter((n) => !n.closed);
  for (const n of [...all.filter((n) => n.driver.kind !== "protocol"), ...all.filter((n) => n.driver.kind === "protocol")]) {
    let ok: boolean;
    try {
      ok = n.exitSync();
    } catch {
      ok = false;
    }
    if (!ok) {
      console.error(
        `blkgraph: warning: node '${n.name}' (${n.driver.name}) was still open with unwritten data at Deno.exit(); its writes since the last flush are lost as in a crash (the image stays consistent). Close nodes, or flush, before exiting.`,
      );
    }
  }
}

/**
 * Looks up an open node by name.
 *
 * @example
 * ```ts
 * import { findNode, open } from "@blkgraph/blkgraph";
 * await using _disk = await open({ driver: "memory", size: 4096, "node-name": "scratch" });
 * console.log(findNode("scratch")?.driver.name); // memory
 * ```
 */
export function findNode(name: string): BlockNode | undefined {
  return nodes.get(name);
}

/**
 * Names of all open nodes.
 *
 * @example
 * ```ts
 * import { nodeNames, open } from "@blkgraph/blkgraph";
 * await using _disk = await open({ driver: "memory", size: 4096, "node-name": "listed" });
 * console.log(nodeNames().includes("listed")); // true
 * ```
 */
export function nodeNames(): string[] {
  return [...nodes.keys()];
}

/**
 * Whether `filename` starts with a protocol prefix (`nbd://`, `rbd:`,
 * `file:`): a `:` comes before any `/`, as QEMU's `path_has_protocol`.
 * `/tmp/a:b.img` and `./image:x.qcow2` are plain paths.
 *
 * @example
 * ```ts
 * import { hasProtocol } from "@blkgraph/blkgraph";
 * console.log(hasProtocol("nbd://127.0.0.1/x"), hasProtocol("/tmp/a:b.img")); // true false
 * ```
 */
export function hasProtocol(filename: string): boolean {
  const m = /[:/]/.exec(filename);
  return m !== null && m[0] === ":";
}

/** Protocols QEMU has; a filename naming one whose driver is not registered is "not supported" rather than unknown. */
const QEMU_PROTOCOLS = [
  "nbd",
  "nbd+tcp",
  "nbd+unix",
  "rbd",
  "iscsi",
  "iser",
  "http",
  "https",
  "ftp",
  "ftps",
  "ssh",
  "gluster",
  "gluster+tcp",
  "gluster+unix",
  "gluster+rdma",
  "nfs",
  "nvme",
  "vvfat",
  "null-co",
  "null-aio",
  "blkverify",
  "quorum",
  "throttle",
  "fat",
];

/** The error for a prefixed filename no registered driver parses. */
function unknownProtocol(filename: string): BlockError {
  const proto = filename.slice(0, filename.indexOf(":"));
  if (QEMU_PROTOCOLS.includes(proto.toLowerCase())) {
    return new BlockError("ENOTSUP", `Protocol '${proto}' is not supported: no '${proto}' driver is registered (filename '${filename}')`);
  }
  return new BlockError("EINVAL", `Unknown protocol '${proto}' (filename '${filename}'; write ./${filename} for a file of that name)`);
}

/** Options that apply to every node (not passed to drivers). */
const GENERIC_KEYS = ["driver", "node-name", "read-only", "auto-read-only", "cache", "discard", "detect-zeroes", "force-share"];

/** Options for {@linkcode open}. */
export interface OpenOptions {
  /** Open every node read-only. */
  readOnly?: boolean;
  /** Format to use instead of probing a plain filename (`"qcow2"`, `"raw"`). */
  format?: string;
  /** Cache mode for the whole graph: writeback (default), writethrough, none, directsync, unsafe. */
  cache?: string;
  /**
   * Open read-only while letting others write the image (QEMU's
   * `force-share`, qemu-img's `-U`). Without it a read-only open takes
   * QEMU's "consistent read" lock and refuses to share "write", as QEMU does.
   */
  forceShare?: boolean;
  /**
   * The graph is only described, never read or written (QEMU's
   * BDRV_O_NO_IO, as qemu-img info opens): an encrypted image opens without
   * its key.
   */
  noIo?: boolean;
  /**
   * Open for a consistency check (qemu-img check's BDRV_O_CHECK): format
   * drivers open images they would refuse or repair at open (corrupt bit,
   * dirty refcounts) and change nothing until asked to repair.
   */
  check?: boolean;
  /**
   * Snapshot mode (QEMU's `snapshot=on`, qemu-io `-s`): the image is opened
   * read-only as the backing file of a temporary qcow2 overlay that takes
   * every write and is deleted when the graph closes; the image itself is
   * never changed.
   */
  snapshot?: boolean;
  /**
   * Copy-on-read (qemu-io `-C`): a `copy-on-read` filter goes on top, so
   * reads of data the image takes from its backing file copy it into the
   * image. Needs a writable open.
   */
  copyOnRead?: boolean;
}

/** Flags a cache mode stands for. */
export interface CacheFlags {
  /** Bypass the host page cache (O_DIRECT). */
  direct: boolean;
  /** Flushes never reach the disk. */
  noFlush: boolean;
  /** Every write is FUA. */
  writeThrough: boolean;
}

/**
 * Parses a cache mode name into flags (QEMU's `-drive cache=`).
 *
 * @example
 * ```ts
 * import { parseCacheMode } from "@blkgraph/blkgraph";
 * console.log(parseCacheMode("none")); // { direct: true, noFlush: false, writeThrough: false }
 * ```
 */
export function parseCacheMode(mode: string): CacheFlags {
  switch (mode) {
    case "writeback":
      return { direct: false, noFlush: false, writeThrough: false };
    case "writethrough":
      return { direct: false, noFlush: false, writeThrough: true };
    case "none":
      return { direct: true, noFlush: false, writeThrough: false };
    case "directsync":
      return { direct: true, noFlush: false, writeThrough: true };
    case "unsafe":
      return { direct: false, noFlush: true, writeThrough: false };
    default:
      throw new BlockError("EINVAL", `Invalid cache mode '${mode}': expected writeback, writethrough, none, directsync or unsafe`);
  }
}

/**
 * Opens a block graph from a spec.
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * await using disk = await open("driver=memory,size=1M");
 * console.log(disk.length); // 1048576
 * ```
 */
export async function open(spec: BlockSpec | BlockNode, opts: OpenOptions = {}): Promise<BlockNode> {
  if (spec instanceof BlockNode) return spec;
  let options = normaliseSpec(spec);
  if (opts.format && options.driver === undefined) {
    // A prefixed filename (blkdebug:CONFIG:IMAGE, nbd://) opens its own driver under the format.
    const fname = options.filename;
    const literal = typeof fname === "string" && fname.startsWith("json:");
    options = {
      driver: opts.format,
      file: literal ? { driver: "file", filename: fname } : { filename: fname },
      ...withoutKey(options, "filename"),
    };
  }
  const cache = opts.cache ? parseCacheMode(opts.cache) : undefined;
  const readOnly = opts.readOnly ?? false;
  if (opts.copyOnRead && readOnly) throw new BlockError("EINVAL", "Can't use copy-on-read on read-only device");
  const state: OpenState = {
    readOnly: readOnly || (opts.snapshot ?? false),
    cache,
    probe: true,
    top: true,
    forceShare: opts.forceShare ?? false,
    check: opts.check ?? false,
    noIo: opts.noIo,
  };
  let node = await openNode(options, state);
  if (opts.snapshot) node = await tempOverlay(node, readOnly);
  if (opts.copyOnRead) {
    try {
      node = await openNode({ driver: "copy-on-read", file: node }, { ...state, readOnly: false, probe: false });
    } catch (e) {
      await node.close();
      throw e;
    }
  }
  return node;
}

/**
 * Puts a temporary qcow2 overlay over `base` (QEMU's
 * bdrv_append_temp_snapshot): created in $TMPDIR (/var/tmp for /tmp, as
 * QEMU), opened with cache=unsafe, unlinked at once so nothing is left
 * behind even after a crash; closing the overlay closes `base`.
 */
async function tempOverlay(base: BlockNode, readOnly: boolean): Promise<BlockNode> {
  let dir = Deno.env.get("TMPDIR") || "/tmp";
  if (dir === "/tmp") dir = "/var/tmp";
  let path: string | undefined;
  try {
    path = await Deno.makeTempFile({ dir, prefix: "vl." }).catch(() => Deno.makeTempFile({ prefix: "vl." }));
    await createImage(path, "qcow2", base.length);
    return await openNode(
      { driver: "qcow2", file: { driver: "file", filename: path }, backing: base },
      { readOnly, probe: false, top: true, cache: { direct: false, noFlush: true, writeThrough: false } },
    );
  } catch (e) {
    await base.close();
    throw toBlockError(e, `Could not create temporary overlay '${path ?? dir}'`);
  } finally {
    if (path) await Deno.remove(path).catch(() => {});
  }
}

interface OpenState {
  readOnly: boolean;
  /** The node being opened got its driver from probing. */
  probed?: boolean;
  check?: boolean;
  forceShare?: boolean;
  noIo?: boolean;
  cache?: CacheFlags;
  probe: boolean;
  top: boolean;
}

/** `over` laid over `base`, nested objects merged key by key. */
function mergeOptions(base: Options, over: Options): Options {
  const out: Options = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isPlainObject(b) && isPlainObject(v) ? mergeOptions(b, v) : v;
  }
  return out;
}

function withoutKey(o: Options, key: string): Options {
  const { [key]: _drop, ...rest } = o;
  return rest;
}

async function openNode(input: Options | string | BlockNode, state: OpenState): Promise<BlockNode> {
  if (input instanceof BlockNode) return input;
  let options: Options = typeof input === "string" ? normaliseSpec(input) : input;
  if (!isPlainObject(options)) throw new BlockError("EINVAL", `Invalid block spec: ${JSON.stringify(input)}`);

  // A filename with a protocol prefix (json:, blkdebug:, nbd://) expands into options.
  const filename = typeof options.filename === "string" ? options.filename : undefined;
  if (filename !== undefined && options.driver === undefined) {
    if (filename.startsWith("json:")) return openNode({ ...normaliseSpec(filename), ...withoutKey(options, "filename") }, state);
    const prefixed = driverForPrefix(filename);
    if (prefixed?.parseFilename) {
      // Probing, a prefixed name (blkdebug:CONF:IMG, nbd://...) is the protocol
      // layer and the format is probed through it, as QEMU's bdrv_open does:
      // qcow2 over blkdebug over the file.
      if (state.probe) return openProbed(filename, options, state);
      return openNode({ driver: prefixed.name, ...prefixed.parseFilename(filename), ...withoutKey(options, "filename") }, state);
    }
    if (hasProtocol(filename)) throw unknownProtocol(filename);
    if (state.probe) return openProbed(filename, options, state);
    options = { ...options, driver: "file" };
  }
  const driverName = optString(options, "driver", "(any)");
  // No driver but a file child (json:{"file": {...}}): probe the format over it, as QEMU does.
  if (!driverName && options.file !== undefined && state.probe) return openProbedOver(options, state);
  if (!driverName) throw new BlockError("EINVAL", `Invalid block spec ${JSON.stringify(options)}: 'driver' is missing`);
  const driver = getDriver(driverName);

  // A filter given a filename in its own syntax (driver=blkdebug + blkdebug::IMG)
  // parses it, as QEMU's bdrv_fill_options does; the options given win.
  if (
    filename !== undefined && driver.kind === "filter" && driver.parseFilename && driver.protocolPrefix &&
    filename.startsWith(driver.protocolPrefix + ":")
  ) {
    options = mergeOptions(driver.parseFilename(filename), withoutKey(options, "filename"));
    return openNode(options, state);
  }

  // A format or filter node given `filename` passes it to its primary child
  // (QEMU's bdrv_open_child(filename, ...); blkdebug's x-image): a new child,
  // or one given as options without a filename of its own.
  if (driver.kind !== "protocol" && filename !== undefined) {
    const role = driver.kind === "filter" ? (driver.primaryChildRole ?? "file") : "file";
    const child = options[role];
    if (child === undefined) options = { ...withoutKey(options, "filename"), [role]: { filename } };
    else if (isPlainObject(child) && child.filename === undefined) {
      options = { ...withoutKey(options, "filename"), [role]: { ...child, filename } };
    }
  }

  const readOnly = state.readOnly || (optBool(options, "read-only", driverName) ?? false);
  const forceShareOpt = optBool(options, "force-share", driverName);
  if (forceShareOpt && !readOnly) {
    throw new BlockError(
      "EINVAL",
      `Invalid option 'force-share' of node '${options["node-name"] ?? driverName}': force-share=on can only be used with read-only images`,
    );
  }
  const forceShare = readOnly && (forceShareOpt ?? state.forceShare ?? false);
  let cache = state.cache;
  const cacheOpt = options.cache;
  if (typeof cacheOpt === "string") cache = parseCacheMode(cacheOpt);
  else if (isPlainObject(cacheOpt)) {
    cache = {
      direct: optBool(cacheOpt, "direct", driverName) ?? cache?.direct ?? false,
      noFlush: optBool(cacheOpt, "no-flush", driverName) ?? cache?.noFlush ?? false,
      writeThrough: cache?.writeThrough ?? false,
    };
  }

  const childKeys = new Set<string>(["file", "backing", "data-file", ...(driver.childKeys ?? [])]);
  const childSpecs = new Map<string, unknown>();
  const driverOptions: Options = {};
  for (const [k, v] of Object.entries(options)) {
    if (GENERIC_KEYS.includes(k)) continue;
    if (childKeys.has(k) && driver.kind !== "protocol") childSpecs.set(k, v);
    else driverOptions[k] = v;
  }
  if (driver.kind === "protocol" && cache?.direct && driverOptions["cache.direct"] === undefined) {
    driverOptions["cache.direct"] = true;
  }

  let name = optString(options, "node-name", driverName);
  if (name !== undefined) {
    if (!/^[A-Za-z][A-Za-z0-9_.-]{0,31}$/.test(name)) {
      throw new BlockError(
        "EINVAL",
        `Invalid node-name '${name}': it must start with a letter and hold only letters, digits, '-', '.' and '_' (at most 32 characters)`,
      );
    }
    if (nodes.has(name)) throw new BlockError("EEXIST", `Duplicate node name '${name}': a node with that name is already open`);
  } else {
    do name = `#block${String(++generated).padStart(3, "0")}`; while (nodes.has(name));
  }

  const node = new BlockNode({
    name,
    driver,
    options: driverOptions,
    readOnly,
    noFlush: cache?.noFlush,
    writeThrough: state.top ? cache?.writeThrough : false,
    probed: state.probed,
  });
  nodes.set(name, node);
  installExitHooks();
  node.onClose(() => nodes.delete(name!));
  const ctx: OpenContext = {
    node,
    options: driverOptions,
    readOnly,
    forceShare,
    noIo: state.noIo,
    check: state.check,
    probed: state.probed ?? false,
    async openChild(role: ChildRole, spec?: unknown, copts = {}) {
      const s = spec ?? childSpecs.get(role);
      if (s === undefined || s === null) {
        if (copts.optional) return undefined;
        throw new BlockError(
          "EINVAL",
          `Driver '${driverName}' needs a '${role}' child: give '${role}' (for example ${role}.driver=file,${role}.filename=IMAGE)`,
        );
      }
      const child = await openNode(s as Options | string | BlockNode, {
        readOnly: copts.readOnly ?? readOnly,
        forceShare,
        noIo: state.noIo,
        cache: { direct: cache?.direct ?? false, noFlush: cache?.noFlush ?? false, writeThrough: false },
        // A filter's children are probed when the filter is (QEMU passes
        // BDRV_O_PROTOCOL down through filters): blkdebug:CONF:IMG at the top
        // probes IMG; under a format node it is the raw file.
        probe: copts.probe ?? (driver.kind === "filter" && state.probe),
        top: false,
      });
      node.attachChild(role, child);
      return child;
    },
    childSpec: (role: ChildRole) => childSpecs.get(role),
  };
  try {
    node.attach(await driver.open(ctx));
  } catch (e) {
    for (const c of node.children.values()) await c.close().catch(() => {});
    nodes.delete(name);
    throw e;
  }
  return node;
}

async function openProbed(filename: string, options: Options, state: OpenState): Promise<BlockNode> {
  // Options given for the file child (open -o file.node-name=x IMG) stay with it.
  const given = isPlainObject(options.file) ? options.file : {};
  return await openProbedOver({ ...withoutKey(options, "filename"), file: { ...given, filename, ...pickCache(options) } }, state);
}

/** Opens `options.file` as the protocol layer, probes its format and opens the format node over it with the rest of `options`. */
async function openProbedOver(options: Options, state: OpenState): Promise<BlockNode> {
  const file = await openNode(options.file as Options | string | BlockNode, { ...state, top: false, probe: false });
  const filename = typeof file.options.filename === "string" ? file.options.filename : file.name;
  let driver: BlockDriver;
  try {
    const head = new Uint8Array(Math.min(PROBE_BYTES, file.length));
    await file.pread(0, head);
    driver = probeFormat(head, filename);
  } catch (e) {
    await file.close();
    throw toBlockError(e, `Cannot probe the format of '${filename}'`);
  }
  const rest = withoutKey(options, "file");
  try {
    return await openNode({ ...rest, driver: driver.name, file }, { ...state, probed: true });
  } catch (e) {
    if (!file.closed) await file.close();
    throw e;
  }
}

function pickCache(options: Options): Options {
  return options.cache === undefined ? {} : { cache: options.cache };
}

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
export async function createImage(filename: string, format: string, size: number, opts: CreateOptions = {}): Promise<void> {
  const plan = await planCreate(filename, format, size, opts);
  // Not a host file: the protocol creates its object (an RBD image) first.
  await plan.createFile?.();
  let file: BlockNode | undefined;
  try {
    file = await openNode(plan.fileSpec, { readOnly: false, probe: false, top: false });
    const allowed = file.allowBeyondEof;
    file.allowBeyondEof = true; // the new image is written past the end of the empty file
    try {
      if (file.length > 0) await file.truncate(0);
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
  await planCreate(filename, format, size, opts);
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
}

async function planCreate(filename: string, format: string, size: number, opts: CreateOptions): Promise<CreatePlan> {
  const driver = getDriver(format);
  if (!driver.create) throw new BlockError("ENOTSUP", `Cannot create '${filename}': format '${format}' does not support image creation`);
  if (!Number.isSafeInteger(size) || size < 0) throw new BlockError("EINVAL", `Cannot create '${filename}': invalid size ${size}`);
  size = Math.ceil(size / 512) * 512;
  let options = opts.options ?? {};
  let fileSpec: Options | BlockNode;
  let created: string | undefined;
  let createFile: (() => Promise<void>) | undefined;
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
    // Options only the protocol takes (the file driver's extent_size_hint, nocow) go to the new file.
    // size and preallocation stay with the format, whose create applies them through the file's truncate.
    const proto = getDriver(String(spec.driver));
    const own = new Set(["size", "preallocation", ...(driver.createOptions ?? []).map((o) => o.name)]);
    for (const o of proto.createOptions ?? []) {
      if (own.has(o.name) || !(o.name in options)) continue;
      const { [o.name]: v, ...rest } = options;
      spec[o.name.replaceAll("_", "-")] = v;
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
  // Everything is validated before a file exists (a failed create leaves nothing behind).
  await driver.checkCreate?.({ size, options, filename });
  const protocol = opts.file ? undefined : driverForPrefix(filename);
  if (protocol?.createFile && protocol.parseFilename) createFile = () => protocol.createFile!(protocol.parseFilename!(filename), size);
  const plan: CreatePlan = { driver, size, options, fileSpec, created, createFile };
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
