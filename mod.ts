/**
 * blkgraph: QEMU's block layer as a Deno library. Open a graph of block nodes
 * (protocol nodes such as `file`, `memory`, `nbd` and `rbd`, filters such as
 * `blkdebug`, `throttle` and `recorder`, formats such as `raw`, `qcow2` and
 * `luks`), then read, write, flush and query it through one API.
 *
 * This module is the user-facing surface: opening and creating images, the
 * node, errors, events, copying, secrets, tracing, driver registration and the
 * option helpers a driver author needs, and the crash explorer's entry point.
 * Every driver and filter registers itself when this module loads. What is
 * particular to one driver or filter lives in its subpath module:
 * `@blkgraph/blkgraph/drivers/qcow2`, `…/drivers/nbd` (`serveNbd`),
 * `…/drivers/luks`, `…/drivers/rbd`, `…/drivers/file`, `…/drivers/memory`,
 * `…/drivers/raw`, `…/filters/blkdebug`, `…/filters/throttle`,
 * `…/filters/recorder`, `…/filters/crash`.
 *
 * @example
 * ```ts
 * import { createImage, open } from "@blkgraph/blkgraph";
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

// Every driver and filter registers itself on import (`_drivers.ts`).
import "./_drivers.ts";

export {
  BlockError,
  type BlockErrorDetails,
  CacheFlushError,
  type CacheFlushFailure,
  CorruptImageError,
  type ErrnoCode,
  errnoCode,
  qemuReportedLines,
  toBlockError,
} from "./core/errors.ts";
export { BLKDBG_EVENTS, type BlkdebugEvent, isBlkdebugEvent } from "./core/events.ts";
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
export type { NodeBitmaps, NodeDebug, NodeSnapshots } from "./core/node_groups.ts";
export { MAX_LENGTH, type NodeConfigOf, type NodeEventOf, type NodeListenerOf, type NodeStats, SECTOR_SIZE } from "./core/request.ts";
export { driverNames, getDriver, probeFormat, protocolForFilename, registerDriver } from "./core/registry.ts";
export { type BlockSpec, parseDotted, parseJsonFilename } from "./core/spec.ts";
export {
  type CacheFlags,
  checkCreateOptions,
  checkImageCreate,
  createImage,
  type CreateOptions,
  findNode,
  hasProtocol,
  nodeNames,
  open,
  type OpenOptions,
  parseCacheMode,
} from "./core/open.ts";
export {
  AIO_MODES,
  checkKnownOptions,
  checkPreallocation,
  isAioMode,
  optBool,
  optEnum,
  optInt,
  type Options,
  optNumber,
  optSize,
  optString,
  parseSize,
  type PreallocationSupport,
} from "./core/options.ts";
export { copyImage, type CopyOptions } from "./core/copy.ts";
export { ioBuffer } from "./core/_io_buffer.ts";
export { defineObject, defineSecret, getSecret, hasSecret, removeSecret, type SecretFormat, type SecretOptions } from "./core/secrets.ts";
export { type TraceEvent, type TraceGraphNode, type Tracer, type TraceSink, traceTo } from "./cli/_trace_events.ts";
export {
  type CrashFailure,
  type CrashOracle,
  type CrashRecipe,
  type ExploreOptions,
  type ReplayOp,
  runCrashExploration,
  type RunOptions,
  type RunResult,
} from "./filters/crash/mod.ts";
export type { RecordedKind, RecordedOp } from "./filters/recorder.ts";
