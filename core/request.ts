/**
 * What travels with a request and what a node reports: request records,
 * node counters, listener events and node configuration, plus the size
 * constants of the request path.
 *
 * @module
 */

import type { BlkdebugEvent } from "./events.ts";
import type { BlockDriverOf, RequestInfo, RequestOp } from "./types.ts";

/**
 * Sector size for `BlockNode.read` and `BlockNode.write`.
 *
 * @example
 * ```ts
 * import { open, SECTOR_SIZE } from "@blkgraph/blkgraph";
 * await using disk = await open({ driver: "memory", size: 1 << 20 });
 * await disk.write(2, new Uint8Array(SECTOR_SIZE).fill(7)); // sector 2 = byte 1024
 * console.log(SECTOR_SIZE); // 512
 * ```
 */
export const SECTOR_SIZE = 512;

/**
 * Largest offset or length a request may have (QEMU's BDRV_MAX_LENGTH).
 *
 * @example
 * ```ts
 * import { MAX_LENGTH } from "@blkgraph/blkgraph";
 * console.log(MAX_LENGTH < Number.MAX_SAFE_INTEGER); // true
 * ```
 */
export const MAX_LENGTH = 2 ** 53 - 2 ** 32;

/** Counters every node keeps; benchmarks and tests read them. */
export interface NodeStats {
  /** Read requests served. */
  reads: number;
  /** Write requests served (including FUA and RMW writes). */
  writes: number;
  /** Bytes read. */
  bytesRead: number;
  /** Bytes written. */
  bytesWritten: number;
  /** Write-zeroes requests. */
  writeZeroes: number;
  /** Discard requests. */
  discards: number;
  /** Flush requests received. */
  flushRequests: number;
  /**
   * Disk flushes (a driver's `flush` ran) at this node or below it caused by
   * this node's flush requests — on a qcow2 node, the flushes of its file
   * that its flushes needed. {@linkcode BlockNode.flushCount} counts every
   * disk flush below a node, whatever caused it.
   */
  flushes: number;
  /** Flush requests skipped because nothing was written since the last one. */
  flushesSkipped: number;
}

/** Counters of a new node, all zero. */
export function newStats(): NodeStats {
  return {
    reads: 0,
    writes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    writeZeroes: 0,
    discards: 0,
    flushRequests: 0,
    flushes: 0,
    flushesSkipped: 0,
  };
}

/** What a node listener receives. */
export type NodeEventOf<N> =
  | {
    /** A BLKDBG event raised by this node's driver. */
    kind: "blkdbg";
    /** The event name. */
    event: BlkdebugEvent;
    /** The node that raised it. */
    node: N;
    /** `performance.now()` when it was raised. */
    time: number;
    /** The request that raised it. */
    req?: RequestInfo;
  }
  | {
    /** A disk flush (a driver's `flush`) at or below the listening node, caused by its flush request. */
    kind: "flush";
    /** The node whose driver flushed. */
    node: N;
    /** `performance.now()` when it started. */
    time: number;
    /** The request that caused it. */
    req?: RequestInfo;
  }
  | {
    /** A request entering (`begin`) or leaving (`end`) this node. */
    kind: "request";
    /** `begin` when the operation was called, `end` when it resolved or failed. */
    phase: "begin" | "end";
    /** The operation at this node. */
    op: RequestOp;
    /** Byte offset at this node (the new length for truncate). */
    offset: number;
    /** Byte length at this node. */
    length: number;
    /** The node. */
    node: N;
    /** The top-level request this one serves (its `id` ties the spans of all nodes together). */
    req: RequestInfo;
    /** `performance.now()` of the phase. */
    time: number;
    /** A FUA write (begin only). */
    fua?: boolean;
    /** What the request failed with (end only). */
    error?: unknown;
  }
  | {
    /** A throttle node holding a request back until its group's budget admits it. */
    kind: "throttle";
    /** `begin` when the wait started, `end` when the request was let through. */
    phase: "begin" | "end";
    /** The throttle node. */
    node: N;
    /** `performance.now()` of the phase. */
    time: number;
    /** The request held back. */
    req?: RequestInfo;
    /** Bytes the request is accounted for. */
    bytes: number;
    /** Counted against the write budget (writes, write-zeroes, discards). */
    write: boolean;
  }
  | {
    /** A blkdebug node failing a request by an armed inject-error rule. */
    kind: "inject";
    /** The blkdebug node. */
    node: N;
    /** `performance.now()` when the rule fired. */
    time: number;
    /** The failed request. */
    req?: RequestInfo;
    /** The failed operation (blkdebug's iotype name). */
    op: string;
    /** Offset of the failed request at this node. */
    offset: number;
    /** Length of the failed request at this node. */
    length: number;
    /** The errno code injected. */
    code: string;
    /** The event whose rule was armed. */
    event: BlkdebugEvent;
  }
  | {
    /**
     * A quorum child failed a request or read data the vote rejected
     * (QEMU's QUORUM_REPORT_BAD event).
     */
    kind: "quorum-report-bad";
    /** The quorum node. */
    node: N;
    /** `performance.now()` when it was seen. */
    time: number;
    /** The request the child failed or disagreed on. */
    req?: RequestInfo;
    /** The operation: `read`, `write` or `flush`. */
    type: "read" | "write" | "flush";
    /** The child node's name (QEMU's `node-name`). */
    child: string;
    /** First 512-byte sector of the request (0 for a flush). */
    sectorNum: number;
    /** Sectors the request covers (0 for a flush). */
    sectorsCount: number;
    /** strerror(3) text of the child's failure; absent when its data lost the vote. */
    error?: string;
  }
  | {
    /** A quorum node could not reach its vote threshold (QEMU's QUORUM_FAILURE event); the request fails. */
    kind: "quorum-failure";
    /** The quorum node. */
    node: N;
    /** `performance.now()` when it failed. */
    time: number;
    /** The failed request. */
    req?: RequestInfo;
    /** First 512-byte sector of the request. */
    sectorNum: number;
    /** Sectors the request covers. */
    sectorsCount: number;
  };

/** Receives node events (`BlockNode.addListener`). */
export type NodeListenerOf<N> = (event: NodeEventOf<N>) => void;

let nextRequestId = 1;

/** Makes a {@linkcode RequestInfo} for a request entering the graph. */
export function newRequest(node: string, op: RequestOp, offset: number, length: number): RequestInfo {
  return { id: nextRequestId++, op, node, offset, length };
}

/** How a node was configured; fixed at open. */
export interface NodeConfigOf<N> {
  /** Unique node name. */
  name: string;
  /** The driver. */
  driver: BlockDriverOf<N>;
  /** Options the node was opened with (children removed). */
  options: Record<string, unknown>;
  /** Read-only node. */
  readOnly: boolean;
  /** Flush never reaches the driver (cache.no-flush / cache=unsafe). */
  noFlush?: boolean;
  /** Every write is FUA (cache=writethrough / directsync). */
  writeThrough?: boolean;
  /** The format was guessed from the image's first bytes. */
  probed?: boolean;
}

/** Rounds `n` up to a multiple of `align`. */
export function roundUp(n: number, align: number): number {
  const r = n % align;
  return r === 0 ? n : n + align - r;
}
