/**
 * The graph opener behind `open()` and `createImage()`: turns a spec into
 * connected nodes, one node at a time — prefixed and `json:` filenames,
 * format probing, the options every node takes (read-only, force-share,
 * cache), child specs, and the `OpenContext` a driver opens with.
 *
 * @module
 */

import { BlockError, toBlockError } from "./errors.ts";
import { BlockNode } from "./node.ts";
import { optBool, type Options, optString } from "./options.ts";
import { driverForPrefix, getDriver, PROBE_BYTES, probeFormat, protocolForFilename } from "./registry.ts";
import { isPlainObject, normaliseSpec } from "./spec.ts";
import type { ChildRole } from "./types.ts";
import type { BlockDriver, OpenContext } from "./node.ts";
import { claimNodeName, registerNode, unregisterNode } from "./_node_names.ts";

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
export function unknownProtocol(filename: string): BlockError {
  const proto = filename.slice(0, filename.indexOf(":"));
  if (QEMU_PROTOCOLS.includes(proto.toLowerCase())) {
    return new BlockError("ENOTSUP", `Protocol '${proto}' is not supported: no '${proto}' driver is registered (filename '${filename}')`);
  }
  return new BlockError("EINVAL", `Unknown protocol '${proto}' (filename '${filename}'; write ./${filename} for a file of that name)`);
}

/** Options that apply to every node (not passed to drivers). */
const GENERIC_KEYS = ["driver", "node-name", "read-only", "auto-read-only", "cache", "discard", "detect-zeroes", "force-share"];

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

/** How the node being opened is opened (what its parent or `open()` passes down). */
export interface OpenState {
  readOnly: boolean;
  /** The node being opened got its driver from probing. */
  probed?: boolean;
  check?: boolean;
  forceShare?: boolean;
  noIo?: boolean;
  cache?: CacheFlags;
  /** The graph's AIO mode (qemu-img's `-i`): the `aio` of nodes whose driver takes one and whose options do not set it. */
  aio?: string;
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

/** `o` without `key`. */
export function withoutKey(o: Options, key: string): Options {
  const { [key]: _drop, ...rest } = o;
  return rest;
}

/** Opens one node (and, through its driver, its children) from `input`. */
export async function openNode(input: Options | string | BlockNode, state: OpenState): Promise<BlockNode> {
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
    options = { ...options, driver: protocolForFilename(filename) };
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
  if (state.aio !== undefined && driverOptions.aio === undefined && driver.options?.includes("aio")) driverOptions.aio = state.aio;

  const name = claimNodeName(optString(options, "node-name", driverName));

  const node = new BlockNode({
    name,
    driver,
    options: driverOptions,
    readOnly,
    noFlush: cache?.noFlush,
    writeThrough: state.top ? cache?.writeThrough : false,
    probed: state.probed,
  });
  registerNode(node);
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
        aio: state.aio,
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
    unregisterNode(name);
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
