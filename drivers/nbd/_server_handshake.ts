/**
 * The server side of the fixed newstyle handshake: option haggling from the
 * greeting to `NBD_OPT_GO` / `NBD_OPT_EXPORT_NAME`, answering every option
 * (unknown ones with `NBD_REP_ERR_UNSUP`) without losing the stream.
 *
 * @module
 */

import type { BlockNode } from "../../core/node.ts";
import { type ByteStream, SocketReader, SocketWriter } from "./_io.ts";
import { matchList, matchSet, type MetaContextProvider } from "./_meta.ts";
import {
  decodeString,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO,
  MAX_OPTION_LENGTH,
  NbdProtocolError,
  OPT,
  optName,
  REP,
  setU64,
  TF,
  view,
} from "./_protocol.ts";
import {
  concat,
  decodeInfoRequest,
  decodeMetaContextRequest,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  lengthPrefixed,
} from "./_handshake_codecs.ts";

/** One export as the server offers it. */
export interface ExportConfig {
  /** Export name (`""` is the default export). */
  readonly name: string;
  /** Encoded export name. */
  readonly nameBytes: Uint8Array;
  /** Encoded description (`-D`), empty when none. */
  readonly description: Uint8Array;
  /** The node served. */
  readonly node: BlockNode;
  /** Export size in bytes, fixed for the server's lifetime. */
  readonly size: number;
  /** Transmission flags (without `SEND_DF`, added for structured clients). */
  readonly flags: number;
  /** Minimum block size advertised to clients that ask for block sizes. */
  readonly minBlock: number;
  /** Preferred block size. */
  readonly preferredBlock: number;
  /** Largest read or write payload. */
  readonly maxPayload: number;
  /** Metadata contexts on offer; a context's id is its index. */
  readonly contexts: readonly MetaContextProvider[];
  /** Refuse writes. */
  readonly readOnly: boolean;
  /** TRIM reaches the node (`--discard=unmap`); otherwise it is acknowledged and ignored. */
  readonly unmap: boolean;
  /** `--detect-zeroes`. */
  readonly detectZeroes: "off" | "on" | "unmap";
}

/** What the handshake settled. */
export interface Negotiated {
  /** Structured replies were negotiated. */
  structured: boolean;
  /** Selected metadata contexts, id = index into the export's contexts. */
  contexts: { id: number; provider: MetaContextProvider }[];
  /** Minimum block size the client agreed to honour (1 when it did not ask). */
  minBlock: number;
  /** Reader and writer to continue on (replaced after STARTTLS). */
  reader: SocketReader;
  /** Writer to continue on. */
  writer: SocketWriter;
  /** The stream (a TLS stream after STARTTLS). */
  conn: ByteStream;
}

/** Server-wide state the handshake consults. */
export interface HandshakeHooks {
  /** The server is shutting down: options are answered ERR_SHUTDOWN. */
  shuttingDown(): boolean;
  /** Upgrades the connection to TLS after STARTTLS was acknowledged; absent without `--tls-creds`. */
  startTls?: (conn: ByteStream) => Promise<ByteStream>;
}

/** Options per connection before the server gives up on a client that never picks an export. */
const MAX_OPTIONS = 4096;
/** Longest option payload that is skipped and refused with ERR_TOO_BIG; anything longer drops the connection. */
const MAX_SKIP = 1 << 20;

const enc = new TextEncoder();

/**
 * Runs the handshake. Resolves to the negotiated state when the client
 * entered transmission, or null when the session ended (ABORT, a refused
 * export name, a protocol violation or a vanished client).
 */
export async function negotiate(conn: ByteStream, exp: ExportConfig, hooks: HandshakeHooks): Promise<Negotiated | null> {
  let reader = new SocketReader(conn);
  let writer = new SocketWriter(conn);
  writer.send(encodeGreeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
  await reader.fill(4);
  const cflags = reader.dv.getUint32(reader.pos);
  reader.consume(4);
  // The server MUST drop the connection on client flags it does not know.
  if (cflags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) return null;
  const fixed = (cflags & FLAG_C_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (cflags & FLAG_C_NO_ZEROES) !== 0;
  const tlsRequired = hooks.startTls !== undefined;
  let tlsDone = false;
  let structured = false;
  let selected: { id: number; provider: MetaContextProvider }[] = [];

  const reply = (opt: number, type: number, data?: Uint8Array) => writer.send(encodeOptionReply(opt, type, data));
  const fail = (opt: number, type: number, message: string) => writer.send(encodeOptionReply(opt, type, enc.encode(message)));
  const flagsFor = () => exp.flags | (structured ? TF.SEND_DF : 0);

  for (let count = 0; count < MAX_OPTIONS; count++) {
    await reader.fill(16);
    const dv = reader.dv;
    const magic = dv.getBigUint64(reader.pos);
    if (magic !== IHAVEOPT) throw new NbdProtocolError(`Invalid option magic 0x${magic.toString(16)} (expected IHAVEOPT)`);
    const opt = dv.getUint32(reader.pos + 8);
    const length = dv.getUint32(reader.pos + 12);
    reader.consume(16);
    if (!fixed && opt !== OPT.EXPORT_NAME) return null;
    if (length > MAX_OPTION_LENGTH) {
      if (length > MAX_SKIP || opt === OPT.EXPORT_NAME) return null;
      await reader.skip(length);
      fail(opt, REP.ERR_TOO_BIG, `${optName(opt)}: option length ${length} exceeds ${MAX_OPTION_LENGTH}`);
      continue;
    }
    const data = await reader.readBytes(length);

    if (hooks.shuttingDown() && opt !== OPT.ABORT) {
      if (opt === OPT.EXPORT_NAME) return null;
      fail(opt, REP.ERR_SHUTDOWN, "Server is shutting down");
      continue;
    }
    if (tlsRequired && !tlsDone && opt !== OPT.STARTTLS && opt !== OPT.ABORT) {
      if (opt === OPT.EXPORT_NAME) return null;
      fail(opt, REP.ERR_TLS_REQD, "Option not permitted before TLS");
      continue;
    }

    switch (opt) {
      case OPT.EXPORT_NAME: {
        let name: string;
        try {
          name = decodeString(data, "export name");
        } catch {
          return null;
        }
        if (name !== exp.name) return null;
        const b = new Uint8Array(noZeroes ? 10 : 134);
        setU64(view(b), 0, exp.size);
        view(b).setUint16(8, flagsFor());
        writer.send(b);
        return { structured, contexts: selected, minBlock: 1, reader, writer, conn };
      }
      case OPT.ABORT:
        reply(opt, REP.ACK);
        await writer.drain();
        return null;
      case OPT.LIST:
        if (length) {
          fail(opt, REP.ERR_INVALID, "NBD_OPT_LIST must not carry data");
          break;
        }
        reply(opt, REP.SERVER, concat([lengthPrefixed(exp.nameBytes), exp.description]));
        reply(opt, REP.ACK);
        break;
      case OPT.STARTTLS:
        if (length) fail(opt, REP.ERR_INVALID, "NBD_OPT_STARTTLS must not carry data");
        else if (!hooks.startTls) fail(opt, REP.ERR_POLICY, "TLS not configured");
        else if (tlsDone) fail(opt, REP.ERR_INVALID, "TLS already enabled");
        else {
          reply(opt, REP.ACK);
          await writer.drain();
          conn = await hooks.startTls(conn);
          reader = new SocketReader(conn);
          writer = new SocketWriter(conn);
          tlsDone = true;
          // Nothing negotiated before STARTTLS survives it.
          structured = false;
          selected = [];
        }
        break;
      case OPT.INFO:
      case OPT.GO: {
        const req = decodeInfoRequest(data);
        if (!req) {
          fail(opt, REP.ERR_INVALID, `${optName(opt)}: malformed request of ${length} bytes`);
          break;
        }
        if (req.name !== exp.name) {
          fail(opt, REP.ERR_UNKNOWN, `export '${req.name}' not present`);
          break;
        }
        const wantsBlockSize = req.requests.includes(INFO.BLOCK_SIZE);
        if (req.requests.includes(INFO.NAME)) reply(opt, REP.INFO, encodeInfoString(INFO.NAME, exp.nameBytes));
        if (req.requests.includes(INFO.DESCRIPTION) && exp.description.length) {
          reply(opt, REP.INFO, encodeInfoString(INFO.DESCRIPTION, exp.description));
        }
        // Like qemu-nbd: block sizes always, the real minimum only to clients that promise to honour it.
        const min = wantsBlockSize || opt === OPT.INFO ? exp.minBlock : 1;
        reply(opt, REP.INFO, encodeInfoBlockSize(min, exp.preferredBlock, exp.maxPayload));
        reply(opt, REP.INFO, encodeInfoExport(exp.size, flagsFor()));
        reply(opt, REP.ACK);
        if (opt === OPT.GO) return { structured, contexts: selected, minBlock: wantsBlockSize ? exp.minBlock : 1, reader, writer, conn };
        break;
      }
      case OPT.STRUCTURED_REPLY:
        if (length) fail(opt, REP.ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY must not carry data");
        else if (structured) fail(opt, REP.ERR_INVALID, "structured reply already negotiated");
        else {
          structured = true;
          reply(opt, REP.ACK);
        }
        break;
      case OPT.LIST_META_CONTEXT:
      case OPT.SET_META_CONTEXT: {
        const set = opt === OPT.SET_META_CONTEXT;
        // SET replaces the selection even when it fails.
        if (set) selected = [];
        if (!structured) {
          fail(opt, REP.ERR_INVALID, `${optName(opt)} without structured replies`);
          break;
        }
        const req = decodeMetaContextRequest(data);
        if (!req) {
          fail(opt, REP.ERR_INVALID, `${optName(opt)}: malformed request of ${length} bytes`);
          break;
        }
        if (req.name !== exp.name) {
          fail(opt, REP.ERR_UNKNOWN, `export '${req.name}' not present`);
          break;
        }
        const found = set ? matchSet(exp.contexts, req.queries) : matchList(exp.contexts, req.queries);
        for (const p of found) {
          const id = exp.contexts.indexOf(p);
          const b = new Uint8Array(4 + p.name.length);
          view(b).setUint32(0, set ? id : 0);
          b.set(enc.encode(p.name), 4);
          reply(opt, REP.META_CONTEXT, b);
          if (set) selected.push({ id, provider: p });
        }
        reply(opt, REP.ACK);
        break;
      }
      default:
        fail(opt, REP.ERR_UNSUP, `Unsupported option ${opt} (${optName(opt)})`);
    }
  }
  return null;
}
