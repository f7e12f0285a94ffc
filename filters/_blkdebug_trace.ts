/**
 * blkdebug tracing: the record a blkdebug node emits for each event, flush
 * and injected error, and its text and JSON-lines formats.
 *
 * @module
 */

import type { BlkdebugEvent } from "../core/events.ts";
import type { RequestInfo } from "../core/types.ts";
import type { BlkdebugIoType } from "./_blkdebug_config.ts";

/** One traced happening at a blkdebug node. */
export interface BlkdebugTraceRecord {
  /** An event delivered, a flush passing through, or an injected error. */
  kind: "event" | "flush" | "error";
  /** Name of the blkdebug node. */
  node: string;
  /** `performance.now()` when it happened. */
  time: number;
  /** The event (kind `event`, and the arming event for kind `error`). */
  event?: BlkdebugEvent;
  /** The request that caused it, when known. */
  req?: RequestInfo;
  /** The blkdebug state machine's state afterwards. */
  state: number;
  /** Kind `error`: the error code injected. */
  code?: string;
  /** Kind `error`: the failed operation. */
  op?: BlkdebugIoType;
  /** Kind `error`: offset of the failed request at this node. */
  offset?: number;
  /** Kind `error`: length of the failed request at this node. */
  length?: number;
}

/** Receives {@linkcode BlkdebugTraceRecord}s. */
export type BlkdebugTraceListener = (record: BlkdebugTraceRecord) => void;

/** Formats one trace record as a text line or a JSON line (no newline). */
export function formatTraceRecord(r: BlkdebugTraceRecord, format: "text" | "json"): string {
  if (format === "json") return JSON.stringify(r);
  const req = r.req ? ` req=${r.req.id} ${r.req.op} ${r.req.node} ${r.req.offset}+${r.req.length}` : "";
  const head = `${r.time.toFixed(3)} ${r.node} ${r.kind}`;
  if (r.kind === "event") return `${head} ${r.event} state=${r.state}${req}`;
  if (r.kind === "flush") return `${head} state=${r.state}${req}`;
  return `${head} ${r.code} ${r.op} ${r.offset}+${r.length} (rule for ${r.event})`;
}

/** Options for {@linkcode createTraceLog}. */
export interface TraceLogOptions {
  /** `text` (one readable line per record) or `json` (JSON lines). */
  format?: "text" | "json";
  /** Receives each line (without a newline). */
  write: (line: string) => void;
}
