/**
 * The `recorder` filter: a pass-through filter over its `file` child that
 * logs every modifying request it forwards — writes (with a copy of the
 * data), write-zeroes, discards, flushes and truncates — with a submit and a
 * completion stamp from one process-wide logical clock. Two recorders in one
 * graph (one above a format, one below it) therefore share a time line, which
 * is what the crash explorer ({@link ./crash/mod.ts}) needs to relate guest
 * flushes to host writes.
 *
 * Persistence model the log is read with (dm-log-writes / CrashMonkey):
 * everything that completed before a flush was submitted is durable once
 * that flush completes; a FUA write is durable when it completes; any other
 * write may be lost, survive, or survive in part.
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * import { getRecorder } from "@blkgraph/blkgraph/filters/recorder";
 * await using node = await open({ driver: "recorder", file: { driver: "memory", size: 65536 } });
 * await node.pwrite(0, new Uint8Array(512).fill(1));
 * await node.flush();
 * console.log(getRecorder(node).log.map((op) => op.op)); // ["write", "flush"]
 * ```
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import type { BlockNode } from "../core/node.ts";
import { checkKnownOptions } from "../core/options.ts";
import { registerDriver } from "../core/registry.ts";
import type { FilterCall } from "../core/types.ts";
import type { BlockDriver, DriverInstance } from "../core/node.ts";

/** The kinds of operation a recorder logs. */
export type RecordedKind = "write" | "write-zeroes" | "discard" | "flush" | "truncate" | "mark";

/** One logged request. */
export interface RecordedOp {
  /** What the request was. */
  op: RecordedKind;
  /** Byte offset (for truncate: the new length; 0 for flush and mark). */
  offset: number;
  /** Byte length (0 for flush, truncate and mark). */
  length: number;
  /** The write was FUA: durable when it completed. */
  fua: boolean;
  /** Copy of the written data (writes only). */
  data?: Uint8Array;
  /** Length of the node before a truncate. */
  oldLength?: number;
  /** Label of a mark. */
  label?: string;
  /** Logical clock when the request was submitted. */
  submit: number;
  /** Logical clock when it completed; undefined while in flight or after a failure. */
  complete?: number;
  /** `performance.now()` at submission. */
  time: number;
  /** Error message when the request failed. */
  error?: string;
}

let clock = 0;

/** Advances the process-wide logical clock and returns the new value. */
export function recorderTick(): number {
  return ++clock;
}

/** The current value of the process-wide logical clock. */
export function recorderClock(): number {
  return clock;
}

/** A recorder filter instance: the driver callbacks plus the log. */
export class RecorderInstance implements DriverInstance {
  /** Everything recorded so far, in submission order. */
  readonly log: RecordedOp[] = [];
  /** Forwarded unchanged to the child; the child's core emulates FUA if needed. */
  readonly supportsFua = true;
  #child: BlockNode;

  /** Wraps `child` (done by the driver's `open`). */
  constructor(child: BlockNode) {
    this.#child = child;
  }

  /** The node requests are forwarded to. */
  get child(): BlockNode {
    return this.#child;
  }

  /** Forgets everything recorded. */
  clear(): void {
    this.log.length = 0;
  }

  /** Adds a mark (a named point in the log, as dm-log-writes' `mark`). */
  mark(label: string): RecordedOp {
    const t = recorderTick();
    const op: RecordedOp = { op: "mark", offset: 0, length: 0, fua: false, label, submit: t, complete: t, time: performance.now() };
    this.log.push(op);
    return op;
  }

  #begin(op: RecordedKind, offset: number, length: number, fua: boolean, data?: Uint8Array): RecordedOp {
    const rec: RecordedOp = { op, offset, length, fua, submit: recorderTick(), time: performance.now() };
    if (data) rec.data = data.slice();
    this.log.push(rec);
    return rec;
  }

  async #run<T>(rec: RecordedOp, next: () => Promise<T>): Promise<T> {
    let r: T;
    try {
      r = await next();
    } catch (e) {
      rec.error = e instanceof Error ? e.message : String(e);
      throw e;
    }
    rec.complete = recorderTick();
    return r;
  }

  /**
   * Logs every write, write-zeroes, discard, flush and truncate around its
   * passage to the child (submit and completion stamps, the error if it
   * failed); reads and block status pass unlogged. The core passes a flush
   * here only when it can reach a disk (something written since the last
   * one, and not cache.no-flush), as QEMU calls blklogwrites' flush_to_disk.
   */
  intercept<T>(call: FilterCall, next: () => Promise<T>): Promise<T> {
    switch (call.op) {
      case "write":
        return this.#run(this.#begin("write", call.offset, call.length, call.fua ?? false, call.data), next);
      case "write-zeroes":
        return this.#run(this.#begin("write-zeroes", call.offset, call.length, call.fua ?? false), next);
      case "discard":
        return this.#run(this.#begin("discard", call.offset, call.length, false), next);
      case "flush":
        return this.#run(this.#begin("flush", 0, 0, false), next);
      case "truncate": {
        const rec = this.#begin("truncate", call.offset, 0, false);
        rec.oldLength = this.#child.length;
        return this.#run(rec, next);
      }
      default:
        return next();
    }
  }

  /** Length of the child. */
  getLength(): number {
    return this.#child.length;
  }

  /** Information for `info`. */
  info(): Record<string, unknown> {
    return { "recorded-ops": this.log.length };
  }
}

const recorders = new WeakMap<BlockNode, RecorderInstance>();

/** The recorder filter driver. */
export const recorderDriver: BlockDriver = {
  name: "recorder",
  kind: "filter",
  options: [],
  async open(ctx): Promise<DriverInstance> {
    checkKnownOptions(ctx.options, [], "recorder");
    const child = await ctx.openChild("file");
    const rec = new RecorderInstance(child!);
    recorders.set(ctx.node, rec);
    return rec;
  },
};

/**
 * The {@linkcode RecorderInstance} serving a `recorder` node.
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * import { getRecorder } from "@blkgraph/blkgraph/filters/recorder";
 * await using node = await open({ driver: "recorder", file: { driver: "memory", size: 4096 } });
 * getRecorder(node).mark("start");
 * console.log(getRecorder(node).log.length); // 1
 * ```
 */
export function getRecorder(node: BlockNode): RecorderInstance {
  const rec = recorders.get(node);
  if (!rec) {
    throw new BlockError("EINVAL", `Node '${node.name}' is not a recorder node (driver '${node.driver.name}')`, { node: node.name });
  }
  return rec;
}

registerDriver(recorderDriver);
