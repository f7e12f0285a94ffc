/**
 * The server's transmission phase: one read loop per connection parses
 * request headers straight out of the receive buffer and starts each
 * request at once, so many are in flight; replies go to a batching writer.
 * Read replies are allocated header-plus-payload and the node reads straight
 * into them (no copy per request). Bytes in flight per connection are
 * bounded: the loop stops reading while the bound is exceeded.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import { BufferPool } from "./_buffer_pool.ts";
import { ConnectionClosedError, microtaskTurns, REPLY_SETTLE_TURNS, type SocketReader, type SocketWriter } from "./_io.ts";
import type { ExportConfig, Negotiated } from "./_server_handshake.ts";
import {
  CHUNK_HEADER_SIZE,
  CMD,
  CMD_FLAG,
  cmdName,
  decodeRequest,
  encodeChunkHeader,
  encodeErrorChunk,
  encodeSimpleReply,
  NBD_ERR,
  NbdProtocolError,
  REPLY_FLAG_DONE,
  REPLY_TYPE,
  REQUEST_SIZE,
  type RequestHeader,
  setU64,
  SIMPLE_REPLY_SIZE,
  toNbdError,
  view,
} from "./_protocol.ts";

/** Bytes of requests and queued replies one connection may hold before its read loop pauses. */
const MAX_BYTES_IN_FLIGHT = 64 << 20;
/** Requests one connection may have in flight. */
const MAX_REQUESTS_IN_FLIGHT = 256;
/** Cost charged for a request without payload. */
const SMALL_COST = 512;
/** Chunk size of NBD_CMD_CACHE reads. */
const CACHE_CHUNK = 1 << 20;

/** A request the client must not have sent: answered with an error and `message`. */
class RequestError extends Error {
  readonly nbdErr: number;
  constructor(nbdErr: number, message: string) {
    super(message);
    this.nbdErr = nbdErr;
  }
}

/** How a session ended. */
export type SessionEnd = "disconnect" | "closed" | "protocol-error" | "shutdown";

/** Runs the transmission phase of one connection. */
export class TransmissionSession {
  #exp: ExportConfig;
  #node: BlockNode;
  #reader: SocketReader;
  #writer: SocketWriter;
  #structured: boolean;
  #contexts: Negotiated["contexts"];
  #minBlock: number;
  #inflight = 0;
  #inflightBytes = 0;
  #waiters: (() => void)[] = [];
  #shutdown = false;
  #pool = new BufferPool();
  /** Last error a request or the stream hit (for logs). */
  lastError: unknown = undefined;

  /** Creates a session from a finished handshake. */
  constructor(exp: ExportConfig, neg: Negotiated) {
    this.#exp = exp;
    this.#node = exp.node;
    this.#reader = neg.reader;
    this.#writer = neg.writer;
    this.#structured = neg.structured;
    this.#contexts = neg.contexts;
    this.#minBlock = neg.minBlock;
  }

  /** Requests in flight. */
  get inflight(): number {
    return this.#inflight;
  }

  /** From now on every new request is answered ESHUTDOWN; the ones in flight finish. */
  shutdown(): void {
    this.#shutdown = true;
  }

  /** Reads and serves requests until the client disconnects or the stream fails; waits for requests in flight. */
  async run(): Promise<SessionEnd> {
    const reader = this.#reader;
    const hdr: RequestHeader = { flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0 };
    let end: SessionEnd = "closed";
    try {
      const writer = this.#writer;
      for (;;) {
        // Replies of the requests parsed from one receive go out in one write: the writer is corked while the loop
        // runs without waiting, and uncorked whenever it is about to wait.
        writer.cork();
        let fresh = false;
        if (reader.buffered < REQUEST_SIZE) {
          writer.uncork();
          await reader.fill(REQUEST_SIZE);
          fresh = true;
        }
        decodeRequest(reader.dv, reader.pos, hdr);
        reader.consume(REQUEST_SIZE);
        const { flags, type, cookieHi, cookieLo, offset, length } = hdr;
        if (type === CMD.DISC) {
          end = "disconnect";
          break;
        }
        let data: Uint8Array | undefined;
        let pooled: Uint8Array | undefined;
        if (type === CMD.WRITE) {
          if (length > this.#exp.maxPayload) {
            // The payload cannot be skipped cheaply: answer, then drop the connection.
            this.#replyError(
              type,
              cookieHi,
              cookieLo,
              NBD_ERR.EINVAL,
              `Write of ${length} bytes exceeds the maximum payload of ${this.#exp.maxPayload}`,
            );
            end = "protocol-error";
            break;
          }
          // Pooled, so a stream of writes allocates nothing; the buffer goes back once the node's pwrite resolved.
          pooled = this.#pool.acquire(length);
          data = pooled.subarray(0, length);
          if (reader.buffered >= length) {
            data.set(reader.buf.subarray(reader.pos, reader.pos + length));
            reader.consume(length);
          } else {
            writer.uncork();
            await reader.readInto(data);
            fresh = true;
          }
        }
        const cost = type === CMD.READ || type === CMD.WRITE ? Math.min(length, this.#exp.maxPayload) + SMALL_COST : SMALL_COST;
        while (
          this.#inflight >= MAX_REQUESTS_IN_FLIGHT ||
          (this.#inflight > 0 && this.#inflightBytes + this.#writer.queuedBytes + cost > MAX_BYTES_IN_FLIGHT)
        ) {
          writer.uncork();
          await this.#nextCompletion();
        }
        if (writer.queuedBytes > MAX_BYTES_IN_FLIGHT) await writer.drain();
        this.#inflight++;
        this.#inflightBytes += cost;
        const served = this.#serve(flags, type, cookieHi, cookieLo, offset, length, data).finally(() => {
          if (pooled) this.#pool.release(pooled);
          this.#inflightBytes -= cost;
          // The last request in flight answered: the corked replies go out now, not after the cork's turn bound.
          if (--this.#inflight === 0) writer.settled();
          const ws = this.#waiters;
          this.#waiters = [];
          for (const w of ws) w();
        });
        if (fresh && reader.buffered >= REQUEST_SIZE) {
          // The first request of a receive that holds more: its reply goes out before the others are served, so the client
          // works on it (and sends the next request) while this loop serves the rest, instead of waiting for all of them
          // (on 2 cores, the client and the server then run side by side).
          // Bounded: a node that answers later (rbd, nbd) must not hold back the parsing of the rest.
          await Promise.race([served, microtaskTurns(REPLY_SETTLE_TURNS)]);
          writer.flushNow();
        }
      }
    } catch (e) {
      this.lastError = e;
      end = e instanceof ConnectionClosedError || !(e instanceof NbdProtocolError) ? "closed" : "protocol-error";
    }
    this.#writer.uncork();
    await this.quiesce();
    return this.#shutdown && end === "closed" ? "shutdown" : end;
  }

  /** Resolves when no request is in flight and every reply has been written. */
  async quiesce(): Promise<void> {
    while (this.#inflight > 0) await this.#nextCompletion();
    await this.#writer.drain();
  }

  #nextCompletion(): Promise<void> {
    return new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  async #serve(
    flags: number,
    type: number,
    hi: number,
    lo: number,
    offset: number,
    length: number,
    data: Uint8Array | undefined,
  ): Promise<void> {
    try {
      this.#validate(flags, type, offset, length);
      const fua = (flags & CMD_FLAG.FUA) !== 0;
      switch (type) {
        case CMD.READ:
          return await this.#read(flags, hi, lo, offset, length);
        case CMD.WRITE:
          await this.#write(offset, data!, fua);
          break;
        case CMD.FLUSH:
          await this.#node.flush();
          break;
        case CMD.TRIM:
          if (this.#exp.unmap && length) await this.#node.pdiscard(offset, length);
          if (fua) await this.#node.flush();
          break;
        case CMD.WRITE_ZEROES:
          if (length) {
            await this.#node.pwriteZeroes(offset, length, {
              fua,
              // As qemu-nbd: without NO_HOLE the range may be unmapped whatever --discard says (that only governs TRIM).
              mayUnmap: (flags & CMD_FLAG.NO_HOLE) === 0,
              noFallback: (flags & CMD_FLAG.FAST_ZERO) !== 0,
            });
          }
          break;
        case CMD.CACHE:
          await this.#cache(offset, length);
          break;
        case CMD.BLOCK_STATUS:
          return await this.#blockStatus(flags, hi, lo, offset, length);
      }
      const b = new Uint8Array(SIMPLE_REPLY_SIZE);
      encodeSimpleReply(view(b), 0, 0, hi, lo);
      this.#writer.send(b);
    } catch (e) {
      this.lastError = e;
      if (e instanceof RequestError) this.#replyError(type, hi, lo, e.nbdErr, e.message);
      else if (e instanceof BlockError) this.#replyError(type, hi, lo, toNbdError(e.code), e.message);
      else this.#replyError(type, hi, lo, NBD_ERR.EIO, e instanceof Error ? e.message : String(e));
    }
  }

  /** Sends `n` bytes of pooled buffer `b` (acquired with `header`), returning it to the pool once written. */
  #sendPooled(b: Uint8Array, n: number, header: number): void {
    this.#writer.send(b.subarray(0, n), () => this.#pool.release(b, header));
  }

  #validate(flags: number, type: number, offset: number, length: number): void {
    if (this.#shutdown) throw new RequestError(NBD_ERR.ESHUTDOWN, "Server is shutting down");
    const exp = this.#exp;
    let valid = CMD_FLAG.FUA;
    switch (type) {
      case CMD.READ:
        if (this.#structured) valid |= CMD_FLAG.DF;
        break;
      case CMD.WRITE_ZEROES:
        valid |= CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO;
        break;
      case CMD.BLOCK_STATUS:
        valid |= CMD_FLAG.REQ_ONE;
        break;
      case CMD.WRITE:
      case CMD.FLUSH:
      case CMD.TRIM:
      case CMD.CACHE:
        break;
      default:
        throw new RequestError(NBD_ERR.EINVAL, `Unknown command ${type}`);
    }
    if (flags & ~valid) throw new RequestError(NBD_ERR.EINVAL, `Unsupported flags 0x${flags.toString(16)} for ${cmdName(type)}`);
    if (type === CMD.FLUSH) return;
    const writes = type === CMD.WRITE || type === CMD.WRITE_ZEROES || type === CMD.TRIM;
    if (writes && exp.readOnly) throw new RequestError(NBD_ERR.EPERM, `${cmdName(type)} on a read-only export`);
    if (offset > exp.size || length > exp.size - offset) {
      const err = type === CMD.WRITE || type === CMD.WRITE_ZEROES ? NBD_ERR.ENOSPC : NBD_ERR.EINVAL;
      throw new RequestError(
        err,
        `${cmdName(type)} of ${length} bytes at offset ${offset} goes past the end of the export (size ${exp.size})`,
      );
    }
    if (type === CMD.READ && length > exp.maxPayload) {
      throw new RequestError(NBD_ERR.EINVAL, `Read of ${length} bytes exceeds the maximum payload of ${exp.maxPayload}`);
    }
    if (this.#minBlock > 1 && (offset % this.#minBlock || length % this.#minBlock)) {
      throw new RequestError(NBD_ERR.EINVAL, `${cmdName(type)} at ${offset}+${length} is not aligned to ${this.#minBlock}`);
    }
    if (type === CMD.BLOCK_STATUS) {
      if (!this.#contexts.length) throw new RequestError(NBD_ERR.EINVAL, "NBD_CMD_BLOCK_STATUS without a selected metadata context");
      if (!length) throw new RequestError(NBD_ERR.EINVAL, "NBD_CMD_BLOCK_STATUS of 0 bytes");
    }
  }

  #replyError(type: number, hi: number, lo: number, err: number, message: string): void {
    if (this.#structured) {
      this.#writer.send(encodeErrorChunk(hi, lo, err, message));
    } else {
      const b = new Uint8Array(SIMPLE_REPLY_SIZE);
      encodeSimpleReply(view(b), 0, err, hi, lo);
      this.#writer.send(b);
    }
    void type;
  }

  async #read(flags: number, hi: number, lo: number, offset: number, length: number): Promise<void> {
    const node = this.#node;
    if (!this.#structured) {
      const n = SIMPLE_REPLY_SIZE + length;
      // The payload, where the node reads, starts page-aligned after the reply header.
      const b = this.#pool.acquire(n, SIMPLE_REPLY_SIZE);
      try {
        if (length) await node.pread(offset, b.subarray(SIMPLE_REPLY_SIZE, n));
      } catch (e) {
        this.#pool.release(b, SIMPLE_REPLY_SIZE);
        throw e;
      }
      encodeSimpleReply(view(b), 0, 0, hi, lo);
      this.#sendPooled(b, n, SIMPLE_REPLY_SIZE);
      return;
    }
    if (length === 0) {
      const b = new Uint8Array(CHUNK_HEADER_SIZE);
      encodeChunkHeader(view(b), 0, REPLY_FLAG_DONE, REPLY_TYPE.NONE, hi, lo, 0);
      this.#writer.send(b);
      return;
    }
    // Zero extents travel as hole chunks (as qemu-nbd does), unless the client asked for one chunk (DF).
    const extents: { offset: number; length: number; hole: boolean }[] = [];
    if (flags & CMD_FLAG.DF) extents.push({ offset, length, hole: false });
    else {
      for (let at = offset; at < offset + length;) {
        const st = await node.blockStatus(at, offset + length - at);
        const n = Math.max(1, st.length);
        const last = extents[extents.length - 1];
        if (last && last.hole === st.zero) last.length += n;
        else extents.push({ offset: at, length: n, hole: st.zero });
        at += n;
      }
    }
    let total = 0;
    for (const e of extents) total += CHUNK_HEADER_SIZE + (e.hole ? 12 : 8 + e.length);
    // The first data chunk's payload starts page-aligned after its header and offset.
    const header = CHUNK_HEADER_SIZE + 8;
    const b = this.#pool.acquire(total, header);
    const dv = view(b);
    let at = 0;
    try {
      for (let i = 0; i < extents.length; i++) {
        const e = extents[i];
        const done = i === extents.length - 1 ? REPLY_FLAG_DONE : 0;
        if (e.hole) {
          encodeChunkHeader(dv, at, done, REPLY_TYPE.OFFSET_HOLE, hi, lo, 12);
          setU64(dv, at + CHUNK_HEADER_SIZE, e.offset);
          dv.setUint32(at + CHUNK_HEADER_SIZE + 8, e.length);
          at += CHUNK_HEADER_SIZE + 12;
        } else {
          encodeChunkHeader(dv, at, done, REPLY_TYPE.OFFSET_DATA, hi, lo, 8 + e.length);
          setU64(dv, at + CHUNK_HEADER_SIZE, e.offset);
          const start = at + CHUNK_HEADER_SIZE + 8;
          await node.pread(e.offset, b.subarray(start, start + e.length));
          at = start + e.length;
        }
      }
    } catch (e) {
      this.#pool.release(b, header);
      throw e;
    }
    this.#sendPooled(b, total, header);
  }

  async #write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    if (!data.length) return;
    const dz = this.#exp.detectZeroes;
    if (dz !== "off" && isZero(data)) {
      await this.#node.pwriteZeroes(offset, data.length, { fua, mayUnmap: dz === "unmap" });
      return;
    }
    await this.#node.pwrite(offset, data, { fua });
  }

  async #cache(offset: number, length: number): Promise<void> {
    // Prefetch: read the range (the host page cache or a format's caches keep it), reply without data.
    const scratch = new Uint8Array(Math.min(length, CACHE_CHUNK));
    for (let at = offset; at < offset + length; at += scratch.length) {
      const n = Math.min(scratch.length, offset + length - at);
      await this.#node.pread(at, scratch.subarray(0, n));
    }
  }

  async #blockStatus(flags: number, hi: number, lo: number, offset: number, length: number): Promise<void> {
    const one = (flags & CMD_FLAG.REQ_ONE) !== 0;
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < this.#contexts.length; i++) {
      const { id, provider } = this.#contexts[i];
      let extents = await provider.extents(offset, length, one ? 1 : Number.MAX_SAFE_INTEGER);
      if (one) extents = [{ length: Math.min(extents[0].length, length), flags: extents[0].flags }];
      const b = new Uint8Array(CHUNK_HEADER_SIZE + 4 + 8 * extents.length);
      const dv = view(b);
      encodeChunkHeader(
        dv,
        0,
        i === this.#contexts.length - 1 ? REPLY_FLAG_DONE : 0,
        REPLY_TYPE.BLOCK_STATUS,
        hi,
        lo,
        4 + 8 * extents.length,
      );
      dv.setUint32(CHUNK_HEADER_SIZE, id);
      extents.forEach((e, k) => {
        dv.setUint32(CHUNK_HEADER_SIZE + 4 + 8 * k, e.length);
        dv.setUint32(CHUNK_HEADER_SIZE + 8 + 8 * k, e.flags);
      });
      chunks.push(b);
    }
    // All chunks are computed before any is sent, so an error is a single error chunk.
    for (const c of chunks) this.#writer.send(c);
  }
}

/** Tells whether a buffer holds only zero bytes. */
export function isZero(buf: Uint8Array): boolean {
  let i = 0;
  if (buf.byteOffset % 4 === 0) {
    const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0) return false;
    i = words.length * 4;
  }
  for (; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}
