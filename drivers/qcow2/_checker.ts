/**
 * The qcow2 consistency check, following QEMU's `qcow2_check_refcounts`
 * (block/qcow2-refcount.c): count the references to every host cluster by
 * walking the header, the active and snapshot L1/L2 tables, the snapshot
 * table, the refcount structures, the crypto header and the bitmaps; compare
 * with the on-disk refcounts; optionally fix leaks, fix corruptions, rebuild
 * the refcount structure, and fix OFLAG_COPIED.
 *
 * Private to `check.ts`; messages and counters follow QEMU's wording.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import { EXT_CRYPTO, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_EXTL2, MAX_SNAPSHOTS, type Qcow2Header } from "./header.ts";
import { RefArray } from "./_check_refarray.ts";
import { type Counters, type Fix, readPadded, zeroCounters } from "./_check_types.ts";
import { hex, HI, OFFSET_LO_MASK } from "./_entries.ts";
import type { SnapshotEntry } from "./_tables.ts";
import { MAX_SNAPSHOT_EXTRA, readSnapshotTableChecked } from "./_snapshot.ts";
import { writeHeaderFields } from "./_header_write.ts";
import { checkL1, type WalkContext } from "./_check_l2.ts";
import { checkOflagCopied } from "./_check_oflag.ts";
import { rebuildRefcountStructure } from "./_check_rebuild.ts";
import { DiskRefcounts, type RefBlock } from "./_check_refcounts.ts";
import { checkBitmaps } from "./_check_bitmaps.ts";

const FIX_NONE: Fix = { leaks: false, errors: false };
const MAX_L1_ENTRIES = 0x2000000 / 8;

/** One check of one image file. */
export class Checker {
  /** The counters of the current pass. */
  res: Counters = zeroCounters();
  /** Receives each line as it is reported (qemu-img's stderr). */
  readonly #sink: (line: string) => void;
  #file: BlockNode;
  #h: Qcow2Header;
  #cs: number;
  #refMax: number;
  #extL2: boolean;
  #dataFile: boolean;
  #disk: DiskRefcounts;
  #ref: RefArray;
  #snapshots: SnapshotEntry[] = [];
  #snapshotsSize = 0;
  #rebuild = false;
  #corruptSignalled = false;
  #walk: WalkContext;
  #highest = 0;

  /** Prepares a check of `file` whose header is `h`; every line it reports goes to `say` at once. */
  constructor(file: BlockNode, h: Qcow2Header, say: (line: string) => void) {
    this.#file = file;
    this.#h = h;
    this.#sink = say;
    this.#cs = 2 ** h.clusterBits;
    this.#refMax = 2 ** (2 ** h.refcountOrder) - 1;
    this.#disk = new DiskRefcounts(file, this.#cs, h.refcountOrder);
    this.#disk.onCorrupt = (what) => this.#signalCorruption(what);
    this.#extL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0;
    this.#dataFile = (h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0;
    this.#ref = new RefArray(Math.ceil(file.length / this.#cs), h.refcountOrder, this.#cs);
    // deno-lint-ignore no-this-alias
    const self = this;
    this.#walk = {
      file,
      cs: this.#cs,
      clusterBits: h.clusterBits,
      extL2: this.#extL2,
      dataFile: this.#dataFile,
      get res() {
        return self.res;
      },
      say: (line) => this.#say(line),
      inc: (offset, size) => this.#inc(offset, size),
    };
  }

  /**
   * QEMU's qcow2_signal_corruption: reported once; on a writable image the
   * corrupt bit is set (cleared again when a repair leaves no corruption).
   */
  #signalCorruption(what: string): void {
    if (this.#corruptSignalled) return;
    this.#corruptSignalled = true;
    if (this.#file.readOnly) {
      this.#say(`qcow2: Image is corrupt: ${what}; further non-fatal corruption events will be suppressed`);
      return;
    }
    this.#say(`qcow2: Marking image as corrupt: ${what}; further corruption events will be suppressed`);
    this.#h.incompatibleFeatures |= INCOMPAT_CORRUPT; // written back for version 3 only
  }

  #say(line: string): void {
    this.#sink(line);
  }

  async #read(offset: number, length: number): Promise<Uint8Array> {
    const buf = new Uint8Array(length);
    await readPadded(this.#file, offset, buf);
    return buf;
  }

  /**
   * Reads the snapshot table (QEMU's qcow2_check_read_snapshot_table): with
   * `fix.errors`, entries past 64 MiB of table are dropped at once (the
   * header's count goes down; their clusters become leaks), and extra data
   * past 1024 bytes or missing v3 extra data are corruptions the table
   * rewrite after the refcount check fixes. A table that cannot be read
   * fails the check with EFBIG (QEMU's qcow2_check_read_snapshot_table
   * returns the error, and qemu-img says "Check failed").
   */
  async readSnapshots(fix: Fix): Promise<void> {
    // More entries than an image may have: with -r all the rest is dropped (the header's count goes down with the
    // other overhanging ones below); otherwise the table is not read at all (qcow2_validate_table's words).
    const h = this.#h;
    let dropped = 0;
    if (h.nbSnapshots > MAX_SNAPSHOTS && fix.errors) {
      dropped = h.nbSnapshots - MAX_SNAPSHOTS;
      this.#say(`Discarding ${dropped} overhanging snapshots`);
      h.nbSnapshots = MAX_SNAPSHOTS;
    }
    if (h.nbSnapshots > MAX_SNAPSHOTS) {
      this.res.checkErrors++;
      const n = h.nbSnapshots - MAX_SNAPSHOTS;
      throw new BlockError(
        "EFBIG",
        `ERROR snapshot table too large\nYou can force-remove all ${n} overhanging snapshots with qemu-img check -r all`,
      );
    }
    if (h.snapshotsOffset % (2 ** h.clusterBits) !== 0 || h.snapshotsOffset + h.nbSnapshots * 40 > Number.MAX_SAFE_INTEGER) {
      this.res.checkErrors++;
      throw new BlockError("EINVAL", `ERROR snapshot table offset invalid (snapshots_offset ${h.snapshotsOffset})`);
    }
    const t = await readSnapshotTableChecked(this.#file, h, fix.errors);
    if ("error" in t) {
      throw new BlockError("EFBIG", `ERROR failed to read the snapshot table: ${t.error}${t.hint ? `\n${t.hint}` : ""}`);
    }
    for (const [i, size] of t.extraDropped) {
      this.#say(`Discarding too much extra metadata in snapshot table entry ${i} (${size} > ${MAX_SNAPSHOT_EXTRA})`);
    }
    this.snapshotFixes = t.extraDropped.length;
    if (t.overhang) this.#say(`Discarding ${t.overhang} overhanging snapshots (snapshot table is too big)`);
    if (t.overhang || dropped) {
      h.nbSnapshots = t.entries.length;
      await writeHeaderFields(this.#file, h, ["nbSnapshots"]);
      this.res.corruptionsFixed += t.overhang + dropped;
    }
    if (this.#h.version >= 3) {
      t.entries.forEach((e, i) => {
        if (e.extra.length >= 16) return;
        this.#say(`${fix.errors ? "Repairing" : "ERROR"} snapshot table entry ${i} is incomplete`);
        this.snapshotFixes++;
      });
    }
    this.res.corruptions += this.snapshotFixes;
    this.#snapshots = t.entries;
    this.#snapshotsSize = t.size;
  }

  /** Snapshot table corruptions a rewrite of the table fixes (counted in `res.corruptions`). */
  snapshotFixes = 0;

  /** The snapshot entries as read (repaired ones cut or to be completed by the rewrite). */
  get snapshots(): readonly SnapshotEntry[] {
    return this.#snapshots;
  }

  /** Bytes of the snapshot table on disk. */
  get snapshotsSize(): number {
    return this.#snapshotsSize;
  }

  /** Runs QEMU's qcow2_check_refcounts with the given repair flags. */
  async checkRefcounts(fix: Fix): Promise<void> {
    const h = this.#h;
    this.res.totalClusters = Math.ceil(h.size / this.#cs);
    await this.#disk.load(h.refcountTableOffset, h.refcountTableClusters);
    await this.#calculate(fix);
    const preCompare = { ...this.res };
    await this.#compare(FIX_NONE);
    if (this.#rebuild && fix.errors) {
      const old = { ...this.res };
      this.#say("Rebuilding refcount structure");
      await rebuildRefcountStructure(this.#file, h, this.#ref);
      this.res.corruptions = 0;
      this.res.leaks = 0;
      this.#rebuild = false;
      this.#ref.clear();
      await this.#disk.load(h.refcountTableOffset, h.refcountTableClusters);
      const keep = { ...this.res };
      await this.#calculate(FIX_NONE);
      // The walk above counted the fragmentation figures a second time.
      Object.assign(this.res, {
        allocatedClusters: keep.allocatedClusters,
        fragmentedClusters: keep.fragmentedClusters,
        compressedClusters: keep.compressedClusters,
      });
      let freshLeaks = 0;
      if (fix.leaks) {
        const saved = { ...this.res };
        this.res = zeroCounters();
        await this.#compare({ leaks: true, errors: false });
        if (this.#rebuild) this.#say("ERROR rebuilt refcount structure is still broken");
        freshLeaks = this.res.leaks;
        this.res = saved;
      }
      if (this.res.corruptions < old.corruptions) this.res.corruptionsFixed += old.corruptions - this.res.corruptions;
      if (this.res.leaks < old.leaks) this.res.leaksFixed += old.leaks - this.res.leaks;
      this.res.leaks += freshLeaks;
    } else if (fix.leaks || fix.errors) {
      if (this.#rebuild) {
        this.#say("ERROR need to rebuild refcount structures");
        this.res.checkErrors++;
        return;
      }
      if (this.res.leaks || this.res.corruptions) {
        this.res = preCompare;
        await this.#compare(fix);
      }
    }
    const r = this.res;
    const repair = fix.errors || (fix.leaks && !r.checkErrors && !r.corruptions && !r.leaks);
    await checkOflagCopied(this.#file, h, this.#disk, r, (line) => this.#say(line), repair);
    this.res.imageEndOffset = (this.#highest + 1) * this.#cs;
  }

  // ---- reference counting (calculate_refcounts) --------------------------

  #inc(offset: number, size: number): void {
    if (size <= 0) return;
    const cs = this.#cs;
    if (offset + size - this.#file.length >= cs) {
      this.#say(
        `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${hex(offset)} size 0x${
          hex(size)
        }`,
      );
      this.res.corruptions++;
      return;
    }
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + size - 1) / cs);
    for (let k = first; k <= last; k++) {
      const r = this.#ref.get(k);
      if (r >= this.#refMax) {
        this.#say(`ERROR: overflow cluster offset=0x${hex(k * cs)}`);
        this.#say(
          "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing",
        );
        this.res.corruptions++;
        continue;
      }
      this.#ref.set(k, r + 1);
    }
  }

  async #calculate(fix: Fix): Promise<void> {
    const h = this.#h;
    const cs = this.#cs;
    this.#inc(0, cs);
    await checkL1(this.#walk, h.l1TableOffset, h.l1Size, true, fix);
    if (this.#dataFile && h.nbSnapshots) {
      this.#say(`ERROR ${h.nbSnapshots} snapshots in image with data file`);
      this.res.corruptions++;
    }
    for (const sn of this.#snapshots) {
      // Past 2^53 the rounded number hides the low bits: the exact value decides (and is printed).
      const exact = sn.l1OffsetExact;
      if (exact !== undefined ? exact % BigInt(cs) !== 0n : sn.l1Offset % cs !== 0) {
        this.#say(
          `ERROR snapshot ${sn.id} (${sn.name}) l1_offset=${
            exact !== undefined ? `0x${exact.toString(16)}` : sharpHex(sn.l1Offset)
          }: L1 table is not cluster aligned; snapshot table entry corrupted`,
        );
        this.res.corruptions++;
        continue;
      }
      if (sn.l1Size > MAX_L1_ENTRIES) {
        this.#say(
          `ERROR snapshot ${sn.id} (${sn.name}) l1_size=${sharpHex(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`,
        );
        this.res.corruptions++;
        continue;
      }
      await checkL1(this.#walk, sn.l1Offset, sn.l1Size, false, fix);
    }
    this.#inc(h.snapshotsOffset, this.#snapshotsSize);
    this.#inc(h.refcountTableOffset, h.refcountTableClusters * cs);
    const crypto = h.extensions.find((e) => e.type === EXT_CRYPTO);
    if (crypto && crypto.data.length >= 16) {
      const v = new DataView(crypto.data.buffer, crypto.data.byteOffset, crypto.data.byteLength);
      this.#inc(v.getUint32(0) * HI + v.getUint32(4), v.getUint32(8) * HI + v.getUint32(12));
    }
    await this.#countBitmaps();
    await this.#checkRefblocks(fix);
  }

  /** The bitmap directory, tables and data (`_check_bitmaps.ts`). */
  #countBitmaps(): Promise<void> {
    return checkBitmaps({
      file: this.#file,
      h: this.#h,
      res: this.res,
      say: (line) => this.#say(line),
      inc: (offset, size) => this.#inc(offset, size),
      read: (offset, length) => this.#read(offset, length),
    });
  }

  async #checkRefblocks(fix: Fix): Promise<void> {
    const cs = this.#cs;
    for (let i = 0; i < this.#disk.entries; i++) {
      const [hi, lo] = this.#disk.entry(i);
      const offset = hi * HI + ((lo & OFFSET_LO_MASK) >>> 0);
      if (lo & 0x1ff) {
        this.#say(`ERROR refcount table entry ${i} has reserved bits set`);
        this.res.corruptions++;
        this.#rebuild = true;
        continue;
      }
      if (offset % cs !== 0) {
        this.#say(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
        this.res.corruptions++;
        this.#rebuild = true;
        continue;
      }
      const cluster = offset / cs;
      if (cluster >= this.#ref.size) {
        this.res.corruptions++;
        this.#say(`${fix.errors ? "Repairing" : "ERROR"} refcount block ${i} is outside image`);
        if (fix.errors) {
          try {
            // QEMU grows the file to the block, wherever the entry points; a
            // block far past the end is a broken pointer, not a file cut
            // short by a crash: growing a small image to terabytes would only
            // make every later check count those clusters. The refcount
            // structure is rebuilt instead.
            if (offset + cs > 2 * this.#file.length + this.#disk.perBlock * cs) {
              throw new BlockError("EFBIG", `File too large (the block at offset 0x${hex(offset)} lies far past the end of the file)`);
            }
            await this.#file.truncate(offset + cs);
            this.#ref.grow(cluster + 1);
            this.res.corruptions--;
            this.res.corruptionsFixed++;
            this.#inc(offset, cs);
          } catch (e) {
            this.#say(`ERROR could not resize image: ${e instanceof BlockError ? e.strerror : (e as Error).message}`);
            this.#rebuild = true;
          }
        }
        continue;
      }
      if (offset !== 0) {
        this.#inc(offset, cs);
        const r = this.#ref.get(cluster);
        if (r !== 1) {
          this.#say(`ERROR refcount block ${i} refcount=${r}`);
          this.res.corruptions++;
          this.#rebuild = true;
        }
      }
    }
  }

  // ---- comparison with the on-disk refcounts (compare_refcounts) ----------

  async #compare(fix: Fix): Promise<void> {
    const disk = this.#disk;
    const per = disk.perBlock;
    const cs = this.#cs;
    this.#highest = 0;
    const n = this.#ref.size;
    for (let base = 0; base < n; base += per) {
      const end = Math.min(n, base + per);
      let b: RefBlock | null;
      try {
        b = await disk.block(base / per);
      } catch (e) {
        for (let i = base; i < end; i++) this.#say(`Can't get refcount for cluster ${i}: ${(e as Error).message}`);
        this.res.checkErrors += end - base;
        continue;
      }
      for (let i = base; i < end; i++) {
        const r1 = b ? disk.read(b, i - base) : 0;
        const r2 = this.#ref.get(i);
        if (r1 > 0 || r2 > 0) this.#highest = i;
        if (r1 === r2) continue;
        let fixed: "leaksFixed" | "corruptionsFixed" | undefined;
        if (r1 === 0) this.#rebuild = true;
        else if (r1 > r2 && fix.leaks) fixed = "leaksFixed";
        else if (r1 < r2 && fix.errors) fixed = "corruptionsFixed";
        this.#say(
          `${fixed ? "Repairing" : r1 < r2 ? "ERROR" : "Leaked"} cluster ${i} refcount=${b ? disk.text(b, i - base) : r1} reference=${r2}`,
        );
        if (fixed && b && r2 <= this.#refMax) {
          disk.write(b, i - base, r2);
          // QEMU discards a cluster whose refcount drops to zero (QCOW2_DISCARD_ALWAYS).
          if (r2 === 0) await this.#file.pdiscard(i * cs, Math.min(cs, Math.max(0, this.#file.length - i * cs)));
          this.res[fixed]++;
          continue;
        }
        if (r1 < r2) this.res.corruptions++;
        else this.res.leaks++;
      }
    }
    await disk.writeDirty();
  }
}

/** C's `%#x`: "0" for zero, else "0x" and the digits. */
function sharpHex(n: number): string {
  return n === 0 ? "0" : `0x${n.toString(16)}`;
}
