/**
 * Opening a graph: turns a spec (object, dotted string, `json:` filename or
 * plain filename) into connected {@linkcode BlockNode}s, probes formats,
 * hands out unique node names and creates images. The work is done in
 * `_open_node.ts` (one node at a time), `_node_names.ts` (the registry of
 * open nodes) and `_create.ts` (image creation); this module is the entry
 * point and re-exports their public functions.
 *
 * @module
 */

import { BlockError, toBlockError } from "./errors.ts";
import { AIO_MODES, isAioMode } from "./options.ts";
import { BlockNode } from "./node.ts";
import { type BlockSpec, normaliseSpec } from "./spec.ts";
import { openNode, type OpenState, parseCacheMode, withoutKey } from "./_open_node.ts";
import { createImage } from "./_create.ts";

export { closeAllNodes, findNode, nodeNames } from "./_node_names.ts";
export { type CacheFlags, hasProtocol, parseCacheMode } from "./_open_node.ts";
export { checkCreateOptions, checkImageCreate, createImage, type CreateOptions } from "./_create.ts";

/** Options for {@linkcode open}. */
export interface OpenOptions {
  /** Open every node read-only. */
  readOnly?: boolean;
  /** Format to use instead of probing a plain filename (`"qcow2"`, `"raw"`). */
  format?: string;
  /** Cache mode for the whole graph: writeback (default), writethrough, none, directsync, unsafe. */
  cache?: string;
  /**
   * AIO mode for the whole graph (qemu-img bench and qemu-io `-i`, QEMU's
   * BDRV_O_NATIVE_AIO / BDRV_O_IO_URING open flags): `threads`, `native`
   * or `io_uring`, the `aio` of every node whose driver takes one (`file`,
   * `host_device`) unless its own options set it.
   */
  aio?: string;
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
  if (opts.aio !== undefined && !isAioMode(opts.aio)) {
    throw new BlockError("EINVAL", `Invalid aio option: ${opts.aio} (expected one of ${AIO_MODES.join(", ")})`);
  }
  const readOnly = opts.readOnly ?? false;
  if (opts.copyOnRead && readOnly) throw new BlockError("EINVAL", "Can't use copy-on-read on read-only device");
  const state: OpenState = {
    readOnly: readOnly || (opts.snapshot ?? false),
    cache,
    aio: opts.aio,
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
