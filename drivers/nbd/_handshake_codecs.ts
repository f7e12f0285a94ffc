/**
 * NBD handshake codecs: the server greeting, option requests and replies,
 * `NBD_INFO_*` payloads and the meta-context option data. Decoders of
 * client data return null when it is malformed, so the server can answer
 * `NBD_REP_ERR_INVALID` and stay in sync.
 *
 * @module
 */

import { decodeString, encodeString, IHAVEOPT, INFO, MAX_STRING, NBD_MAGIC, OPT_REPLY_MAGIC, setU64, view } from "./_protocol.ts";

/** The 18 bytes a server opens with: NBDMAGIC, IHAVEOPT, handshake flags. */
export function encodeGreeting(flags: number): Uint8Array {
  const b = new Uint8Array(18);
  const dv = view(b);
  dv.setBigUint64(0, NBD_MAGIC);
  dv.setBigUint64(8, IHAVEOPT);
  dv.setUint16(16, flags);
  return b;
}

/** An option request header plus its data. */
export function encodeOption(opt: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(16 + data.length);
  const dv = view(b);
  dv.setBigUint64(0, IHAVEOPT);
  dv.setUint32(8, opt);
  dv.setUint32(12, data.length);
  b.set(data, 16);
  return b;
}

/** An option reply header plus its data. */
export function encodeOptionReply(opt: number, type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(20 + data.length);
  const dv = view(b);
  dv.setBigUint64(0, OPT_REPLY_MAGIC);
  dv.setUint32(8, opt);
  dv.setUint32(12, type);
  dv.setUint32(16, data.length);
  b.set(data, 20);
  return b;
}

/** Joins byte arrays into one. */
export function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A u32 length followed by the string's bytes. */
export function lengthPrefixed(s: Uint8Array): Uint8Array {
  const b = new Uint8Array(4 + s.length);
  view(b).setUint32(0, s.length);
  b.set(s, 4);
  return b;
}

/** Payload of `NBD_INFO_EXPORT`: type, size, transmission flags. */
export function encodeInfoExport(size: number, flags: number): Uint8Array {
  const b = new Uint8Array(12);
  const dv = view(b);
  dv.setUint16(0, INFO.EXPORT);
  setU64(dv, 2, size);
  dv.setUint16(10, flags);
  return b;
}

/** Payload of `NBD_INFO_BLOCK_SIZE`. */
export function encodeInfoBlockSize(min: number, preferred: number, max: number): Uint8Array {
  const b = new Uint8Array(14);
  const dv = view(b);
  dv.setUint16(0, INFO.BLOCK_SIZE);
  dv.setUint32(2, min);
  dv.setUint32(6, preferred);
  dv.setUint32(10, max);
  return b;
}

/** Payload of a string-valued info (`NBD_INFO_NAME`, `NBD_INFO_DESCRIPTION`). */
export function encodeInfoString(type: number, s: Uint8Array): Uint8Array {
  const b = new Uint8Array(2 + s.length);
  view(b).setUint16(0, type);
  b.set(s, 2);
  return b;
}

/** What `NBD_OPT_INFO`/`NBD_OPT_GO` carry. */
export interface InfoRequest {
  /** Export name. */
  name: string;
  /** Information types asked for. */
  requests: number[];
}

/** Encodes `NBD_OPT_INFO`/`NBD_OPT_GO` data. */
export function encodeInfoRequest(name: string, requests: number[]): Uint8Array {
  const n = encodeString(name, "export name");
  const b = new Uint8Array(4 + n.length + 2 + 2 * requests.length);
  const dv = view(b);
  dv.setUint32(0, n.length);
  b.set(n, 4);
  dv.setUint16(4 + n.length, requests.length);
  requests.forEach((r, i) => dv.setUint16(6 + n.length + 2 * i, r));
  return b;
}

/** Decodes `NBD_OPT_INFO`/`NBD_OPT_GO` data; null when malformed (the server answers ERR_INVALID). */
export function decodeInfoRequest(data: Uint8Array): InfoRequest | null {
  if (data.length < 6) return null;
  const dv = view(data);
  const nameLen = dv.getUint32(0);
  if (nameLen > data.length - 6 || nameLen > MAX_STRING) return null;
  const count = dv.getUint16(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * count) return null;
  let name: string;
  try {
    name = decodeString(data.subarray(4, 4 + nameLen), "export name");
  } catch {
    return null;
  }
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(dv.getUint16(6 + nameLen + 2 * i));
  return { name, requests };
}

/** What `NBD_OPT_LIST_META_CONTEXT`/`NBD_OPT_SET_META_CONTEXT` carry. */
export interface MetaContextRequest {
  /** Export name. */
  name: string;
  /** Queries (`base:allocation`, `qemu:`). */
  queries: string[];
}

/** Encodes meta-context option data. */
export function encodeMetaContextRequest(name: string, queries: string[]): Uint8Array {
  return concat([
    lengthPrefixed(encodeString(name, "export name")),
    (() => {
      const b = new Uint8Array(4);
      view(b).setUint32(0, queries.length);
      return b;
    })(),
    ...queries.map((q) => lengthPrefixed(encodeString(q, "meta context query"))),
  ]);
}

/** Decodes meta-context option data; null when malformed. */
export function decodeMetaContextRequest(data: Uint8Array): MetaContextRequest | null {
  const dv = view(data);
  if (data.length < 8) return null;
  const nameLen = dv.getUint32(0);
  if (nameLen > data.length - 8 || nameLen > MAX_STRING) return null;
  let at = 4 + nameLen;
  const count = dv.getUint32(at);
  at += 4;
  // Each query needs at least its 4-byte length: a count larger than that is malformed.
  if (count > (data.length - at) / 4) return null;
  try {
    const name = decodeString(data.subarray(4, 4 + nameLen), "export name");
    const queries: string[] = [];
    for (let i = 0; i < count; i++) {
      if (at + 4 > data.length) return null;
      const len = dv.getUint32(at);
      at += 4;
      if (len > data.length - at || len > MAX_STRING) return null;
      queries.push(decodeString(data.subarray(at, at + len), "meta context query"));
      at += len;
    }
    if (at !== data.length) return null;
    return { name, queries };
  } catch {
    return null;
  }
}
