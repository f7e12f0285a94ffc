/**
 * What one qcow2 check counts and how it may repair: shared by the checker
 * and its walkers.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import type { CheckResult } from "../../core/types.ts";

/** Counters of one check run (QEMU's BdrvCheckResult): the check result without its messages. */
export type Counters = Omit<CheckResult, "messages">;

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

/**
 * Reads `buf.length` bytes at `offset` of the image file as QEMU's check
 * does: bytes past the end of the file read as zeros (so do offsets too
 * large for any file, up to the 2^56 an entry can hold), never an error.
 */
export async function readPadded(file: BlockNode, offset: number, buf: Uint8Array): Promise<void> {
  const inFile = Math.max(0, Math.min(buf.length, file.length - offset));
  if (inFile < buf.length) buf.fill(0, inFile);
  if (inFile > 0) await file.pread(offset, buf.subarray(0, inFile));
}
