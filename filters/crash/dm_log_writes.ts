/**
 * The dm-log-writes on-disk log format (Linux `drivers/md/dm-log-writes.c`,
 * also written by QEMU's `blklogwrites` driver), so a log recorded by the
 * `recorder` filter and a log recorded by QEMU replay through one tool.
 *
 * Layout, all integers little-endian, in units of the log's sector size:
 * sector 0 holds the super block (magic, version, entry count, sector
 * size); entries follow from sector 1. Each entry is one sector holding its
 * header (sector, nr_sectors, flags, data_len) — a mark keeps its label in
 * the same sector after the header — followed, for writes, by `nr_sectors`
 * sectors of data. Discards and flushes carry no data. `sector` and
 * `nr_sectors` count log sectors (as QEMU writes them; the kernel's
 * device sector size is the log sector size, so the two agree).
 *
 * The log is ordered by completion: a reader treats a FLUSH entry as making
 * everything before it durable. A truncate has no dm-log-writes entry; it is
 * written as a mark labelled `blkgraph-truncate <bytes>` and read back as a
 * truncate.
 *
 * @example
 * ```ts
 * import { readDmLogWrites, writeDmLogWrites } from "@blkgraph/blkgraph/filters/crash";
 * const bytes = writeDmLogWrites([
 *   { op: "write", offset: 512, length: 512, fua: false, data: new Uint8Array(512).fill(7), submit: 1, complete: 2, time: 0 },
 *   { op: "flush", offset: 0, length: 0, fua: false, submit: 3, complete: 4, time: 0 },
 * ]);
 * console.log(readDmLogWrites(bytes).map((op) => op.op)); // ["write", "flush"]
 * ```
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { RecordedOp } from "../recorder.ts";

/** dm-log-writes super block magic ("rhswfsj" read as a little-endian u64). */
export const DM_LOG_WRITES_MAGIC = 0x6a736677736872n;
/** The only format version. */
export const DM_LOG_WRITES_VERSION = 1n;

/** Entry flags. */
export const LOG_FLUSH_FLAG = 1;
/** The write was FUA. */
export const LOG_FUA_FLAG = 2;
/** A discard (no data follows). */
export const LOG_DISCARD_FLAG = 4;
/** A mark (label inline after the header). */
export const LOG_MARK_FLAG = 8;
/** Metadata write (kernel only; informational). */
export const LOG_METADATA_FLAG = 16;
const KNOWN_FLAGS = LOG_FLUSH_FLAG | LOG_FUA_FLAG | LOG_DISCARD_FLAG | LOG_MARK_FLAG | LOG_METADATA_FLAG;

/** Size of the super block and of an entry header. */
const SUPER_FIELDS = { magic: 0, version: 8, nrEntries: 16, sectorSize: 24 } as const;
const ENTRY_FIELDS = { sector: 0, nrSectors: 8, flags: 16, dataLen: 24 } as const;
const ENTRY_HEADER = 32;
const TRUNCATE_MARK = "blkgraph-truncate ";

/** Completed ops (and then the ones that never completed) in completion order. */
function completionOrder(log: readonly RecordedOp[]): RecordedOp[] {
  const done = log.filter((op) => op.complete !== undefined).sort((a, b) => a.complete! - b.complete!);
  const rest = log.filter((op) => op.complete === undefined && op.error === undefined);
  return [...done, ...rest];
}

function checkSectorSize(sectorSize: number, where: string): void {
  if (!Number.isInteger(sectorSize) || sectorSize < 64 || sectorSize >= 1 << 24 || (sectorSize & (sectorSize - 1)) !== 0) {
    throw new BlockError("EINVAL", `Invalid dm-log-writes sector size ${sectorSize} ${where}: it must be a power of two from 64 to 8M`);
  }
}

/**
 * Encodes a recorded log in the dm-log-writes format. Write offsets and
 * lengths must be multiples of `sectorSize`; write-zeroes become writes of
 * zero data (as QEMU's blklogwrites logs them).
 */
export function writeDmLogWrites(log: readonly RecordedOp[], sectorSize = 512): Uint8Array {
  checkSectorSize(sectorSize, "for writing");
  const ops = completionOrder(log);
  let sectors = 1;
  for (const op of ops) {
    sectors += 1;
    if (op.op === "write" || op.op === "write-zeroes") sectors += op.length / sectorSize;
  }
  for (const op of ops) {
    if ((op.op === "write" || op.op === "write-zeroes" || op.op === "discard") && (op.offset % sectorSize || op.length % sectorSize)) {
      throw new BlockError(
        "EINVAL",
        `Cannot log ${op.op} of ${op.length} bytes at offset ${op.offset} in dm-log-writes format: not aligned to the ${sectorSize}-byte log sector`,
        { offset: op.offset, length: op.length },
      );
    }
  }
  const out = new Uint8Array(sectors * sectorSize);
  const view = new DataView(out.buffer);
  view.setBigUint64(SUPER_FIELDS.magic, DM_LOG_WRITES_MAGIC, true);
  view.setBigUint64(SUPER_FIELDS.version, DM_LOG_WRITES_VERSION, true);
  view.setBigUint64(SUPER_FIELDS.nrEntries, BigInt(ops.length), true);
  view.setUint32(SUPER_FIELDS.sectorSize, sectorSize, true);
  const enc = new TextEncoder();
  let pos = sectorSize;
  for (const op of ops) {
    let flags = 0;
    let sector = 0;
    let nr = 0;
    let label: Uint8Array | undefined;
    switch (op.op) {
      case "write":
      case "write-zeroes":
        sector = op.offset / sectorSize;
        nr = op.length / sectorSize;
        if (op.fua) flags |= LOG_FUA_FLAG;
        break;
      case "discard":
        sector = op.offset / sectorSize;
        nr = op.length / sectorSize;
        flags = LOG_DISCARD_FLAG;
        break;
      case "flush":
        flags = LOG_FLUSH_FLAG;
        break;
      case "mark":
      case "truncate":
        flags = LOG_MARK_FLAG;
        label = enc.encode(op.op === "mark" ? op.label ?? "" : `${TRUNCATE_MARK}${op.offset}`);
        if (label.length > sectorSize - ENTRY_HEADER - 1) label = label.subarray(0, sectorSize - ENTRY_HEADER - 1);
        break;
    }
    view.setBigUint64(pos + ENTRY_FIELDS.sector, BigInt(sector), true);
    view.setBigUint64(pos + ENTRY_FIELDS.nrSectors, BigInt(nr), true);
    view.setBigUint64(pos + ENTRY_FIELDS.flags, BigInt(flags), true);
    view.setBigUint64(pos + ENTRY_FIELDS.dataLen, BigInt(label?.length ?? 0), true);
    if (label) out.set(label, pos + ENTRY_HEADER);
    pos += sectorSize;
    if (op.op === "write") {
      if (op.data) out.set(op.data, pos);
      pos += op.length;
    } else if (op.op === "write-zeroes") {
      pos += op.length; // already zero
    }
  }
  return out;
}

function u64(view: DataView, at: number, field: string, entry: number): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new BlockError("EINVAL", `Invalid dm-log-writes entry ${entry}: field '${field}' is ${v}, too large`);
  }
  return Number(v);
}

/**
 * Decodes a dm-log-writes log (ours or QEMU's blklogwrites). Entries get
 * consecutive logical clock stamps (`submit` 2i+1, `complete` 2i+2), so a
 * FLUSH entry makes every earlier entry durable in the persistence model.
 */
export function readDmLogWrites(bytes: Uint8Array): RecordedOp[] {
  if (bytes.length < ENTRY_HEADER) {
    throw new BlockError("EINVAL", `Invalid dm-log-writes log: ${bytes.length} bytes is shorter than the super block`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getBigUint64(SUPER_FIELDS.magic, true);
  if (magic !== DM_LOG_WRITES_MAGIC) {
    throw new BlockError("EINVAL", `Invalid dm-log-writes log: super block magic is 0x${magic.toString(16)}, expected 0x6a736677736872`);
  }
  const version = view.getBigUint64(SUPER_FIELDS.version, true);
  if (version !== DM_LOG_WRITES_VERSION) {
    throw new BlockError("EINVAL", `Unsupported dm-log-writes version ${version} (only version 1 is known)`);
  }
  const sectorSize = view.getUint32(SUPER_FIELDS.sectorSize, true);
  checkSectorSize(sectorSize, "in the super block");
  const count = u64(view, SUPER_FIELDS.nrEntries, "nr_entries", -1);
  const dec = new TextDecoder();
  const ops: RecordedOp[] = [];
  let pos = sectorSize;
  for (let i = 0; i < count; i++) {
    if (pos + sectorSize > bytes.length) {
      throw new BlockError(
        "EINVAL",
        `Invalid dm-log-writes log: entry ${i} of ${count} at byte ${pos} is past the end of the log (${bytes.length} bytes)`,
      );
    }
    const sector = u64(view, pos + ENTRY_FIELDS.sector, "sector", i);
    const nr = u64(view, pos + ENTRY_FIELDS.nrSectors, "nr_sectors", i);
    const flags = u64(view, pos + ENTRY_FIELDS.flags, "flags", i);
    const dataLen = u64(view, pos + ENTRY_FIELDS.dataLen, "data_len", i);
    if (flags & ~KNOWN_FLAGS) throw new BlockError("EINVAL", `Invalid dm-log-writes entry ${i}: unknown flags 0x${flags.toString(16)}`);
    const base = { fua: (flags & LOG_FUA_FLAG) !== 0, submit: 2 * i + 1, complete: 2 * i + 2, time: 0 };
    const entryPos = pos;
    pos += sectorSize;
    if (flags & LOG_MARK_FLAG) {
      if (dataLen > sectorSize - ENTRY_HEADER) {
        throw new BlockError(
          "EINVAL",
          `Invalid dm-log-writes entry ${i}: mark data_len ${dataLen} does not fit in a ${sectorSize}-byte sector`,
        );
      }
      const label = dec.decode(bytes.subarray(entryPos + ENTRY_HEADER, entryPos + ENTRY_HEADER + dataLen));
      if (label.startsWith(TRUNCATE_MARK) && /^\d+$/.test(label.slice(TRUNCATE_MARK.length))) {
        ops.push({ ...base, op: "truncate", offset: Number(label.slice(TRUNCATE_MARK.length)), length: 0 });
      } else {
        ops.push({ ...base, op: "mark", offset: 0, length: 0, label });
      }
      continue;
    }
    const offset = sector * sectorSize;
    const length = nr * sectorSize;
    if (flags & LOG_DISCARD_FLAG) {
      ops.push({ ...base, op: "discard", offset, length });
      continue;
    }
    if (nr > 0) {
      if (pos + length > bytes.length) {
        throw new BlockError(
          "EINVAL",
          `Invalid dm-log-writes entry ${i}: ${nr} data sectors at byte ${pos} run past the end of the log (${bytes.length} bytes)`,
        );
      }
      ops.push({ ...base, op: "write", offset, length, data: bytes.slice(pos, pos + length) });
      pos += length;
    }
    if (flags & LOG_FLUSH_FLAG) {
      // A flush entry that also carries data (REQ_PREFLUSH with data) is a write then a flush.
      ops.push({ ...base, op: "flush", offset: 0, length: 0, fua: false });
    }
  }
  return ops;
}
