/**
 * The L1/L2 walk of qcow2 check (QEMU's check_refcounts_l1 and
 * check_refcounts_l2): counts every L2 table and data cluster an L1 table
 * reaches, collects the fragmentation figures, reports bad entries and
 * repairs misaligned preallocated (zero) clusters.
 *
 * Private to `check.ts`.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import { type Counters, type Fix, readPadded } from "./_check_types.ts";
import { entryHex, entryOffset, hex, HI, joinHex, l2EntrySize, OFFSET_HI_MASK, OFFSET_LO_MASK } from "./_entries.ts";

/** What the walk needs from the checker. */
export interface WalkContext {
  /** The image file. */
  readonly file: BlockNode;
  /** Cluster size. */
  readonly cs: number;
  /** log2 of the cluster size. */
  readonly clusterBits: number;
  /** 16-byte L2 entries with subcluster bitmaps. */
  readonly extL2: boolean;
  /** Guest data is in an external data file. */
  readonly dataFile: boolean;
  /** The counters of the current pass. */
  readonly res: Counters;
  /** Reports a line (qemu-img's stderr). */
  say(line: string): void;
  /** Counts one reference to every cluster of `[offset, offset + size)`. */
  inc(offset: number, size: number): void;
}

/** Counts an L1 table and its L2 tables (QEMU's check_refcounts_l1). */
export async function checkL1(ctx: WalkContext, offset: number, size: number, active: boolean, fix: Fix): Promise<void> {
  ctx.inc(offset, size * 8);
  if (size === 0) return;
  let l1: Uint8Array;
  try {
    l1 = new Uint8Array(size * 8);
    await readPadded(ctx.file, offset, l1);
  } catch {
    ctx.say("ERROR: I/O error in check_refcounts_l1");
    ctx.res.checkErrors++;
    return;
  }
  const view = new DataView(l1.buffer);
  for (let i = 0; i < size; i++) {
    const at = i * 8;
    // QEMU skips only all-zero entries: reserved bits alone send it to an L2 table at offset 0.
    if (!view.getUint32(at) && !view.getUint32(at + 4)) continue;
    const l2Offset = entryOffset(view, at);
    if (view.getUint32(at) & 0x7f000000 || view.getUint32(at + 4) & 0x1ff) {
      ctx.say(`ERROR found L1 entry with reserved bits set: ${entryHex(view, at)}`);
      ctx.res.corruptions++;
    }
    ctx.inc(l2Offset, ctx.cs);
    if (l2Offset % ctx.cs !== 0) {
      ctx.say(`ERROR l2_offset=${hex(l2Offset)}: Table is not cluster aligned; L1 entry corrupted`);
      ctx.res.corruptions++;
    }
    await checkL2(ctx, l2Offset, active, fix);
  }
}

async function checkL2(ctx: WalkContext, l2Offset: number, fragInfo: boolean, fix: Fix): Promise<void> {
  const cs = ctx.cs;
  let table: Uint8Array;
  try {
    table = new Uint8Array(cs);
    await readPadded(ctx.file, l2Offset, table);
  } catch {
    ctx.say("ERROR: I/O error in check_refcounts_l2");
    ctx.res.checkErrors++;
    return;
  }
  const view = new DataView(table.buffer);
  const step = l2EntrySize(ctx.extL2);
  const csizeShift = 62 - (ctx.clusterBits - 8);
  const hiOffsetMask = 2 ** (csizeShift - 32) - 1;
  const csizeMask = 2 ** (ctx.clusterBits - 8) - 1;
  let nextContiguous = 0;
  for (let i = 0, at = 0; at < cs; i++, at += step) {
    const hi = view.getUint32(at);
    const lo = view.getUint32(at + 4);
    const bmAlloc = ctx.extL2 ? view.getUint32(at + 12) : 0;
    const bmZero = ctx.extL2 ? view.getUint32(at + 8) : 0;
    if (hi & 0x40000000) {
      // Compressed cluster.
      if (hi & 0x80000000) {
        ctx.say(`ERROR: coffset=0x${joinHex(hi & hiOffsetMask, lo)}: copied flag must never be set for compressed clusters`);
        ctx.res.corruptions++;
      }
      if (ctx.dataFile) {
        ctx.say(`ERROR compressed cluster ${i} with data file, entry=0x${entryHex(view, at)}`);
        ctx.res.corruptions++;
        continue;
      }
      if (bmAlloc || bmZero) {
        ctx.say(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${entryHex(view, at)}`);
        ctx.res.corruptions++;
        continue;
      }
      const sectors = ((hi >>> (csizeShift - 32)) & csizeMask) + 1;
      const csize = sectors * 512 - (lo & 511);
      if ((hi & hiOffsetMask) >= 0x200000) {
        // Past 2^53: past the end of any file (the message needs exact digits).
        ctx.say(
          `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${
            joinHex(hi & hiOffsetMask, lo)
          } size 0x${hex(csize)}`,
        );
        ctx.res.corruptions++;
      } else ctx.inc((hi & hiOffsetMask) * HI + lo, csize);
      if (fragInfo) {
        ctx.res.allocatedClusters++;
        ctx.res.compressedClusters++;
        ctx.res.fragmentedClusters++;
      }
      continue;
    }
    if (hi & 0x3f000000 || lo & 0x1fe) {
      ctx.say(`ERROR found l2 entry with reserved bits set: ${entryHex(view, at)}`);
      ctx.res.corruptions++;
    }
    const offset = (hi & OFFSET_HI_MASK) * HI + ((lo & OFFSET_LO_MASK) >>> 0);
    const zeroFlag = !ctx.extL2 && (lo & 1) !== 0;
    if (!offset && (zeroFlag || !ctx.dataFile || !(hi & 0x80000000))) {
      // ZERO_PLAIN or UNALLOCATED (offset 0 is a data file's first cluster only with COPIED).
      if (!zeroFlag && bmAlloc) {
        ctx.say("ERROR: Unallocated cluster has non-zero subcluster allocation map");
        ctx.res.corruptions++;
      }
      continue;
    }
    // NORMAL or ZERO_ALLOC.
    if (bmZero & bmAlloc) {
      ctx.say(`ERROR offset=${hex(offset)}: Allocated cluster has corrupted subcluster allocation bitmap`);
      ctx.res.corruptions++;
    }
    if (offset % cs !== 0) {
      ctx.res.corruptions++;
      const hasData = ctx.extL2 ? bmAlloc !== 0 : !zeroFlag;
      if (hasData) ctx.say(`ERROR offset=${hex(offset)}: Data cluster is not properly aligned; L2 entry corrupted.`);
      else {
        ctx.say(
          `${fix.errors ? "Repairing" : "ERROR"} offset=${hex(offset)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`,
        );
        // The repair makes it a plain zero cluster (no offset) and does not count it.
        if (fix.errors && await writeL2Entry(ctx, l2Offset + at, ctx.extL2 ? 0 : 1)) continue;
      }
    }
    if (fragInfo) {
      ctx.res.allocatedClusters++;
      if (nextContiguous && offset !== nextContiguous) ctx.res.fragmentedClusters++;
      nextContiguous = offset + cs;
    }
    if (!ctx.dataFile) ctx.inc(offset, cs);
  }
}

/** Rewrites the 64-bit entry at `offset` (QEMU's repair of misaligned preallocated clusters). */
async function writeL2Entry(ctx: WalkContext, offset: number, value: number): Promise<boolean> {
  const entry = new Uint8Array(8);
  new DataView(entry.buffer).setUint32(4, value);
  try {
    await ctx.file.pwrite(offset, entry);
    await ctx.file.flush();
  } catch (e) {
    ctx.say(`ERROR: Failed to overwrite L2 table entry: ${(e as Error).message}`);
    ctx.res.checkErrors++;
    return false;
  }
  ctx.res.corruptions--;
  ctx.res.corruptionsFixed++;
  return true;
}
