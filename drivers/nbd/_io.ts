/**
 * Buffered socket I/O for NBD: a reader that parses headers straight out of
 * its receive buffer and reads large payloads directly into the caller's
 * buffer, and a writer that batches queued messages into few socket writes.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";

/** The part of a `Deno.Conn` NBD needs (TLS streams adapt to it). */
export interface ByteStream {
  /** Reads into `p`; resolves to the byte count, or null at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes (part of) `p`; resolves to the bytes written. */
  write(p: Uint8Array): Promise<number>;
  /** Closes the stream. */
  close(): void;
}

/** The peer closed the connection (cleanly between messages or in the middle of one). */
export class ConnectionClosedError extends BlockError {
  /** True when the stream ended in the middle of a message. */
  readonly truncated: boolean;
  /** Creates the error. */
  constructor(message: string, truncated: boolean) {
    super("EIO", message);
    this.name = "ConnectionClosedError";
    this.truncated = truncated;
  }
}

/** Buffered reader over a {@linkcode ByteStream}. */
export class SocketReader {
  #conn: ByteStream;
  /** Receive buffer; bytes `[pos, end)` are unread. */
  buf: Uint8Array;
  /** DataView over {@linkcode SocketReader.buf}. */
  dv: DataView;
  /** Next unread byte. */
  pos = 0;
  #end = 0;
  /** Called before every read that waits on the socket (a client uncorks its writer there). */
  onWait: (() => void) | undefined;

  /** Creates a reader with a receive buffer of `size` bytes. */
  constructor(conn: ByteStream, size = 256 << 10) {
    this.#conn = conn;
    this.buf = new Uint8Array(size);
    this.dv = new DataView(this.buf.buffer);
  }

  /** Bytes received and not yet consumed. */
  get buffered(): number {
    return this.#end - this.pos;
  }

  /** Waits until `n` bytes (at most the buffer size) are buffered contiguously from `pos`. */
  async fill(n: number): Promise<void> {
    if (this.#end - this.pos >= n) return;
    if (n > this.buf.length) throw new BlockError("EINVAL", `Cannot buffer ${n} bytes: the receive buffer holds ${this.buf.length}`);
    if (this.pos + n > this.buf.length) {
      this.buf.copyWithin(0, this.pos, this.#end);
      this.#end -= this.pos;
      this.pos = 0;
    }
    while (this.#end - this.pos < n) {
      this.onWait?.();
      const got = await this.#conn.read(this.buf.subarray(this.#end));
      if (got === null) {
        const partial = this.#end > this.pos;
        throw new ConnectionClosedError(partial ? "Connection closed in the middle of a message" : "Connection closed", partial);
      }
      this.#end += got;
    }
  }

  /** Marks `n` buffered bytes as read. */
  consume(n: number): void {
    this.pos += n;
    if (this.pos === this.#end) this.pos = this.#end = 0;
  }

  /** Fills `dst` completely: buffered bytes first, the rest read straight into `dst`. */
  async readInto(dst: Uint8Array): Promise<void> {
    let done = Math.min(dst.length, this.#end - this.pos);
    if (done) {
      dst.set(this.buf.subarray(this.pos, this.pos + done));
      this.consume(done);
    }
    // Small remainders go through the buffer (one read may bring the next header too).
    while (done < dst.length) {
      const want = dst.length - done;
      if (want < this.buf.length >> 2) {
        await this.fill(want);
        dst.set(this.buf.subarray(this.pos, this.pos + want), done);
        this.consume(want);
        return;
      }
      this.onWait?.();
      const got = await this.#conn.read(dst.subarray(done));
      if (got === null) throw new ConnectionClosedError("Connection closed in the middle of a message", true);
      done += got;
    }
  }

  /** Reads `n` bytes into a new array. */
  async readBytes(n: number): Promise<Uint8Array> {
    const b = new Uint8Array(n);
    await this.readInto(b);
    return b;
  }

  /** Discards `n` bytes. */
  async skip(n: number): Promise<void> {
    while (n > 0) {
      const k = Math.min(n, this.buf.length);
      await this.fill(k);
      this.consume(k);
      n -= k;
    }
  }
}

/** Batches are coalesced into buffers of this size (one socket write each). */
const COALESCE = 1 << 20;
/** Messages from this size on are written as they are: copying them costs more than a socket write of their own. */
const DIRECT = 128 << 10;

/** Microtask turns within which a synchronous node's request settles (its promise chain through the core's layers). */
export const REPLY_SETTLE_TURNS = 32;

/** A promise that resolves after `n` microtask turns (0: the next turn). */
export function microtaskTurns(n: number): Promise<void> {
  let p = Promise.resolve();
  for (let i = 0; i < n; i++) p = p.then();
  return p;
}

/**
 * Queued writer: `send()` never blocks. A message sent while the socket is
 * idle is written as it is (no copy); messages queued while a write is in
 * progress go out together in the next write, coalesced into one buffer —
 * a memcpy is cheaper than a socket write per message.
 */
export class SocketWriter {
  #conn: ByteStream;
  #queue: Uint8Array[] = [];
  #done: ((() => void) | undefined)[] = [];
  #queued = 0;
  #running = false;
  #error: unknown = undefined;
  #idle: (() => void)[] = [];
  #scratch = new Uint8Array(COALESCE);
  #corked = false;
  #corkGen = 0;
  /** An {@linkcode SocketWriter.uncork} is pending: {@linkcode SocketWriter.settled} may end the cork early. */
  #uncorking = false;

  /** Creates a writer. */
  constructor(conn: ByteStream) {
    this.#conn = conn;
  }

  /** Bytes queued and not yet written. */
  get queuedBytes(): number {
    return this.#queued;
  }

  /** The first write error, if writing failed (later sends are dropped). */
  get error(): unknown {
    return this.#error;
  }

  /** Queues a message; writing starts at once when the socket is idle. `written` runs once `b` may be reused. */
  send(b: Uint8Array, written?: () => void): void {
    if (this.#error !== undefined) {
      written?.();
      return;
    }
    this.#queue.push(b);
    this.#done.push(written);
    this.#queued += b.length;
    if (!this.#running && !this.#corked) void this.#run();
  }

  /**
   * Queues `head` and `body` as one message (a request header and its
   * payload): they go out in the same socket write, coalesced with each
   * other and with whatever else is queued, and `body` is not first copied
   * into a buffer of its own. `body` must stay unchanged until written.
   */
  sendPair(head: Uint8Array, body: Uint8Array): void {
    if (this.#error !== undefined) return;
    this.#queue.push(head, body);
    this.#done.push(undefined, undefined);
    this.#queued += head.length + body.length;
    if (!this.#running && !this.#corked) void this.#run();
  }

  /**
   * Holds messages sent from now on in the queue (no socket write) until
   * {@linkcode SocketWriter.uncork}: replies produced while a server parses
   * a buffer full of requests then go out in one write instead of one each.
   */
  cork(): void {
    this.#corked = true;
    this.#uncorking = false;
    this.#corkGen++;
  }

  /**
   * Ends a {@linkcode SocketWriter.cork} after `hops` microtask turns, so
   * replies whose promise chains are still settling (a synchronous node's
   * write resolves a few microtasks later) join the same write; never later
   * than the current microtask drain.
   */
  uncork(hops = REPLY_SETTLE_TURNS): void {
    if (!this.#corked) return;
    const gen = this.#corkGen;
    this.#uncorking = true;
    void microtaskTurns(hops).then(() => {
      if (gen === this.#corkGen && this.#corked) this.#open();
    });
  }

  /**
   * Ends a cork that {@linkcode SocketWriter.uncork} is winding down, now:
   * the caller knows no reply it waited for is still settling (a server's
   * last request in flight has answered), so the batch goes out without
   * waiting for the remaining turns. Does nothing while the cork holds.
   */
  settled(): void {
    if (this.#uncorking && this.#corked) this.#open();
  }

  #open(): void {
    this.#corked = false;
    this.#uncorking = false;
    if (!this.#running && this.#queue.length && this.#error === undefined) void this.#run();
  }

  /** Starts writing what is queued now, corked or not (the cork stays for later messages). */
  flushNow(): void {
    if (!this.#running && this.#queue.length && this.#error === undefined) void this.#run();
  }

  /** Resolves when everything queued has been written (or writing failed). */
  drain(): Promise<void> {
    this.uncork(0);
    if (!this.#running && this.#queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  async #run(): Promise<void> {
    this.#running = true;
    try {
      while (this.#queue.length) {
        const batch = this.#queue;
        const done = this.#done;
        this.#queue = [];
        this.#done = [];
        if (batch.length === 1) {
          await this.#writeAll(batch[0]);
          this.#queued -= batch[0].length;
          done[0]?.();
          continue;
        }
        let fill = 0;
        for (let i = 0; i < batch.length; i++) {
          const b = batch[i];
          if ((fill + b.length > COALESCE || b.length >= DIRECT) && fill) {
            await this.#writeAll(this.#scratch.subarray(0, fill));
            fill = 0;
          }
          if (b.length >= DIRECT) await this.#writeAll(b);
          else {
            this.#scratch.set(b, fill);
            fill += b.length;
          }
          this.#queued -= b.length;
          done[i]?.();
        }
        if (fill) await this.#writeAll(this.#scratch.subarray(0, fill));
      }
    } catch (e) {
      this.#error = e;
      for (const d of this.#done) d?.();
      this.#queue = [];
      this.#done = [];
      this.#queued = 0;
    } finally {
      this.#running = false;
      const waiters = this.#idle;
      this.#idle = [];
      for (const w of waiters) w();
    }
  }

  async #writeAll(b: Uint8Array): Promise<void> {
    for (let done = 0; done < b.length;) done += await this.#conn.write(b.subarray(done));
  }
}
