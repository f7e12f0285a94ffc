/**
 * blkgraph: a block-driver framework for Deno. Open a graph of block nodes
 * (protocol nodes such as `file` and `memory`, filters, and formats such as
 * `raw`), then read, write, flush and query it through one API.
 *
 * @example
 * ```ts
 * import { createImage, open } from "./mod.ts";
 * const path = await Deno.makeTempFile({ suffix: ".img" });
 * await createImage(path, "raw", 1 << 20);
 * await using img = await open({ driver: "raw", file: { driver: "file", filename: path } });
 * await img.pwrite(4096, new Uint8Array(4096).fill(0x5a));
 * await img.flush();
 * const back = new Uint8Array(4096);
 * await img.pread(4096, back);
 * console.log(back[0] === 0x5a); // true
 * await Deno.remove(path);
 * ```
 *
 * @module
 */

export * from "./core/errors.ts";
export * from "./core/events.ts";
export type * from "./core/types.ts";
export {
  type BlockDriver,
  BlockNode,
  type BlockStatus,
  type CreateContext,
  type DriverInstance,
  type MeasureInput,
  type NodeConfig,
  type NodeEvent,
  type NodeListener,
  type OpenContext,
} from "./core/node.ts";
export {
  MAX_LENGTH,
  newRequest,
  type NodeConfigOf,
  type NodeEventOf,
  type NodeListenerOf,
  type NodeStats,
  SECTOR_SIZE,
} from "./core/request.ts";
export { driverNames, getDriver, probeFormat, registerDriver } from "./core/registry.ts";
export { type BlockSpec, looksDotted, normaliseSpec, parseDotted, parseJsonFilename } from "./core/spec.ts";
export {
  type CacheFlags,
  createImage,
  type CreateOptions,
  findNode,
  nodeNames,
  open,
  type OpenOptions,
  parseCacheMode,
} from "./core/open.ts";
export { type Options, parseSize } from "./core/options.ts";
export { copyImage, type CopyOptions } from "./core/copy.ts";
export { fileDriver } from "./drivers/file.ts";
export { memoryDriver } from "./drivers/memory.ts";
export { rawDriver } from "./drivers/raw.ts";
export { createRbdImage, escapeRbd, parseRbdFilename, rbdDriver, type RbdLocation, removeRbdImage } from "./drivers/rbd/rbd.ts";
export * from "./filters/recorder.ts";
export * from "./filters/crash/mod.ts";
export * from "./filters/blkdebug.ts";
export * from "./filters/throttle.ts";
export * from "./drivers/qcow2/mod.ts";
export * from "./drivers/nbd/mod.ts";
export * from "./drivers/luks/mod.ts";
export { defineObject, defineSecret, getSecret, hasSecret, removeSecret, type SecretFormat, type SecretOptions } from "./core/secrets.ts";
export { type TraceEvent, type TraceGraphNode, type Tracer, type TraceSink, traceTo } from "./cli/_trace_events.ts";
