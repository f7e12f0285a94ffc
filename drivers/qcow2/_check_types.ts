/**
 * What one qcow2 check counts and how it may repair: shared by the checker
 * and its walkers.
 *
 * @module
 */

/** Counters of one check run (QEMU's BdrvCheckResult). */
export interface Counters {
  /** Refcounts too low and other metadata errors. */
  corruptions: number;
  /** Refcounts too high. */
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
}

/** Fresh zeroed counters. */
export function zeroCounters(): Counters {
  return {
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    imageEndOffset: 0,
    totalClusters: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
  };
}

/** Repair flags (QEMU's BDRV_FIX_LEAKS and BDRV_FIX_ERRORS). */
export interface Fix {
  /** Drop refcounts that are too high. */
  leaks: boolean;
  /** Fix everything else too (rebuilding the refcount structure if needed). */
  errors: boolean;
}
