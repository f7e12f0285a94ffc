/**
 * What travels with a request: its operation, its identity as it goes down
 * the graph, the per-request options, the limits a driver declares, what
 * block status answers, and what a filter's `intercept` hook sees.
 * Re-exported by `core/types.ts`; import them from there.
 *
 * @module
 */

/** The operations a request can be. */
export type RequestOp =
  | "read"
  | "write"
  | "write-zeroes"
  | "discard"
  | "flush"
  | "block-status"
  | "truncate";

/**
 * One request as it travels down the graph. A parent driver passes the
 * request it is serving to its children, so an event or an error deep in the
 * graph can name the top-level request that caused it.
 */
export interface RequestInfo {
  /** Process-wide request number. */
  readonly id: number;
  /** What the top-level request was. */
  readonly op: RequestOp;
  /** Node the request entered the graph at. */
  readonly node: string;
  /** Byte offset of the top-level request. */
  readonly offset: number;
  /** Byte length of the top-level request. */
  readonly length: number;
}

/** Per-request options for writes. */
export interface WriteOptions {
  /** Force unit access: the data is durable when the write resolves. */
  fua?: boolean;
  /**
   * Write the data compressed (QEMU's BDRV_REQ_WRITE_COMPRESSED): one whole
   * cluster at a cluster-aligned offset (or the image's shorter last
   * cluster). The node dispatches it to the driver's `pwriteCompressed`;
   * filters pass it down; other drivers refuse it with ENOTSUP.
   */
  compressed?: boolean;
  /** The request this write serves (set by parent drivers). */
  req?: RequestInfo;
}

/** Per-request options for reads and other operations. */
export interface RequestOptions {
  /** The request this operation serves (set by parent drivers). */
  req?: RequestInfo;
}

/** Options for write-zeroes. */
export interface WriteZeroesOptions extends WriteOptions {
  /** The range may be deallocated, as long as it reads back as zeros. */
  mayUnmap?: boolean;
  /** Fail with ENOTSUP instead of writing zero buffers when no fast path exists. */
  noFallback?: boolean;
}

/** Options for truncate. */
export interface TruncateOptions extends RequestOptions {
  /** Preallocation for the grown part: off (default), metadata, falloc, full. */
  prealloc?: "off" | "metadata" | "falloc" | "full";
  /**
   * `false`: the node may stay longer than asked when it cannot be resized
   * (QEMU's exact=false: image creation, qemu-io's truncate); an NBD export
   * then accepts any size up to its own. Default `true`, the size exactly or
   * an error (qemu-img resize).
   */
  exact?: boolean;
  /**
   * Set by the core when the grown part (`zeroFill` bytes) must read as
   * zeros because a longer backing file would show through (QEMU's
   * BDRV_REQ_ZERO_WRITE truncate): after the resize the core writes zero
   * buffers up to the first `optWriteZero` boundary and zeroes the rest
   * without the fallback to buffers, so a driver that cannot must refuse
   * before changing anything.
   */
  zeroFill?: number;
}

/** What a driver's `truncate` tells the core. */
export interface TruncateResult {
  /**
   * The driver made the whole grown part read as zeros itself when asked
   * by `zeroFill` (QEMU's BDRV_REQ_ZERO_WRITE truncate that the file's own
   * growth satisfied): the core zeroes nothing afterwards.
   */
  zeroFilled?: boolean;
}

/** Size limits a driver declares; the core splits and pads requests to fit. */
export interface BlockLimits {
  /** Reads and writes are padded to multiples of this (power of two). */
  requestAlignment: number;
  /** Largest read or write passed to the driver in one call (0 = no limit). */
  maxTransfer: number;
  /** Preferred write-zeroes granularity (0 = none). */
  optWriteZero: number;
  /** Largest write-zeroes passed in one call (0 = no limit). */
  maxWriteZero: number;
  /** Preferred discard granularity (0 = none). */
  optDiscard: number;
  /** Largest discard passed in one call (0 = no limit). */
  maxDiscard: number;
}

/** Allocation state of a range, as `blockStatus` reports it. */
export interface BlockStatusOf<N> {
  /** Start of the extent (the requested offset). */
  offset: number;
  /** Length of the extent; at least 1 byte, at most the requested length. */
  length: number;
  /** The range holds data (QEMU's BDRV_BLOCK_DATA). */
  data: boolean;
  /** The range reads as zeros (BDRV_BLOCK_ZERO). */
  zero: boolean;
  /** This node (not a backing file) defines the content (BDRV_BLOCK_ALLOCATED). */
  allocated: boolean;
  /**
   * Some layer of the backing chain (this node or one below it) defines the
   * content — qemu-img map's `present`. False for a range that is a hole in
   * every layer; a zero cluster in a backing file is present at its depth.
   * Absent means the same as `allocated`.
   */
  present?: boolean;
  /** How many backing layers down the content comes from (0 = this node; the bottom layer when none defines it). */
  depth?: number;
  /** Where the data lives in {@linkcode BlockStatus.file}, when known. */
  hostOffset?: number;
  /** The protocol node holding the data at `hostOffset`. */
  file?: N;
  /** The range is compressed (qcow2). */
  compressed?: boolean;
  /**
   * A driver's hint (QEMU's BDRV_BLOCK_RECURSE) that data at `hostOffset`
   * may still be a hole in `file` (qcow2 with preallocated metadata): the
   * core then asks `file` and reports the range as zero where it reads as
   * zeros. The core removes it from the answer.
   */
  recurse?: boolean;
}

/**
 * A request passing through a filter, as its `intercept` hook sees it
 * (nbdkit's `next` pattern): what it is and where; the filter calls `next()`
 * to pass it on unchanged, or fails it, delays it, or logs around it.
 */
export interface FilterCall {
  /** The operation at this node. */
  readonly op: RequestOp;
  /** Byte offset (the new length for `truncate`; 0 for `flush`). */
  readonly offset: number;
  /** Byte length (0 for `flush` and `truncate`). */
  readonly length: number;
  /** The data of a write. */
  readonly data?: Uint8Array;
  /** A FUA write or write-zeroes. */
  readonly fua?: boolean;
  /** A compressed write. */
  readonly compressed?: boolean;
  /** The top-level request it serves. */
  readonly req?: RequestInfo;
}

/**
 * Synchronous I/O a protocol driver can offer for the last-chance
 * write-back when the process exits through `Deno.exit()` (the `unload`
 * event runs no async code).
 */
export interface SyncIo {
  /** Writes `data` at `offset` now. */
  pwrite(offset: number, data: Uint8Array): void;
  /** Makes what was written durable now. */
  flush(): void;
}
