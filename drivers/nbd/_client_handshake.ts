/**
 * The client side of the fixed newstyle handshake: STARTTLS when asked,
 * structured replies, metadata contexts, then `NBD_OPT_GO` with block sizes
 * (falling back to `NBD_OPT_EXPORT_NAME` for servers without GO). A server
 * that opens with the oldstyle magic is spoken to as QEMU's client does
 * (nbd/client.c): one unnamed export, its size and flags sent at once,
 * simple replies only, no TLS.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { type ByteStream, SocketReader, SocketWriter } from "./_io.ts";
import {
  encodeString,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  getU64,
  IHAVEOPT,
  INFO,
  NBD_MAGIC,
  NbdProtocolError,
  OLDSTYLE_MAGIC,
  OPT,
  OPT_REPLY_MAGIC,
  optName,
  REP,
  view,
} from "./_protocol.ts";
import { encodeInfoRequest, encodeMetaContextRequest, encodeOption } from "./_handshake_codecs.ts";

/** What the client learnt about the export. */
export interface ExportInfo {
  /** Export size in bytes. */
  size: number;
  /** Transmission flags. */
  flags: number;
  /** Minimum block size (1 when the server did not say). */
  minBlock: number;
  /** Preferred block size. */
  preferredBlock: number;
  /** Largest payload. */
  maxPayload: number;
  /** Structured replies are on. */
  structured: boolean;
  /** Selected metadata contexts: name to id. */
  contexts: Map<string, number>;
  /** Export description, when the server sent one. */
  description?: string;
  /** Reader to continue on. */
  reader: SocketReader;
  /** Writer to continue on. */
  writer: SocketWriter;
  /** The stream (a TLS stream after STARTTLS). */
  conn: ByteStream;
}

/** What the client asks for. */
export interface ClientHandshakeOptions {
  /** Export name. */
  export: string;
  /** Metadata contexts to select. */
  contexts: string[];
  /** Runs TLS over the connection after STARTTLS (absent: no TLS). */
  startTls?: (conn: ByteStream) => Promise<ByteStream>;
  /** Names the server in messages. */
  server: string;
}

const MAX_REPLY = 1 << 20;
const dec = new TextDecoder();

interface OptReply {
  type: number;
  data: Uint8Array;
}

/** Runs the client handshake on `conn`. */
export async function clientNegotiate(conn: ByteStream, opts: ClientHandshakeOptions): Promise<ExportInfo> {
  let reader = new SocketReader(conn);
  let writer = new SocketWriter(conn);
  const where = `NBD server ${opts.server}`;
  await reader.fill(18);
  const dv = reader.dv;
  const magic = dv.getBigUint64(reader.pos);
  if (magic !== NBD_MAGIC) throw new NbdProtocolError(`${where} sent magic 0x${magic.toString(16)}, not NBDMAGIC: is it an NBD server?`);
  const magic2 = dv.getBigUint64(reader.pos + 8);
  if (magic2 === OLDSTYLE_MAGIC) {
    reader.consume(16);
    return await oldstyle(opts, reader, writer, conn);
  }
  if (magic2 !== IHAVEOPT) throw new NbdProtocolError(`${where} sent magic 0x${magic2.toString(16)} after NBDMAGIC: not an NBD handshake`);
  const hflags = dv.getUint16(reader.pos + 16);
  reader.consume(18);
  const fixed = (hflags & FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (hflags & FLAG_NO_ZEROES) !== 0;
  const cflags = new Uint8Array(4);
  view(cflags).setUint32(0, (fixed ? FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? FLAG_C_NO_ZEROES : 0));
  writer.send(cflags);

  const ask = async (opt: number, data?: Uint8Array): Promise<OptReply> => {
    writer.send(encodeOption(opt, data));
    await reader.fill(20);
    const d = reader.dv;
    const m = d.getBigUint64(reader.pos);
    if (m !== OPT_REPLY_MAGIC) throw new NbdProtocolError(`${where} sent option reply magic 0x${m.toString(16)}`);
    const ropt = d.getUint32(reader.pos + 8);
    const type = d.getUint32(reader.pos + 12);
    const len = d.getUint32(reader.pos + 16);
    reader.consume(20);
    if (ropt !== opt) throw new NbdProtocolError(`${where} answered ${optName(ropt)} to ${optName(opt)}`);
    if (len > MAX_REPLY) throw new NbdProtocolError(`${where} sent an option reply of ${len} bytes`);
    return { type, data: await reader.readBytes(len) };
  };
  // Replies after the first come without a new request.
  const next = async (opt: number): Promise<OptReply> => {
    await reader.fill(20);
    const d = reader.dv;
    const m = d.getBigUint64(reader.pos);
    const ropt = d.getUint32(reader.pos + 8);
    const type = d.getUint32(reader.pos + 12);
    const len = d.getUint32(reader.pos + 16);
    reader.consume(20);
    if (m !== OPT_REPLY_MAGIC || ropt !== opt || len > MAX_REPLY) {
      throw new NbdProtocolError(`${where} sent a malformed reply to ${optName(opt)}`);
    }
    return { type, data: await reader.readBytes(len) };
  };
  const errorText = (r: OptReply) => (r.data.length ? `: ${dec.decode(r.data)}` : "");

  if (!fixed) {
    if (opts.startTls) throw new BlockError("EACCES", `${where} does not speak fixed newstyle, so TLS cannot be negotiated`);
    return await exportName(opts, reader, writer, conn, noZeroes, false, new Map());
  }

  if (opts.startTls) {
    const r = await ask(OPT.STARTTLS);
    if (r.type !== REP.ACK) throw new BlockError("EACCES", `${where} refused TLS${errorText(r)}`);
    conn = await opts.startTls(conn);
    reader = new SocketReader(conn);
    writer = new SocketWriter(conn);
  }

  const sr = await ask(OPT.STRUCTURED_REPLY);
  if (sr.type === REP.ERR_TLS_REQD) throw new BlockError("EACCES", `${where} requires TLS (give tls-creds)`);
  const structured = sr.type === REP.ACK;
  const contexts = new Map<string, number>();
  if (structured && opts.contexts.length) {
    let r = await ask(OPT.SET_META_CONTEXT, encodeMetaContextRequest(opts.export, opts.contexts));
    while (r.type === REP.META_CONTEXT) {
      if (r.data.length < 5) throw new NbdProtocolError(`${where} sent a meta context reply of ${r.data.length} bytes`);
      contexts.set(dec.decode(r.data.subarray(4)), view(r.data).getUint32(0));
      r = await next(OPT.SET_META_CONTEXT);
    }
    if (r.type !== REP.ACK) contexts.clear();
  }

  let r = await ask(OPT.GO, encodeInfoRequest(opts.export, [INFO.BLOCK_SIZE, INFO.DESCRIPTION]));
  if (r.type === REP.ERR_UNSUP) return await exportName(opts, reader, writer, conn, noZeroes, structured, contexts);
  const info: Partial<ExportInfo> = { minBlock: 1, preferredBlock: 4096, maxPayload: 32 << 20 };
  while (r.type === REP.INFO) {
    const d = view(r.data);
    if (r.data.length < 2) throw new NbdProtocolError(`${where} sent an info reply of ${r.data.length} bytes`);
    const it = d.getUint16(0);
    if (it === INFO.EXPORT) {
      if (r.data.length !== 12) throw new NbdProtocolError(`${where} sent NBD_INFO_EXPORT of ${r.data.length} bytes (expected 12)`);
      info.size = getU64(d, 2, "export size");
      info.flags = d.getUint16(10);
    } else if (it === INFO.BLOCK_SIZE) {
      if (r.data.length !== 14) throw new NbdProtocolError(`${where} sent NBD_INFO_BLOCK_SIZE of ${r.data.length} bytes (expected 14)`);
      const min = d.getUint32(2), pref = d.getUint32(6), max = d.getUint32(10);
      if (!min || min & (min - 1) || min > 65536 || pref < min || max < pref) {
        throw new NbdProtocolError(`${where} sent invalid block sizes ${min}/${pref}/${max}`);
      }
      Object.assign(info, { minBlock: min, preferredBlock: pref, maxPayload: max });
    } else if (it === INFO.DESCRIPTION) {
      info.description = dec.decode(r.data.subarray(2));
    }
    r = await next(OPT.GO);
  }
  if (r.type !== REP.ACK) {
    if (r.type === REP.ERR_UNKNOWN) {
      throw new BlockError("ENOENT", `Requested export '${opts.export}' not available on ${where}${errorText(r)}`);
    }
    if (r.type === REP.ERR_TLS_REQD) throw new BlockError("EACCES", `${where} requires TLS (give tls-creds)`);
    throw new BlockError("EIO", `${where} refused NBD_OPT_GO (reply 0x${r.type.toString(16)})${errorText(r)}`);
  }
  if (info.size === undefined) throw new NbdProtocolError(`${where} accepted NBD_OPT_GO without NBD_INFO_EXPORT`);
  return { ...(info as ExportInfo), structured, contexts, reader, writer, conn };
}

/** The rest of an oldstyle handshake (QEMU's NBD_CLIENT_MAGIC case): size, flags, 124 reserved bytes. */
async function oldstyle(opts: ClientHandshakeOptions, reader: SocketReader, writer: SocketWriter, conn: ByteStream): Promise<ExportInfo> {
  // QEMU's messages: an oldstyle server has one export, without a name, and no STARTTLS.
  if (opts.export !== "") throw new BlockError("EINVAL", "Server does not support non-empty export names");
  if (opts.startTls) throw new BlockError("EINVAL", "Server does not support STARTTLS");
  await reader.fill(12);
  const size = getU64(reader.dv, reader.pos, "export size");
  const flags = reader.dv.getUint32(reader.pos + 8);
  reader.consume(12);
  if (flags & ~0xffff) throw new NbdProtocolError(`Unexpected export flags 0x${flags.toString(16)}`);
  await reader.skip(124);
  return {
    size,
    flags,
    minBlock: 1,
    preferredBlock: 4096,
    maxPayload: 32 << 20,
    structured: false,
    contexts: new Map(),
    reader,
    writer,
    conn,
  };
}

async function exportName(
  opts: ClientHandshakeOptions,
  reader: SocketReader,
  writer: SocketWriter,
  conn: ByteStream,
  noZeroes: boolean,
  structured: boolean,
  contexts: Map<string, number>,
): Promise<ExportInfo> {
  writer.send(encodeOption(OPT.EXPORT_NAME, encodeString(opts.export, "export name")));
  try {
    await reader.fill(10);
  } catch {
    throw new BlockError("ENOENT", `Requested export '${opts.export}' not available on NBD server ${opts.server}`);
  }
  const size = getU64(reader.dv, reader.pos, "export size");
  const flags = reader.dv.getUint16(reader.pos + 8);
  reader.consume(10);
  if (!noZeroes) await reader.skip(124);
  return { size, flags, minBlock: 1, preferredBlock: 4096, maxPayload: 32 << 20, structured, contexts, reader, writer, conn };
}
