/**
 * One client connection in the transmission phase: requests are sent as
 * they come (many in flight), one reader loop matches replies to requests by
 * cookie and reads read payloads straight into the caller's buffer. When the
 * server goes away every request in flight fails with EIO naming the server,
 * and so does every later one.
 *
 * @module
 */

import { BlockError, type ErrnoCode } from "../../core/errors.ts";
import type { SocketReader, SocketWriter } from "./_io.ts";
import type { ExportInfo } from "./_client_handshake.ts";
import {
  CHUNK_HEADER_SIZE,
  CMD,
  cmdName,
  encodeRequest,
  fromNbdError,
  getU64,
  NbdProtocolError,
  REPLY_FLAG_DONE,
  REPLY_TYPE,
  REQUEST_SIZE,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_MAGIC,
  view,
} from "./_protocol.ts";

/** One extent of a block-status reply. */
export interface ClientExtent {
  /** Length in bytes. */
  length: number;
  /** Context-defined flags. */
  flags: number;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  buf?: Uint8Array;
  covered: number;
  error?: { code: ErrnoCode; message: string };
  extents?: Map<number, ClientExtent[]>;
  resolve(): void;
  reject(e: unknown): void;
}

/** Requests in flight per connection before new ones wait. */
const MAX_IN_FLIGHT = 256;
/**
 * Writes up to this size are copied behind their header into one buffer; larger ones are queued beside it. A 64 KiB
 * write copied into a fresh 64 KiB buffer (zeroed, then filled, then copied again when the writer coalesces a batch)
 * made `blkgraph bench -w -s 64k` against qemu-nbd 4-8 % slower (bench/README, NBD client).
 */
const COPY_WRITE = 16 << 10;

/** The transmission phase of a client connection. */
export class ClientConnection {
  readonly info: ExportInfo;
  #reader: SocketReader;
  #writer: SocketWriter;
  #server: string;
  #pending = new Map<number, Pending>();
  #cookie = 0;
  #dead: BlockError | undefined;
  #waiting: (() => void)[] = [];
  #loop: Promise<void>;

  /** Starts the reply loop on a negotiated connection. */
  constructor(info: ExportInfo, server: string) {
    this.info = info;
    this.#reader = info.reader;
    this.#writer = info.writer;
    this.#server = server;
    this.#loop = this.#readLoop();
  }

  /** The connection is lost or closed: every request on it fails. */
  get dead(): boolean {
    return this.#dead !== undefined;
  }

  /** Sends a request and resolves when its reply is complete. */
  async request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    opts: { buf?: Uint8Array; data?: Uint8Array } = {},
  ): Promise<Map<number, ClientExtent[]> | undefined> {
    while (this.#pending.size >= MAX_IN_FLIGHT && !this.#dead) await new Promise<void>((r) => this.#waiting.push(r));
    if (this.#dead) throw this.#fail(type, offset, length, this.#dead.message);
    const cookie = this.#cookie = (this.#cookie + 1) >>> 0;
    const done = new Promise<void>((resolve, reject) => {
      this.#pending.set(cookie, { type, offset, length, buf: opts.buf, covered: 0, resolve, reject });
    });
    const data = opts.data;
    const small = data && data.length <= COPY_WRITE;
    const hdr = new Uint8Array(REQUEST_SIZE + (small ? data.length : 0));
    encodeRequest(view(hdr), 0, { flags, type, cookieHi: 0, cookieLo: cookie, offset, length });
    if (small) hdr.set(data, REQUEST_SIZE);
    // The caller's buffer stays untouched until the reply, which comes after the server has read all of it.
    if (data && !small) this.#writer.sendPair(hdr, data);
    else this.#writer.send(hdr);
    const p = this.#pending.get(cookie)!;
    await done;
    return p.extents;
  }

  /** Sends NBD_CMD_DISC once requests in flight are answered, and closes the connection. */
  async close(): Promise<void> {
    while (this.#pending.size && !this.#dead) await new Promise<void>((r) => this.#waiting.push(r));
    if (!this.#dead) {
      const hdr = new Uint8Array(REQUEST_SIZE);
      encodeRequest(view(hdr), 0, { flags: 0, type: CMD.DISC, cookieHi: 0, cookieLo: 0, offset: 0, length: 0 });
      this.#writer.send(hdr);
      await this.#writer.drain();
      this.#dead = new BlockError("EIO", `connection to NBD server ${this.#server} is closed`);
    }
    try {
      this.info.conn.close();
    } catch { /* closed */ }
    await this.#loop;
  }

  #fail(type: number, offset: number, length: number, why: string, code: ErrnoCode = "EIO"): BlockError {
    return new BlockError(code, `Cannot ${cmdName(type)} ${length} bytes at offset ${offset}: ${why}`, { offset, length });
  }

  async #readLoop(): Promise<void> {
    const r = this.#reader;
    // Requests sent while replies are being handled (a caller refilling its queue as each completes) go out in one socket
    // write: the writer is corked from each reply on and uncorked whenever the reader is about to wait on the socket.
    const w = this.#writer;
    r.onWait = () => w.uncork();
    try {
      for (;;) {
        await r.fill(4);
        w.cork();
        const magic = r.dv.getUint32(r.pos);
        if (magic === SIMPLE_REPLY_MAGIC) await this.#simple();
        else if (magic === STRUCTURED_REPLY_MAGIC) await this.#chunk();
        else throw new NbdProtocolError(`NBD server ${this.#server} sent reply magic 0x${magic.toString(16)}`);
      }
    } catch (e) {
      const why = e instanceof NbdProtocolError ? e.message : `connection to NBD server ${this.#server} lost`;
      this.#dead ??= new BlockError("EIO", why, { cause: e });
      for (const p of this.#pending.values()) p.reject(this.#fail(p.type, p.offset, p.length, this.#dead.message));
      this.#pending.clear();
      try {
        this.info.conn.close();
      } catch { /* closed */ }
    } finally {
      const ws = this.#waiting;
      this.#waiting = [];
      for (const w of ws) w();
    }
  }

  #take(cookieHi: number, cookie: number): Pending {
    const p = cookieHi === 0 ? this.#pending.get(cookie) : undefined;
    if (!p) throw new NbdProtocolError(`NBD server ${this.#server} answered unknown cookie ${cookieHi}:${cookie}`);
    return p;
  }

  #finish(cookie: number, p: Pending): void {
    this.#pending.delete(cookie);
    if (p.error) p.reject(this.#fail(p.type, p.offset, p.length, `NBD server ${this.#server}: ${p.error.message}`, p.error.code));
    else if (p.type === CMD.READ && this.info.structured && p.covered !== p.length) {
      p.reject(this.#fail(p.type, p.offset, p.length, `NBD server ${this.#server} answered ${p.covered} of ${p.length} bytes`));
    } else p.resolve();
    const w = this.#waiting.shift();
    w?.();
  }

  async #simple(): Promise<void> {
    const r = this.#reader;
    await r.fill(SIMPLE_REPLY_SIZE);
    const err = r.dv.getUint32(r.pos + 4);
    const hi = r.dv.getUint32(r.pos + 8), cookie = r.dv.getUint32(r.pos + 12);
    r.consume(SIMPLE_REPLY_SIZE);
    const p = this.#take(hi, cookie);
    if (err) p.error = { code: fromNbdError(err), message: `error ${err}` };
    else if (p.type === CMD.READ) {
      if (this.info.structured) throw new NbdProtocolError(`NBD server ${this.#server} sent a simple reply to a structured read`);
      await r.readInto(p.buf!);
      p.covered = p.length;
    }
    this.#finish(cookie, p);
  }

  async #chunk(): Promise<void> {
    const r = this.#reader;
    await r.fill(CHUNK_HEADER_SIZE);
    const dv = r.dv, at = r.pos;
    const flags = dv.getUint16(at + 4), type = dv.getUint16(at + 6);
    const hi = dv.getUint32(at + 8), cookie = dv.getUint32(at + 12), len = dv.getUint32(at + 16);
    r.consume(CHUNK_HEADER_SIZE);
    const p = this.#take(hi, cookie);
    const bad = (why: string) => new NbdProtocolError(`NBD server ${this.#server} sent an invalid ${why} chunk (length ${len})`);
    if (type === REPLY_TYPE.OFFSET_DATA) {
      if (p.type !== CMD.READ || len < 9) throw bad("data");
      await r.fill(8);
      const off = getU64(r.dv, r.pos, "data offset");
      r.consume(8);
      const n = len - 8;
      if (off < p.offset || off + n > p.offset + p.length) throw bad("data");
      await r.readInto(p.buf!.subarray(off - p.offset, off - p.offset + n));
      p.covered += n;
    } else if (type === REPLY_TYPE.OFFSET_HOLE) {
      if (p.type !== CMD.READ || len !== 12) throw bad("hole");
      await r.fill(12);
      const off = getU64(r.dv, r.pos, "hole offset");
      const n = r.dv.getUint32(r.pos + 8);
      r.consume(12);
      if (!n || off < p.offset || off + n > p.offset + p.length) throw bad("hole");
      p.buf!.fill(0, off - p.offset, off - p.offset + n);
      p.covered += n;
    } else if (type === REPLY_TYPE.BLOCK_STATUS) {
      if (p.type !== CMD.BLOCK_STATUS || len < 12 || (len - 4) % 8 || len > (8 << 20) + 4) throw bad("block status");
      const b = await r.readBytes(len);
      const d = view(b);
      const list: ClientExtent[] = [];
      for (let i = 4; i < len; i += 8) {
        const n = d.getUint32(i);
        if (!n) throw bad("block status");
        list.push({ length: n, flags: d.getUint32(i + 4) });
      }
      (p.extents ??= new Map()).set(d.getUint32(0), list);
    } else if (type === REPLY_TYPE.NONE) {
      if (len !== 0 || !(flags & REPLY_FLAG_DONE)) throw bad("none");
    } else if (type & 0x8000) {
      if (len < 6 || len > 65536) throw bad("error");
      const b = await r.readBytes(len);
      const d = view(b);
      const err = d.getUint32(0);
      const mlen = d.getUint16(4);
      if (mlen > len - 6) throw bad("error");
      const msg = new TextDecoder().decode(b.subarray(6, 6 + mlen));
      p.error ??= { code: fromNbdError(err), message: msg || `error ${err}` };
    } else {
      throw bad(`type ${type}`);
    }
    if (flags & REPLY_FLAG_DONE) this.#finish(cookie, p);
  }
}
