/**
 * Errors raised by block nodes: one {@linkcode BlockError} class carrying an
 * errno-like code, the node name and the byte range, so callers can branch on
 * `err.code` and people can read `err.message`.
 *
 * @module
 */

/** The errno-like codes a block operation can fail with. */
export type ErrnoCode =
  | "EIO"
  | "ENOSPC"
  | "EINVAL"
  | "EPERM"
  | "EROFS"
  | "ENOTSUP"
  | "ENOMEM"
  | "EFBIG"
  | "ENOENT"
  | "EACCES"
  | "EAGAIN"
  | "EBUSY"
  | "EEXIST"
  | "ENOMEDIUM"
  | "ECANCELED"
  | "E2BIG"
  | "ERANGE"
  | "EOVERFLOW"
  | "ESHUTDOWN";

/** Linux errno numbers for each code (what blkdebug's `errno` option takes). */
export const ERRNO_NUMBERS: Readonly<Record<ErrnoCode, number>> = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  E2BIG: 7,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ERANGE: 34,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
  ENOMEDIUM: 123,
  ECANCELED: 125,
};

/** strerror(3) text for each code, as qemu-io prints it. */
export const ERRNO_MESSAGES: Readonly<Record<ErrnoCode, string>> = {
  EPERM: "Operation not permitted",
  ENOENT: "No such file or directory",
  EIO: "Input/output error",
  E2BIG: "Argument list too long",
  EAGAIN: "Resource temporarily unavailable",
  ENOMEM: "Cannot allocate memory",
  EACCES: "Permission denied",
  EBUSY: "Device or resource busy",
  EEXIST: "File exists",
  EINVAL: "Invalid argument",
  EFBIG: "File too large",
  ENOSPC: "No space left on device",
  EROFS: "Read-only file system",
  ERANGE: "Numerical result out of range",
  EOVERFLOW: "Value too large for defined data type",
  ESHUTDOWN: "Cannot send after transport endpoint shutdown",
  ENOTSUP: "Operation not supported",
  ENOMEDIUM: "No medium found",
  ECANCELED: "Operation canceled",
};

/**
 * Looks up the code for an errno number or name (`5`, `"5"`, `"EIO"`).
 *
 * @example
 * ```ts
 * import { errnoCode } from "@blkgraph/blkgraph";
 * console.log(errnoCode(28)); // "ENOSPC"
 * ```
 */
export function errnoCode(value: number | string): ErrnoCode | undefined {
  if (typeof value === "string") {
    const upper = value.trim().toUpperCase();
    if (upper in ERRNO_NUMBERS) return upper as ErrnoCode;
    if (!/^\d+$/.test(upper)) return undefined;
    value = Number(upper);
  }
  for (const [code, num] of Object.entries(ERRNO_NUMBERS)) {
    if (num === value) return code as ErrnoCode;
  }
  return undefined;
}

/** Where a {@linkcode BlockError} happened. */
export interface BlockErrorDetails {
  /** Node name of the node that failed. */
  node?: string;
  /** Byte offset of the failing request. */
  offset?: number;
  /** Byte length of the failing request. */
  length?: number;
  /** The underlying error. */
  cause?: unknown;
  /**
   * QEMU's words for the same error, where the message says more (names the
   * value given, the values allowed): the drop-in `qemu-img` and `qemu-io`
   * print these, as QEMU's tools do.
   */
  qemuMessage?: string;
  /**
   * Lines QEMU's driver prints on stderr (error_report) beside the error it
   * returns, where it reports the details and returns only an errno (qcow2's
   * snapshot goto: "Snapshot L1 table offset invalid", then "Failed to load
   * snapshot: Invalid argument"). The drop-in `qemu-img` and `qemu-io`
   * print them before the final error; see {@linkcode qemuReportedLines}.
   */
  qemuReported?: readonly string[];
}

/**
 * The error every block operation throws.
 *
 * @example
 * ```ts
 * import { BlockError } from "@blkgraph/blkgraph";
 * const err = new BlockError("EROFS", "Cannot write 512 bytes at offset 0: image is read-only");
 * console.log(err.code, err.errno); // EROFS 30
 * ```
 */
export class BlockError extends Error {
  /** errno-like code, e.g. `"EIO"`. */
  readonly code: ErrnoCode;
  /** Node name, when known. */
  readonly node?: string;
  /** Byte offset, when the error is about a request. */
  readonly offset?: number;
  /** Byte length, when the error is about a request. */
  readonly length?: number;
  #qemuMessage: string | undefined;
  #qemuReported: readonly string[];

  /** Creates an error with a code, a message and optional details. */
  constructor(code: ErrnoCode, message: string, details: BlockErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "BlockError";
    this.code = code;
    this.node = details.node;
    this.offset = details.offset;
    this.length = details.length;
    this.#qemuMessage = details.qemuMessage;
    this.#qemuReported = details.qemuReported ?? [];
  }

  /**
   * What QEMU's driver prints on stderr beside this error (its error_report
   * lines, without the program name); empty for most errors.
   *
   * @example
   * ```ts
   * import { BlockError } from "@blkgraph/blkgraph";
   * const e = new BlockError("EINVAL", "Cannot apply snapshot 'a': Snapshot L1 table offset invalid", {
   *   qemuMessage: "Invalid argument",
   *   qemuReported: ["Snapshot L1 table offset invalid"],
   * });
   * console.log(e.qemuReported); // [ "Snapshot L1 table offset invalid" ]
   * ```
   */
  get qemuReported(): readonly string[] {
    return this.#qemuReported;
  }

  /**
   * The error in QEMU's words (what the drop-in `qemu-img` prints): the
   * message, unless it was given QEMU's shorter one as `qemuMessage`.
   *
   * @example
   * ```ts
   * import { BlockError } from "@blkgraph/blkgraph";
   * const e = new BlockError("EINVAL", "Invalid parameter 'foo' (known: size)", { qemuMessage: "Invalid parameter 'foo'" });
   * console.log(e.qemuMessage); // Invalid parameter 'foo'
   * ```
   */
  get qemuMessage(): string {
    return this.#qemuMessage ?? this.message;
  }

  /** The Linux errno number for {@linkcode BlockError.code}. */
  get errno(): number {
    return ERRNO_NUMBERS[this.code];
  }

  /** strerror(3) text for the code ("Input/output error"). */
  get strerror(): string {
    return ERRNO_MESSAGES[this.code];
  }
}

/**
 * Raised when an image's metadata is inconsistent. Callers that want to tell
 * corruption apart from I/O errors catch this subclass.
 *
 * @example
 * ```ts
 * import { CorruptImageError } from "@blkgraph/blkgraph";
 * const err = new CorruptImageError("L2 table offset 0x1234 unaligned");
 * console.log(err.code, err instanceof CorruptImageError); // EIO true
 * ```
 */
export class CorruptImageError extends BlockError {
  /** Creates a corruption error (code EIO). */
  constructor(message: string, details: BlockErrorDetails = {}) {
    super("EIO", message, details);
    this.name = "CorruptImageError";
  }
}

/** One metadata cache a format could not write back ({@linkcode CacheFlushError}). */
export interface CacheFlushFailure {
  /** Which cache, in QEMU's words: `"L2 table"`, `"refcount block"`. */
  readonly cache: string;
  /** Why its write-back or the flush after it failed. */
  readonly error: BlockError;
}

/**
 * Thrown by `close()` when a format's metadata caches could not be written
 * back (QEMU's qcow2_inactivate): each cache was tried, and
 * {@linkcode CacheFlushError.failures} names those that failed. The code is
 * the first failure's. What the caches held is lost as in a crash (the
 * image stays consistent; leaked clusters at most).
 *
 * @example
 * ```ts
 * import { BlockError, CacheFlushError } from "@blkgraph/blkgraph";
 * const e = new CacheFlushError("disk", [{ cache: "L2 table", error: new BlockError("EIO", "Cannot write 512 bytes at offset 0") }]);
 * console.log(e.code, e.qemuLines); // EIO [ "Failed to flush the L2 table cache: Input/output error" ]
 * ```
 */
export class CacheFlushError extends BlockError {
  /** The caches that failed, in the order they were written back. */
  readonly failures: readonly CacheFlushFailure[];

  /** Creates the error of node `node` from its (at least one) failures. */
  constructor(node: string, failures: readonly CacheFlushFailure[]) {
    const lines = failures.map((f) => `Failed to flush the ${f.cache} cache: ${f.error.message}`);
    // QEMU's qcow2_inactivate reports each failure (error_report) and its close returns nothing more.
    const qemuReported = failures.map((f) => `Failed to flush the ${f.cache} cache: ${f.error.strerror}`);
    super(failures[0]?.error.code ?? "EIO", `Cannot close node '${node}': ${lines.join("; ")}`, {
      node,
      cause: failures[0]?.error,
      qemuReported,
    });
    this.name = "CacheFlushError";
    this.failures = failures;
  }

  /** One line per failure in QEMU's words, as its error_report prints them (its {@linkcode BlockError.qemuReported}). */
  get qemuLines(): string[] {
    return [...this.qemuReported];
  }

  /** The failures in QEMU's words, one a line. */
  override get qemuMessage(): string {
    return this.qemuLines.join("\n");
  }
}

/**
 * The lines QEMU would have printed with error_report on the way to error
 * `e`: each error's {@linkcode BlockError.qemuReported} along its `cause`
 * chain, the innermost first (the driver reports before its caller returns
 * the error up). The drop-in `qemu-img` and `qemu-io` print them, each
 * prefixed with the program name, before the final error.
 *
 * @example
 * ```ts
 * import { BlockError, qemuReportedLines } from "@blkgraph/blkgraph";
 * const inner = new BlockError("EINVAL", "Snapshot L1 table offset invalid", { qemuReported: ["Snapshot L1 table offset invalid"] });
 * const outer = new Error("Could not apply snapshot 'test': Failed to load snapshot: Invalid argument", { cause: inner });
 * console.log(qemuReportedLines(outer)); // [ "Snapshot L1 table offset invalid" ]
 * ```
 */
export function qemuReportedLines(e: unknown): string[] {
  const chain: unknown[] = [];
  for (let c = e; c instanceof Error && !chain.includes(c); c = c.cause) chain.push(c);
  return chain.reverse().flatMap((c) => (c instanceof BlockError ? [...c.qemuReported] : []));
}

/**
 * Converts any thrown value into a {@linkcode BlockError}, mapping Deno and
 * Node file-system errors to their errno codes.
 *
 * @example
 * ```ts
 * import { toBlockError } from "@blkgraph/blkgraph";
 * try {
 *   await Deno.readFile("/nonexistent/blkgraph-example");
 * } catch (e) {
 *   console.log(toBlockError(e, "open").code); // ENOENT
 * }
 * ```
 */
export function toBlockError(
  err: unknown,
  context: string,
  details: BlockErrorDetails = {},
): BlockError {
  if (err instanceof BlockError) return err;
  const e = err as { code?: string; message?: string; name?: string };
  let code: ErrnoCode = "EIO";
  const known = typeof e?.code === "string" ? errnoCode(e.code) : undefined;
  if (known) code = known;
  else if (e?.name === "NotFound") code = "ENOENT";
  else if (e?.name === "PermissionDenied") code = "EACCES";
  else if (e?.name === "AlreadyExists") code = "EEXIST";
  else if (e?.code === "EOPNOTSUPP") code = "ENOTSUP";
  else if (e?.code === "EWOULDBLOCK") code = "EAGAIN";
  const why = ERRNO_MESSAGES[code];
  return new BlockError(code, `${context}: ${why}`, { ...details, cause: err });
}

/** What a format driver reports when it marks an image corrupt (QEMU's qcow2_signal_corruption). */
export interface CorruptionReport {
  /** The node whose image was marked corrupt. */
  readonly node: string;
  /** Its format (`qcow2`). */
  readonly format: string;
  /** What was found. */
  readonly message: string;
}

const corruptionListeners = new Set<(r: CorruptionReport) => void>();

/**
 * Calls `fn` whenever a driver marks an image corrupt; returns a function
 * that stops it. The CLI prints QEMU's "qcow2: Marking image as corrupt"
 * line from it.
 *
 * @example
 * ```ts
 * import { onCorruption, reportCorruption } from "./errors.ts";
 * const stop = onCorruption((r) => console.log(`${r.format}: ${r.message}`));
 * reportCorruption({ node: "disk", format: "qcow2", message: "L2 table offset 0x123 unaligned" });
 * stop();
 * ```
 */
export function onCorruption(fn: (r: CorruptionReport) => void): () => void {
  corruptionListeners.add(fn);
  return () => corruptionListeners.delete(fn);
}

/** Tells the {@linkcode onCorruption} listeners that a driver marked an image corrupt. */
export function reportCorruption(r: CorruptionReport): void {
  for (const fn of corruptionListeners) fn(r);
}

/** A line a format driver reports while it repairs an image it opens (QEMU's qcow2 prints its check of a dirty image). */
export interface RepairMessage {
  /** The node being opened. */
  readonly node: string;
  /** Its format (`qcow2`). */
  readonly format: string;
  /** One line of the repair ("Repairing cluster 1 refcount=1 reference=0"). */
  readonly message: string;
}

const repairListeners = new Set<(r: RepairMessage) => void>();

/**
 * Calls `fn` for each line a driver reports while repairing an image it
 * opens (a lazy-refcounts image left dirty); returns a function that stops
 * it. The CLI prints the lines on stderr, as qemu-img and qemu-io do.
 *
 * @example
 * ```ts
 * import { onOpenRepair, reportOpenRepair } from "./errors.ts";
 * const stop = onOpenRepair((r) => console.log(r.message));
 * reportOpenRepair({ node: "disk", format: "qcow2", message: "Rebuilding refcount structure" });
 * stop();
 * ```
 */
export function onOpenRepair(fn: (r: RepairMessage) => void): () => void {
  repairListeners.add(fn);
  return () => repairListeners.delete(fn);
}

/** Tells the {@linkcode onOpenRepair} listeners one line of a repair at open. */
export function reportOpenRepair(r: RepairMessage): void {
  for (const fn of repairListeners) fn(r);
}

/** A line a driver prints as QEMU's does about an error it then goes past ("qcow2_free_clusters failed: Input/output error"). */
export interface DriverMessage {
  /** The node the driver runs. */
  readonly node: string;
  /** Its format (`qcow2`). */
  readonly format: string;
  /** The line, as QEMU prints it on stderr. */
  readonly message: string;
}

const driverMessageListeners = new Set<(m: DriverMessage) => void>();

/**
 * Calls `fn` for each line a driver reports about an error it does not
 * fail the request for (QEMU prints these on stderr: a cluster it could not
 * free stays leaked); returns a function that stops it. The CLI prints the
 * lines on stderr, without a program prefix, as qemu-img and qemu-io do.
 *
 * @example
 * ```ts
 * import { onDriverMessage, reportDriverMessage } from "./errors.ts";
 * const stop = onDriverMessage((m) => console.log(m.message));
 * reportDriverMessage({ node: "disk", format: "qcow2", message: "qcow2_free_clusters failed: Input/output error" });
 * stop();
 * ```
 */
export function onDriverMessage(fn: (m: DriverMessage) => void): () => void {
  driverMessageListeners.add(fn);
  return () => driverMessageListeners.delete(fn);
}

/** Tells the {@linkcode onDriverMessage} listeners one line. */
export function reportDriverMessage(m: DriverMessage): void {
  for (const fn of driverMessageListeners) fn(m);
}
