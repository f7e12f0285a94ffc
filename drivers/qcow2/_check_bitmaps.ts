/**
 * The bitmaps part of the qcow2 check (QEMU's qcow2_check_bitmaps_refcounts):
 * counts the references of the bitmap directory, every bitmap table and
 * every data cluster, and validates them as QEMU's open and check do — the
 * extension, the directory entries (check_dir_entry), the table entries
 * (check_table_entry) and, for a consistent bitmap, a table that fits the
 * disk. QEMU refuses to open an image whose bitmaps break these rules, so it
 * cannot check it; here each break is a corruption with a message, and
 * whatever can still be parsed is counted, so a repair never frees a
 * cluster a bitmap structure points at.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import type { Counters } from "./_check_types.ts";
import { hex, joinHex } from "./_entries.ts";
import { parseBitmapDirectory } from "./_tables.ts";
import {
  type BitmapsState,
  bitmapsState,
  bitmapTableSize,
  BME_FLAG_IN_USE,
  BME_MAX_PHYS_SIZE,
  checkBitmapDirectory,
  QCOW2_MAX_BITMAP_DIRECTORY_SIZE,
  tableEntry,
} from "./_bitmap_format.ts";
import type { Qcow2Header } from "./header.ts";

/** What the bitmap check needs from the checker. */
export interface BitmapCheckContext {
  /** The image file. */
  file: BlockNode;
  /** Its header. */
  h: Qcow2Header;
  /** Counters of the pass. */
  res: Counters;
  /** Reports a line. */
  say(line: string): void;
  /** Counts a reference to `[offset, offset + size)`. */
  inc(offset: number, size: number): void;
  /** Reads bytes (zeros past the end of the file). */
  read(offset: number, length: number): Promise<Uint8Array>;
}

/**
 * Counts and validates the bitmaps of the image.
 *
 * @example
 * ```ts
 * import { createImage, open } from "../../mod.ts";
 * import { readHeaderFrom } from "./header.ts";
 * import { checkBitmaps } from "./_check_bitmaps.ts";
 * import { zeroCounters } from "./_check_types.ts";
 * const path = await Deno.makeTempFile({ suffix: ".qcow2" });
 * await createImage(path, "qcow2", 1 << 20);
 * await using file = await open({ driver: "file", filename: path }, { readOnly: true });
 * const res = zeroCounters();
 * const refs: number[] = [];
 * await checkBitmaps({ file, h: await readHeaderFrom(file), res, say: console.log, inc: (o) => refs.push(o),
 *   read: async (o, n) => { const b = new Uint8Array(n); await file.pread(o, b); return b; } });
 * console.log(res.corruptions, refs.length); // 0 0 (no bitmaps)
 * await Deno.remove(path);
 * ```
 */
export async function checkBitmaps(c: BitmapCheckContext): Promise<void> {
  const { h, file } = c;
  const cs = 2 ** h.clusterBits;
  let state: BitmapsState;
  try {
    state = bitmapsState(h);
  } catch (e) {
    c.say(`ERROR bitmaps extension: ${(e as Error).message}`);
    c.res.corruptions++;
    return;
  }
  // Without the autoclear bit the extension is void (a program without bitmap support wrote the image): its clusters are leaks.
  if (state.kind !== "valid") return;
  const { ext } = state;
  c.inc(ext.dirOffset, ext.dirSize);
  if (ext.dirSize === 0 || ext.dirSize > QCOW2_MAX_BITMAP_DIRECTORY_SIZE || ext.dirOffset + ext.dirSize > file.length) {
    c.say(`ERROR bitmap directory at offset 0x${hex(ext.dirOffset)} (${ext.dirSize} bytes) does not lie inside the file`);
    c.res.corruptions++;
    return;
  }
  const buf = await c.read(ext.dirOffset, ext.dirSize);
  try {
    checkBitmapDirectory(buf, ext.count, cs, h.size);
  } catch (e) {
    c.say(`ERROR bitmap directory: ${(e as Error).message}`);
    c.res.corruptions++;
  }
  // Whatever parses is counted, valid or not.
  let entries = parseBitmapDirectory(buf, ext.count);
  if (typeof entries === "string") {
    for (let n = ext.count - 1; n >= 0 && typeof entries === "string"; n--) entries = parseBitmapDirectory(buf, n);
    if (typeof entries === "string") return;
  }
  const names = new Set<string>();
  for (const e of entries) {
    if (names.has(e.name)) {
      // QEMU's open fails with this message: two bitmaps of one name cannot both be loaded.
      c.say(`ERROR bitmap directory: Bitmap already exists: ${e.name}`);
      c.res.corruptions++;
    }
    names.add(e.name);
    const bytes = e.tableSize * 8;
    if (e.tableOffset === 0 || e.tableOffset % cs !== 0 || e.tableSize * cs > BME_MAX_PHYS_SIZE || e.tableOffset + bytes > file.length) {
      // Reported by the directory check; a table that cannot be read is not walked.
      if (e.tableOffset !== 0 && e.tableOffset % cs === 0) c.inc(e.tableOffset, bytes);
      continue;
    }
    c.inc(e.tableOffset, bytes);
    const t = await c.read(e.tableOffset, bytes);
    const v = new DataView(t.buffer, t.byteOffset, t.byteLength);
    for (let i = 0; i < e.tableSize; i++) {
      const hi = v.getUint32(i * 8);
      const lo = v.getUint32(i * 8 + 4);
      const entry = tableEntry(hi, lo, cs);
      if (!entry) {
        c.say(`ERROR bitmap '${e.name}' table entry ${i} is invalid: 0x${joinHex(hi, lo)}`);
        c.res.corruptions++;
        // Still a reference when it names a cluster: a repair must not free what the entry points at.
        const off = (hi & 0x00ffffff) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
        if (off && off % cs === 0 && off < file.length) c.inc(off, cs);
        continue;
      }
      if (entry.offset) c.inc(entry.offset, cs);
    }
    const want = bitmapTableSize(h.size, 2 ** e.granularityBits, cs);
    if (!(e.flags & BME_FLAG_IN_USE) && e.granularityBits >= 9 && e.granularityBits <= 31 && e.tableSize !== want) {
      c.say(`ERROR bitmap '${e.name}' has ${e.tableSize} table entries; a bitmap of the disk needs ${want}`);
      c.res.corruptions++;
    }
  }
}
