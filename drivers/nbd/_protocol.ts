/**
 * The NBD wire protocol (NetworkBlockDevice/nbd `doc/proto.md`), shared by
 * the server and the client: constants, and codecs that write into or read
 * from caller-supplied buffers so the hot path makes no per-request copies.
 * Every decoder validates lengths before trusting them and fails with a
 * {@linkcode NbdProtocolError} naming the field and the value.
 *
 * @module
 */

import { BlockError, type ErrnoCode } from "../../core/errors.ts";

// ---- magics --------------------------------------------------------------

/** `NBDMAGIC`, the first 8 bytes a server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** `IHAVEOPT`: newstyle handshake magic, and the magic of every option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** The oldstyle handshake's magic after `NBDMAGIC` (NBD_CLIENT_MAGIC): size and flags follow, no options. */
export const OLDSTYLE_MAGIC = 0x00420281861253n;
/** Magic of option replies. */
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
/** Magic of a transmission request. */
export const REQUEST_MAGIC = 0x25609513;
/** Magic of a simple reply. */
export const SIMPLE_REPLY_MAGIC = 0x67446698;
/** Magic of a structured reply chunk. */
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---- handshake -------------------------------------------------------------

/** Server handshake flag: fixed newstyle. */
export const FLAG_FIXED_NEWSTYLE = 1;
/** Server handshake flag: the client may skip the 124 zero bytes. */
export const FLAG_NO_ZEROES = 2;
/** Client flag: the client speaks fixed newstyle. */
export const FLAG_C_FIXED_NEWSTYLE = 1;
/** Client flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`. */
export const FLAG_C_NO_ZEROES = 2;

/** Option numbers. */
export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

/** Option reply types (errors have bit 31 set). */
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

/** Information types of `NBD_REP_INFO`. */
export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags. */
export const TF = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

// ---- transmission ----------------------------------------------------------

/** Command numbers. */
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;

/** Command flags. */
export const CMD_FLAG = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const;

/** Structured reply flag: last chunk of the reply. */
export const REPLY_FLAG_DONE = 1;

/** Structured reply chunk types. */
export const REPLY_TYPE = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 0x8001, ERROR_OFFSET: 0x8002 } as const;

/** `base:allocation` status flags. */
export const STATE_HOLE = 1;
/** `base:allocation`: the extent reads as zeros. */
export const STATE_ZERO = 2;
/** `qemu:dirty-bitmap:NAME` extent flag: the range is dirty in the bitmap. */
export const STATE_DIRTY = 1;

/** Size of a request header. */
export const REQUEST_SIZE = 28;
/** Size of a simple reply header. */
export const SIMPLE_REPLY_SIZE = 16;
/** Size of a structured reply chunk header. */
export const CHUNK_HEADER_SIZE = 20;
/** Largest payload the server accepts and advertises (the spec's 32 MiB). */
export const MAX_PAYLOAD = 32 << 20;
/** Longest string the protocol allows (export names, messages). */
export const MAX_STRING = 4096;
/** Largest option payload the server reads (names, queries); larger ones are refused. */
export const MAX_OPTION_LENGTH = 64 << 10;

/** The command's name, for messages. */
export function cmdName(type: number): string {
  for (const [k, v] of Object.entries(CMD)) if (v === type) return `NBD_CMD_${k}`;
  return `command ${type}`;
}

/** The option's name, for messages. */
export function optName(opt: number): string {
  for (const [k, v] of Object.entries(OPT)) if (v === opt) return `NBD_OPT_${k}`;
  return `option ${opt}`;
}

// ---- errors ----------------------------------------------------------------

/** A peer broke the protocol: the connection cannot continue. */
export class NbdProtocolError extends BlockError {
  /** Creates a protocol error (code EIO). */
  constructor(message: string) {
    super("EIO", message);
    this.name = "NbdProtocolError";
  }
}

/** NBD error numbers (the wire values). */
export const NBD_ERR = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** Maps a block-layer error code onto the NBD error a server sends (QEMU's system_errno_to_nbd_errno). */
export function toNbdError(code: ErrnoCode | string): number {
  switch (code) {
    case "EPERM":
    case "EROFS":
      return NBD_ERR.EPERM;
    case "EIO":
      return NBD_ERR.EIO;
    case "ENOMEM":
      return NBD_ERR.ENOMEM;
    case "ENOSPC":
    case "EFBIG":
      return NBD_ERR.ENOSPC;
    case "EOVERFLOW":
      return NBD_ERR.EOVERFLOW;
    case "ENOTSUP":
      return NBD_ERR.ENOTSUP;
    case "ESHUTDOWN":
      return NBD_ERR.ESHUTDOWN;
    default:
      return NBD_ERR.EINVAL;
  }
}

/** Maps an NBD error number a client received onto a block-layer code (unknown values read as EINVAL, as the spec says). */
export function fromNbdError(err: number): ErrnoCode {
  switch (err) {
    case NBD_ERR.EPERM:
      return "EPERM";
    case NBD_ERR.EIO:
      return "EIO";
    case NBD_ERR.ENOMEM:
      return "ENOMEM";
    case NBD_ERR.ENOSPC:
      return "ENOSPC";
    case NBD_ERR.EOVERFLOW:
      return "EOVERFLOW";
    case NBD_ERR.ENOTSUP:
      return "ENOTSUP";
    case NBD_ERR.ESHUTDOWN:
      return "ESHUTDOWN";
    default:
      return "EINVAL";
  }
}

// ---- byte helpers ----------------------------------------------------------

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

/** Encodes a protocol string, refusing NUL bytes and strings over 4096 bytes. */
export function encodeString(s: string, what: string): Uint8Array {
  const b = enc.encode(s);
  if (b.length > MAX_STRING) {
    throw new BlockError("EINVAL", `Invalid ${what}: ${b.length} bytes is longer than the NBD limit of ${MAX_STRING}`);
  }
  if (b.includes(0)) throw new BlockError("EINVAL", `Invalid ${what} ${JSON.stringify(s)}: NBD strings cannot contain NUL`);
  return b;
}

/** Decodes a protocol string (strict UTF-8, no NUL). */
export function decodeString(b: Uint8Array, what: string): string {
  if (b.length > MAX_STRING) throw new NbdProtocolError(`Invalid ${what}: length ${b.length} exceeds ${MAX_STRING}`);
  if (b.includes(0)) throw new NbdProtocolError(`Invalid ${what}: contains a NUL byte`);
  try {
    return dec.decode(b);
  } catch {
    throw new NbdProtocolError(`Invalid ${what}: not valid UTF-8`);
  }
}

/** Reads a 64-bit unsigned field as a number; values past 2^53 are a protocol error naming the field. */
export function getU64(dv: DataView, at: number, what: string): number {
  const hi = dv.getUint32(at);
  const lo = dv.getUint32(at + 4);
  if (hi >= 0x200000) throw new NbdProtocolError(`Invalid ${what} 0x${hi.toString(16)}${lo.toString(16).padStart(8, "0")}: too large`);
  return hi * 0x100000000 + lo;
}

/** Writes a number below 2^53 as a 64-bit unsigned field. */
export function setU64(dv: DataView, at: number, n: number): void {
  dv.setUint32(at, Math.floor(n / 0x100000000));
  dv.setUint32(at + 4, n >>> 0);
}

/** A DataView over a byte array (same memory). */
export function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

// ---- transmission codecs -----------------------------------------------------

/** A decoded request header. */
export interface RequestHeader {
  /** Command flags. */
  flags: number;
  /** Command type. */
  type: number;
  /** Cookie, high 32 bits. */
  cookieHi: number;
  /** Cookie, low 32 bits. */
  cookieLo: number;
  /** Offset (below 2^53; larger values are a protocol error). */
  offset: number;
  /** Length. */
  length: number;
}

/** Writes a request header at `at`. */
export function encodeRequest(dv: DataView, at: number, r: RequestHeader): void {
  dv.setUint32(at, REQUEST_MAGIC);
  dv.setUint16(at + 4, r.flags);
  dv.setUint16(at + 6, r.type);
  dv.setUint32(at + 8, r.cookieHi);
  dv.setUint32(at + 12, r.cookieLo);
  setU64(dv, at + 16, r.offset);
  dv.setUint32(at + 24, r.length);
}

/** Reads the request header at `at` into `out`; a bad magic is a protocol error. */
export function decodeRequest(dv: DataView, at: number, out: RequestHeader): RequestHeader {
  const magic = dv.getUint32(at);
  if (magic !== REQUEST_MAGIC) throw new NbdProtocolError(`Invalid request magic 0x${magic.toString(16)} (expected 0x25609513)`);
  out.flags = dv.getUint16(at + 4);
  out.type = dv.getUint16(at + 6);
  out.cookieHi = dv.getUint32(at + 8);
  out.cookieLo = dv.getUint32(at + 12);
  // Offsets past 2^53 cannot be inside any export: they read as "past the end".
  const hi = dv.getUint32(at + 16);
  out.offset = hi >= 0x200000 ? Number.MAX_SAFE_INTEGER : hi * 0x100000000 + dv.getUint32(at + 20);
  out.length = dv.getUint32(at + 24);
  return out;
}

/** Writes a simple reply header at `at`. */
export function encodeSimpleReply(dv: DataView, at: number, error: number, cookieHi: number, cookieLo: number): void {
  dv.setUint32(at, SIMPLE_REPLY_MAGIC);
  dv.setUint32(at + 4, error);
  dv.setUint32(at + 8, cookieHi);
  dv.setUint32(at + 12, cookieLo);
}

/** Writes a structured reply chunk header at `at`. */
export function encodeChunkHeader(
  dv: DataView,
  at: number,
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  length: number,
): void {
  dv.setUint32(at, STRUCTURED_REPLY_MAGIC);
  dv.setUint16(at + 4, flags);
  dv.setUint16(at + 6, type);
  dv.setUint32(at + 8, cookieHi);
  dv.setUint32(at + 12, cookieLo);
  dv.setUint32(at + 16, length);
}

/** A whole error chunk (`NBD_REPLY_TYPE_ERROR`, done) with a message, cut to the protocol's limit. */
export function encodeErrorChunk(cookieHi: number, cookieLo: number, error: number, message: string): Uint8Array {
  let msg = enc.encode(message.replaceAll("\0", ""));
  if (msg.length > MAX_STRING) msg = msg.subarray(0, MAX_STRING);
  const b = new Uint8Array(CHUNK_HEADER_SIZE + 6 + msg.length);
  const dv = view(b);
  encodeChunkHeader(dv, 0, REPLY_FLAG_DONE, REPLY_TYPE.ERROR, cookieHi, cookieLo, 6 + msg.length);
  dv.setUint32(20, error);
  dv.setUint16(24, msg.length);
  b.set(msg, 26);
  return b;
}
