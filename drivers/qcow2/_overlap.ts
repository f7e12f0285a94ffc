/**
 * QEMU's metadata overlap checks (block/qcow2-refcount.c
 * `qcow2_check_metadata_overlap` and `qcow2_pre_write_overlap_check`): before
 * anything is written to the image file, the range is compared with the
 * image's metadata — header, active L1 and L2 tables, refcount table and
 * blocks, snapshot table, inactive (snapshot) L1 and L2 tables, bitmap
 * directory. A write that would land on metadata is refused with EIO and the
 * image is marked corrupt, with QEMU's message ("Preventing invalid write on
 * metadata (overlaps with active L1 table)"). Allocating an L2 table or a
 * refcount block at offset 0 is refused the same way ("Preventing invalid
 * allocation of L2 table at offset 0").
 *
 * Which structures are compared is QEMU's `overlap-check` option: a template
 * (`none`, `constant`, `cached` — the default — or `all`) whose bits the
 * per-structure options (`overlap-check.main-header`, `.active-l1`,
 * `.active-l2`, `.refcount-table`, `.refcount-block`, `.snapshot-table`,
 * `.inactive-l1`, `.inactive-l2`, `.bitmap-directory`) turn on or off.
 *
 * The active L2 tables and refcount blocks are looked up in an index of the
 * clusters they cover, rebuilt when {@linkcode Qcow2State.metadataMoved} says
 * the L1 table or the refcount table changed, so a data write costs a few
 * comparisons instead of a walk over both tables; a hit is confirmed by the
 * walk QEMU does before the image is marked corrupt.
 *
 * The option's bits and parser are `_overlap_options.ts`, re-exported here.
 *
 * @module
 */

import { BlockError, CorruptImageError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import { entryOffset, HI } from "./_entries.ts";
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS, MAX_L1_BYTES, type Qcow2Header } from "./header.ts";
import { readSnapshotTableChecked } from "./_snapshot_read.ts";
import {
  OL_ACTIVE_L1,
  OL_ACTIVE_L2,
  OL_BITMAP_DIRECTORY,
  OL_INACTIVE_L1,
  OL_INACTIVE_L2,
  OL_MAIN_HEADER,
  OL_REFCOUNT_BLOCK,
  OL_REFCOUNT_TABLE,
  OL_SNAPSHOT_TABLE,
  OVERLAP_NAMES,
} from "./_overlap_options.ts";

export * from "./_overlap_options.ts";

/** What the overlap checks need to know about one open image. */
export interface OverlapTarget {
  /** The qcow2 node (errors name it). */
  readonly node: BlockNode;
  /** The image file. */
  readonly file: BlockNode;
  /** The header in force. */
  readonly header: Qcow2Header;
  /** Cluster size. */
  readonly cs: number;
  /** Guest data lives in an external data file. */
  readonly externalData: boolean;
  /** Which structures are checked (OL_* bits). */
  readonly overlapChecks: number;
  /** Bumped whenever the L1 table or the refcount table changes. */
  readonly metadataGen: number;
  /** Entries of the active L1 table. */
  readonly l1Size: number;
  /** Offset of the L2 table of L1 entry `i` (0 = none). */
  l1Offset(i: number): number;
  /** The refcount table (refcount block offsets, 0 = none). */
  readonly reftable: Float64Array;
  /** Marks the image corrupt when `err` is a corruption and the image is writable. */
  signalCorruption(err: unknown): Promise<void>;
}

interface Snapshots {
  /** `snapshots_offset:nb_snapshots` the list was read for. */
  key: string;
  /** Bytes of the snapshot table. */
  size: number;
  /** Each snapshot's L1 table (offset, entries). */
  l1: { offset: number; size: number }[];
  /** Clusters of the inactive L2 tables (read on first use, for `all`). */
  l2?: Set<number>;
}

interface Index {
  /** metadataGen the clusters were collected at. */
  gen: number;
  /** Clusters covered by active L2 tables. */
  l2: Set<number>;
  /** Clusters covered by refcount blocks. */
  rb: Set<number>;
}

interface PerImage {
  index?: Index;
  snapshots?: Snapshots;
  /** Bitmap directory (offset, bytes) when the bitmaps extension was valid at open. */
  bitmaps?: { offset: number; size: number };
}

const images = new WeakMap<OverlapTarget, PerImage>();

function per(st: OverlapTarget): PerImage {
  let p = images.get(st);
  if (!p) images.set(st, p = {});
  return p;
}

function snapshotKey(h: Qcow2Header): string {
  return `${h.snapshotsOffset}:${h.nbSnapshots}`;
}

/**
 * Reads what the checks need from the file at open: the snapshot table
 * (its size and the snapshots' L1 tables) and the bitmap directory's place.
 * Call it before the autoclear bits are cleared. A snapshot table that
 * cannot be parsed refuses the open, as QEMU's qcow2_read_snapshots does.
 */
export async function initOverlapChecks(st: OverlapTarget): Promise<void> {
  const p = per(st);
  const h = st.header;
  const bm = h.extensions.find((e) => e.type === EXT_BITMAPS);
  if (bm && h.autoclearFeatures & AUTOCLEAR_BITMAPS && bm.data.length >= 24) {
    const v = new DataView(bm.data.buffer, bm.data.byteOffset, bm.data.byteLength);
    p.bitmaps = { size: v.getUint32(8) * HI + v.getUint32(12), offset: v.getUint32(16) * HI + v.getUint32(20) };
  }
  await loadSnapshots(st, p);
}

/**
 * Records where the bitmap directory is now (`undefined`: none), after the
 * bitmaps code moved it (a store writes a new directory and frees the old
 * one, as QEMU's update_ext_header_and_dir updates its overlap-check state).
 *
 * @example
 * ```ts
 * import { setBitmapDirectory } from "./_overlap.ts";
 * import type { OverlapTarget } from "./_overlap.ts";
 * setBitmapDirectory({} as OverlapTarget, { offset: 0x30000, size: 64 });
 * ```
 */
export function setBitmapDirectory(st: OverlapTarget, place: { offset: number; size: number } | undefined): void {
  per(st).bitmaps = place && place.size ? place : undefined;
}

async function loadSnapshots(st: OverlapTarget, p: PerImage): Promise<Snapshots> {
  const h = st.header;
  const key = snapshotKey(h);
  if (p.snapshots?.key === key) return p.snapshots;
  // As the table lies on disk, however damaged (QEMU checks against the table it read, which a repair may have cut):
  // its whole size, and each entry's L1 table.
  const parsed = await readSnapshotTableChecked(st.file, h, true);
  if ("error" in parsed) {
    throw new BlockError("EINVAL", `Could not read the snapshot table (snapshots_offset ${h.snapshotsOffset}): ${parsed.error}`, {
      node: st.node.name,
    });
  }
  p.snapshots = { key, size: parsed.size, l1: parsed.entries.map((e) => ({ offset: e.l1Offset, size: e.l1Size })) };
  return p.snapshots;
}

function addClusters(set: Set<number>, offset: number, bytes: number, cs: number): void {
  const last = Math.floor((offset + bytes - 1) / cs);
  for (let c = Math.floor(offset / cs); c <= last; c++) set.add(c);
}

function index(st: OverlapTarget, p: PerImage): Index {
  if (p.index && p.index.gen === st.metadataGen) return p.index;
  const cs = st.cs;
  const l2 = new Set<number>();
  const rb = new Set<number>();
  for (let i = 0; i < st.l1Size; i++) {
    const off = st.l1Offset(i);
    if (off) addClusters(l2, off, cs, cs);
  }
  const rt = st.reftable;
  for (let i = 0; i < rt.length; i++) if (rt[i]) addClusters(rb, rt[i], cs, cs);
  p.index = { gen: st.metadataGen, l2, rb };
  return p.index;
}

/** Some cluster of `[first, last]` is in `set`. */
function hits(set: Set<number>, first: number, last: number): boolean {
  if (set.size === 0) return false;
  if (last - first + 1 <= set.size) {
    for (let c = first; c <= last; c++) if (set.has(c)) return true;
    return false;
  }
  for (const c of set) if (c >= first && c <= last) return true;
  return false;
}

function overlaps(offset: number, size: number, ofs: number, sz: number): boolean {
  return sz > 0 && offset < ofs + sz && ofs < offset + size;
}

async function inactiveL2(st: OverlapTarget, sn: Snapshots): Promise<Set<number>> {
  if (sn.l2) return sn.l2;
  const set = new Set<number>();
  const cs = st.cs;
  for (const { offset, size } of sn.l1) {
    // QEMU's qcow2_validate_table for each snapshot L1 table.
    if (size * 8 > MAX_L1_BYTES || offset % cs !== 0 || offset + size * 8 > st.file.length) {
      const code = size * 8 > MAX_L1_BYTES ? "EFBIG" : "EINVAL";
      throw new BlockError(code, `Cannot check for overlaps: a snapshot's L1 table (offset ${offset}, ${size} entries) is invalid`, {
        node: st.node.name,
      });
    }
    const l1 = new Uint8Array(size * 8);
    if (l1.length) await st.file.pread(offset, l1);
    const v = new DataView(l1.buffer);
    for (let at = 0; at < l1.length; at += 8) {
      const off = entryOffset(v, at);
      if (off) addClusters(set, off, cs, cs);
    }
  }
  sn.l2 = set;
  return set;
}

/**
 * QEMU's qcow2_check_metadata_overlap: the first metadata structure (OL_*
 * bit) that `[offset, offset + size)` overlaps, leaving out the bits in
 * `ign`; 0 when none does.
 */
export async function findOverlap(st: OverlapTarget, ign: number, offset: number, size: number): Promise<number> {
  const chk = st.overlapChecks & ~ign;
  if (!size || !chk) return 0;
  const h = st.header;
  const p = per(st);
  let sn: Snapshots | undefined;
  if (chk & (OL_SNAPSHOT_TABLE | OL_INACTIVE_L1 | OL_INACTIVE_L2) && h.nbSnapshots) sn = await loadSnapshots(st, p);
  // The inactive L2 tables first: a snapshot L1 table that cannot be read fails every checked write (EFBIG or EINVAL,
  // as qcow2_validate_table), before its claimed range could count as an overlap. (QEMU gets there first too: the
  // refcount block it writes before the data of an allocating write fails this check.)
  const inactive = sn && chk & OL_INACTIVE_L2 ? await inactiveL2(st, sn) : undefined;
  const bit = activeOverlap(st, chk, offset, size, sn);
  if (bit) return bit;
  const first = Math.floor(offset / st.cs);
  const last = Math.floor((offset + size - 1) / st.cs);
  if (inactive && hits(inactive, first, last)) return OL_INACTIVE_L2;
  return bitmapOverlap(st, chk, p, first, last);
}

/**
 * What {@linkcode findOverlap} finds, without waiting for anything: 0 when
 * the range overlaps no checked structure, its bit when it does, undefined
 * when the answer needs the snapshot table or inactive L2 tables read first
 * (the caller then takes the asynchronous path). For the lock-free write
 * path, which may not yield between its mapping and its write.
 */
export function findOverlapSync(st: OverlapTarget, ign: number, offset: number, size: number): number | undefined {
  const chk = st.overlapChecks & ~ign;
  if (!size || !chk) return 0;
  const h = st.header;
  const p = per(st);
  let sn: Snapshots | undefined;
  if (chk & (OL_SNAPSHOT_TABLE | OL_INACTIVE_L1 | OL_INACTIVE_L2) && h.nbSnapshots) {
    if (p.snapshots?.key !== snapshotKey(h)) return undefined;
    sn = p.snapshots;
  }
  const bit = activeOverlap(st, chk, offset, size, sn);
  if (bit) return bit;
  if (sn && chk & OL_INACTIVE_L2) return undefined;
  return bitmapOverlap(st, chk, p, Math.floor(offset / st.cs), Math.floor((offset + size - 1) / st.cs));
}

/** The checks of header, active tables, refcount structures, snapshot table and inactive L1 tables, in QEMU's order. */
function activeOverlap(st: OverlapTarget, chk: number, offset: number, size: number, sn: Snapshots | undefined): number {
  const cs = st.cs;
  const h = st.header;
  if (chk & OL_MAIN_HEADER && offset < cs) return OL_MAIN_HEADER;
  // Compare whole clusters.
  const first = Math.floor(offset / cs);
  const last = Math.floor((offset + size - 1) / cs);
  const start = first * cs;
  const bytes = (last - first + 1) * cs;
  if (chk & OL_ACTIVE_L1 && st.l1Size && overlaps(start, bytes, h.l1TableOffset, st.l1Size * 8)) return OL_ACTIVE_L1;
  if (chk & OL_REFCOUNT_TABLE && overlaps(start, bytes, h.refcountTableOffset, h.refcountTableClusters * cs)) return OL_REFCOUNT_TABLE;
  if (sn && chk & OL_SNAPSHOT_TABLE && overlaps(start, bytes, h.snapshotsOffset, sn.size)) return OL_SNAPSHOT_TABLE;
  if (sn && chk & OL_INACTIVE_L1) {
    for (const l1 of sn.l1) if (overlaps(start, bytes, l1.offset, l1.size * 8)) return OL_INACTIVE_L1;
  }
  if (chk & (OL_ACTIVE_L2 | OL_REFCOUNT_BLOCK)) {
    const ix = index(st, per(st));
    if (chk & OL_ACTIVE_L2 && hits(ix.l2, first, last) && walkL1(st, start, bytes)) return OL_ACTIVE_L2;
    if (chk & OL_REFCOUNT_BLOCK && hits(ix.rb, first, last) && walkReftable(st, start, bytes)) return OL_REFCOUNT_BLOCK;
  }
  return 0;
}

function bitmapOverlap(st: OverlapTarget, chk: number, p: PerImage, first: number, last: number): number {
  const cs = st.cs;
  if (chk & OL_BITMAP_DIRECTORY && p.bitmaps && overlaps(first * cs, (last - first + 1) * cs, p.bitmaps.offset, p.bitmaps.size)) {
    return OL_BITMAP_DIRECTORY;
  }
  return 0;
}

/** The walk QEMU does over the L1 table (confirms an index hit, so a stale index never marks an image corrupt). */
function walkL1(st: OverlapTarget, start: number, bytes: number): boolean {
  for (let i = 0; i < st.l1Size; i++) {
    const off = st.l1Offset(i);
    if (off && overlaps(start, bytes, off, st.cs)) return true;
  }
  return false;
}

function walkReftable(st: OverlapTarget, start: number, bytes: number): boolean {
  const rt = st.reftable;
  for (let i = 0; i < rt.length; i++) if (rt[i] && overlaps(start, bytes, rt[i], st.cs)) return true;
  return false;
}

function bitNumber(bit: number): number {
  return 31 - Math.clz32(bit & -bit);
}

/** Marks the image corrupt (when writable) and returns the error to throw: QEMU's qcow2_signal_corruption with `fatal`. */
async function corruption(st: OverlapTarget, what: string, offset?: number, length?: number): Promise<CorruptImageError> {
  const line = st.node.readOnly
    ? `qcow2: Image is corrupt: ${what}; further non-fatal corruption events will be suppressed`
    : `qcow2: Marking image as corrupt: ${what}; further corruption events will be suppressed`;
  const err = new CorruptImageError(line, { node: st.node.name, offset, length });
  await st.signalCorruption(err);
  return err;
}

/**
 * QEMU's qcow2_pre_write_overlap_check: throws EIO (a CorruptImageError)
 * and marks the image corrupt when `[offset, offset + size)` of the image
 * file overlaps metadata not in `ign`. `dataFile`: the write is guest data,
 * which goes to the external data file when there is one (never checked).
 */
export async function preWriteOverlapCheck(st: OverlapTarget, ign: number, offset: number, size: number, dataFile: boolean): Promise<void> {
  if (!Number.isSafeInteger(offset + size)) {
    // An L2 entry (or a table pointer) past 2^53 bytes: the write cannot land there (QEMU: the file system's EFBIG).
    throw new BlockError("EFBIG", `Cannot write ${size} bytes at host offset ${offset}: past 2^53 bytes`, { offset, length: size });
  }
  if (dataFile && st.externalData) return;
  const bit = await findOverlap(st, ign, offset, size);
  if (!bit) return;
  throw await corruption(st, `Preventing invalid write on metadata (overlaps with ${OVERLAP_NAMES[bitNumber(bit)]})`, offset, size);
}

/**
 * QEMU's guard in l2_allocate and alloc_refcount_block: a table allocated
 * at offset 0 (the header) means the refcounts are broken; throws EIO and
 * marks the image corrupt.
 */
export async function checkTableAllocation(st: OverlapTarget, what: "L2 table" | "refcount block", offset: number): Promise<void> {
  if (offset !== 0) return;
  throw await corruption(st, `Preventing invalid allocation of ${what} at offset 0`);
}

/** True when `[offset, offset + size)` of the image file overlaps checked metadata (no corruption is signalled). */
export async function overlapsMetadata(st: OverlapTarget, offset: number, size: number): Promise<boolean> {
  return (await findOverlap(st, 0, offset, size)) !== 0;
}

/** The structures whose clusters only move when their pointer moves (never freed while in use). */
const FIXED = OL_MAIN_HEADER | OL_ACTIVE_L1 | OL_REFCOUNT_TABLE | OL_REFCOUNT_BLOCK;

/**
 * True when the cluster at `offset` is the header, the active L1 table, the
 * refcount table or a refcount block: a last reference to it that goes away
 * (a wrong L1 or L2 entry pointed there) must not free it, or the next
 * allocation would be handed live metadata.
 */
export async function isFixedMetadata(st: OverlapTarget, offset: number): Promise<boolean> {
  return (await findOverlap(st, ~FIXED, offset, st.cs)) !== 0;
}
