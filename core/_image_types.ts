/**
 * What the image operations (the qemu-img verbs) take and return: checks,
 * internal snapshots, amend, metadata extents, dirty bitmaps and measure.
 * Re-exported by `core/types.ts`; import them from there.
 *
 * @module
 */

/** Options for a consistency check. */
export interface CheckOptions {
  /** Repair: `leaks` drops leaked references, `all` also fixes corruptions. */
  repair?: "leaks" | "all";
  /**
   * Receives each line the check reports, as it is reported (qemu-img's
   * stderr); the result's `messages` then stays empty, so a check of a badly
   * damaged image does not keep millions of lines in memory.
   */
  onMessage?: (line: string) => void;
}

/**
 * What a consistency check found (QEMU's BdrvCheckResult); the fields mean
 * what `qemu-img check --output=json`'s kebab-case fields mean.
 */
export interface CheckResult {
  /** Refcounts too low and other metadata errors. */
  corruptions: number;
  /** Refcounts too high (wasted space). */
  leaks: number;
  /** Errors that stopped part of the check. */
  checkErrors: number;
  /** Corruptions repaired. */
  corruptionsFixed: number;
  /** Leaks repaired. */
  leaksFixed: number;
  /** End of the last used host cluster. */
  imageEndOffset: number;
  /** Guest clusters of the virtual disk. */
  totalClusters: number;
  /** Guest clusters allocated. */
  allocatedClusters: number;
  /** Allocated clusters not following their predecessor. */
  fragmentedClusters: number;
  /** Compressed clusters. */
  compressedClusters: number;
  /** What the check reported, one line each ("Leaked cluster 5 refcount=1 reference=0"); empty with `onMessage`. */
  messages: string[];
}

/** One internal snapshot of an image (QEMU's QEMUSnapshotInfo). */
export interface SnapshotInfo {
  /** Snapshot ID (unique in the image). */
  id: string;
  /** Snapshot name (tag). */
  name: string;
  /** Size of the saved VM state in bytes. */
  vmStateSize: number;
  /** Creation time, seconds since the epoch. */
  dateSec: number;
  /** Creation time, nanoseconds part. */
  dateNsec: number;
  /** VM clock at creation, nanoseconds. */
  vmClockNsec: number;
  /** Guest instructions executed at creation, when recorded. */
  icount?: number;
}

/** Format options as `qemu-img create -o` / `amend -o` give them. */
export type FormatOptions = Record<string, string | number | boolean>;

/** Options for {@linkcode DriverInstance.amend}. */
export interface AmendOptions {
  /** Allow changes that lose information (qemu-img amend `--force`). */
  force?: boolean;
  /** Called as the work goes on with the work done and the (projected) total, in a unit of the format's (qemu-img amend `-p`). */
  progress?: (done: number, total: number) => void;
}

/**
 * Kinds of metadata a format keeps in its file (qcow2's names; other formats
 * may add their own).
 */
export type MetadataKind =
  | "header"
  | "l1"
  | "l2"
  | "refcount-table"
  | "refcount-block"
  | "snapshot-table"
  | "snapshot-l1"
  | "snapshot-l2"
  | "bitmap-directory"
  | "bitmap-table"
  | "bitmap-data"
  | "crypto-header"
  | string;

/** One stretch of a format's metadata in its file. */
export interface MetadataExtent {
  /** What the bytes hold. */
  kind: MetadataKind;
  /** Byte offset in the format's `file` child. */
  offset: number;
  /** Length in bytes (whole clusters for qcow2). */
  length: number;
  /** What it belongs to, for people ("L2 table 3", "snapshot 'before'"). */
  label?: string;
}

/** One dirty bitmap of an image (QEMU's BlockDirtyInfo). */
export interface BitmapInfo {
  /** Bitmap name (unique in the image). */
  name: string;
  /** Bytes per bit. */
  granularity: number;
  /** Dirty bytes, counted in whole chunks of `granularity` (QEMU's `count`). */
  count: number;
  /** Records writes (enabled; the qcow2 `auto` flag). */
  recording: boolean;
  /** Stored in the image (persistent). */
  persistent: boolean;
  /**
   * The image was not closed cleanly while the bitmap was in use (qcow2
   * `in-use` flag at open): its content is lost and only removal is allowed.
   */
  inconsistent: boolean;
}

/** Options for {@linkcode DriverInstanceOf.bitmapAdd} (qemu-img bitmap `--add`). */
export interface BitmapAddOptions {
  /** Bytes per bit: a power of two of at least 512 (default: the cluster size, within 4 KiB..64 KiB, as QEMU picks it). */
  granularity?: number;
  /** Created disabled: it records nothing until enabled. */
  disabled?: boolean;
}

/** A run of equal state in a dirty bitmap. */
export interface DirtyExtent {
  /** Start of the run (bytes). */
  offset: number;
  /** Length of the run (bytes, at least 1 inside the disk). */
  length: number;
  /** The run is dirty (was written since the bitmap was cleared). */
  dirty: boolean;
}

/** What {@linkcode BlockDriver.measure} is asked about. */
export interface MeasureInputOf<N> {
  /** Virtual size of the new image. */
  size: number;
  /** Format options of the new image (`cluster_size`, ...). */
  options: FormatOptions;
  /** The image whose data would be converted into it, if any (its allocation is counted). */
  source?: N;
}

/** The answer of {@linkcode BlockDriver.measure} (qemu-img measure's fields). */
export interface MeasureResult {
  /** Bytes the image needs for the source's data. */
  required: number;
  /** Bytes of the image fully allocated. */
  fullyAllocated: number;
  /** Bytes of persistent bitmaps to copy (qcow2 with `--bitmaps`), when counted. */
  bitmaps?: number;
}
