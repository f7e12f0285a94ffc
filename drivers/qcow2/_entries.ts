/**
 * Codecs for qcow2 table entries, shared by the driver, the checker, the
 * creation code and the crash oracles: L1/L2 entries (offset bits and
 * flags, read as two 32-bit halves so no BigInt is made on the hot path),
 * refcount entries of every width (1 to 64 bits), and hex formatting as
 * QEMU prints entries.
 *
 * @module
 */

/** 2^32, to join two 32-bit halves. */
export const HI = 2 ** 32;

/** L1/L2 flag: refcount is exactly one (QCOW_OFLAG_COPIED), in the high word. */
export const HI_COPIED = 0x80000000;
/** L2 flag: compressed cluster (QCOW_OFLAG_COMPRESSED), in the high word. */
export const HI_COMPRESSED = 0x40000000;
/** L2 flag: reads as zeros (QCOW_OFLAG_ZERO), in the low word. */
export const LO_ZERO = 1;
/** Offset bits 32..55 of an L1/L2/refcount-table entry, in the high word. */
export const OFFSET_HI_MASK = 0x00ffffff;
/** Offset bits 9..31 of an L1/L2/refcount-table entry, in the low word. */
export const OFFSET_LO_MASK = 0xfffffe00;

/** Reads the offset bits (9..55) of an L1, L2 or refcount-table entry at byte `at`. */
export function entryOffset(view: DataView, at: number): number {
  return (view.getUint32(at) & OFFSET_HI_MASK) * HI + ((view.getUint32(at + 4) & OFFSET_LO_MASK) >>> 0);
}

/** Writes an L1/L2 entry from an offset and flag words. */
export function setEntry(view: DataView, at: number, offset: number, hiFlags: number, loFlags: number): void {
  view.setUint32(at, ((Math.floor(offset / HI) & OFFSET_HI_MASK) | hiFlags) >>> 0);
  view.setUint32(at + 4, ((offset % HI) | loFlags) >>> 0);
}

/** Reads a whole 64-bit big-endian value (exact below 2^53). */
export function readU64(view: DataView, at: number): number {
  return view.getUint32(at) * HI + view.getUint32(at + 4);
}

/** Writes a 64-bit big-endian value (below 2^53). */
export function writeU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, Math.floor(value / HI));
  view.setUint32(at + 4, value % HI);
}

/** Hexadecimal of a 64-bit value given as two 32-bit halves (exact past 2^53), like C's `%" PRIx64 "`. */
export function joinHex(hi: number, lo: number): string {
  return hi ? hi.toString(16) + lo.toString(16).padStart(8, "0") : lo.toString(16);
}

/** An entry as hexadecimal without prefix. */
export function entryHex(view: DataView, at: number): string {
  return joinHex(view.getUint32(at), view.getUint32(at + 4));
}

/** A number as hexadecimal without prefix. */
export function hex(n: number): string {
  return n.toString(16);
}

/** Bytes per L2 entry: 8, or 16 with extended L2 entries. */
export function l2EntrySize(extendedL2: boolean): number {
  return extendedL2 ? 16 : 8;
}

/**
 * Reads entry `i` of a refcount block with `bits`-bit entries (QEMU's bit
 * order for widths below 8: lowest bits first).
 *
 * @example
 * ```ts
 * import { readRefcount } from "./_entries.ts";
 * console.log(readRefcount(new DataView(new Uint8Array([0b10_01_00_11]).buffer), 2, 1)); // 0
 * ```
 */
export function readRefcount(view: DataView, bits: number, i: number): number {
  switch (bits) {
    case 16:
      return view.getUint16(i * 2);
    case 8:
      return view.getUint8(i);
    case 32:
      return view.getUint32(i * 4);
    case 64:
      return readU64(view, i * 8);
    default: {
      const perByte = 8 / bits;
      const byte = view.getUint8(Math.floor(i / perByte));
      return (byte >> (bits * (i % perByte))) & ((1 << bits) - 1);
    }
  }
}

/** Writes entry `i` of a refcount block with `bits`-bit entries. */
export function writeRefcount(view: DataView, bits: number, i: number, value: number): void {
  switch (bits) {
    case 16:
      return view.setUint16(i * 2, value);
    case 8:
      return view.setUint8(i, value);
    case 32:
      return view.setUint32(i * 4, value);
    case 64:
      return writeU64(view, i * 8, value);
    default: {
      const perByte = 8 / bits;
      const at = Math.floor(i / perByte);
      const shift = bits * (i % perByte);
      const mask = ((1 << bits) - 1) << shift;
      view.setUint8(at, (view.getUint8(at) & ~mask) | ((value << shift) & mask));
    }
  }
}

/** Largest refcount a width can hold. */
export function maxRefcount(bits: number): number {
  return bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
}
