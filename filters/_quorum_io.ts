/**
 * The quorum node's requests (QEMU's block/quorum.c): reads vote on the
 * children's data, writes and flushes succeed when enough children do. The
 * node is opened by `quorum.ts`.
 *
 * @module
 */

import { BlockError, type ErrnoCode } from "../core/errors.ts";
import type { BlockNode, BlockStatus, DriverInstance } from "../core/node.ts";
import type { RequestInfo, RequestOptions, WriteOptions, WriteZeroesOptions } from "../core/types.ts";
import { ioBuffer } from "../core/_io_buffer.ts";

/** How a quorum node reads: every child and vote, or the first child that answers. */
export type QuorumReadPattern = "quorum" | "fifo";

/** A quorum node's settings, checked by `quorum.ts`. */
export interface QuorumSettings {
  /** Children in order (`children.0`, `children.1`, ...). */
  readonly children: readonly BlockNode[];
  /** Votes (or successes) needed. */
  readonly threshold: number;
  /** Any disagreement between the two children fails the read with the offset where they differ. */
  readonly blkverify: boolean;
  /** Children outvoted on a read get the winning data written back. */
  readonly rewriteCorrupted: boolean;
  /** Read pattern. */
  readonly readPattern: QuorumReadPattern;
}

const SECTOR = 512;

/** One child's answer to a request. */
type Outcome = { ok: true } | { ok: false; error: BlockError };

function asBlockError(e: unknown, child: BlockNode): BlockError {
  if (e instanceof BlockError) return e;
  return new BlockError("EIO", `Request on quorum child '${child.name}' failed: ${String(e)}`, { node: child.name, cause: e });
}

/**
 * The error a failed quorum request ends with (QEMU's quorum_vote_error):
 * the errno most children failed with; on a tie the one first seen last
 * (QEMU's vote list is filled at its head). The first child's error of that
 * code is thrown.
 */
function votedError(outcomes: readonly Outcome[]): BlockError {
  const versions: { code: ErrnoCode; count: number; first: BlockError }[] = [];
  for (const o of outcomes) {
    if (o.ok) continue;
    const v = versions.find((x) => x.code === o.error.code);
    if (v) v.count++;
    else versions.unshift({ code: o.error.code, count: 1, first: o.error });
  }
  let winner = versions[0];
  for (const v of versions) if (v.count > winner.count) winner = v;
  return winner.first;
}

/** Byte-wise equality. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A quorum node's driver instance. */
export class QuorumInstance implements DriverInstance {
  #node: BlockNode;
  #s: QuorumSettings;

  /** Serves `node` over the children in `settings`. */
  constructor(node: BlockNode, settings: QuorumSettings) {
    this.#node = node;
    this.#s = settings;
  }

  /** Writes need no flush of their own; FUA is passed to every child. */
  readonly supportsFua = true;

  #reportBad(
    req: RequestInfo | undefined,
    type: "read" | "write" | "flush",
    child: BlockNode,
    offset: number,
    length: number,
    error?: BlockError,
  ): void {
    if (!this.#node.listening) return;
    const first = Math.floor(offset / SECTOR);
    this.#node.emit({
      kind: "quorum-report-bad",
      node: this.#node,
      time: performance.now(),
      req,
      type,
      child: child.name,
      sectorNum: first,
      sectorsCount: Math.ceil((offset + length) / SECTOR) - first,
      ...(error ? { error: error.strerror } : {}),
    });
  }

  #failure(req: RequestInfo | undefined, offset: number, length: number): void {
    if (!this.#node.listening) return;
    const first = Math.floor(offset / SECTOR);
    this.#node.emit({
      kind: "quorum-failure",
      node: this.#node,
      time: performance.now(),
      req,
      sectorNum: first,
      sectorsCount: Math.ceil((offset + length) / SECTOR) - first,
    });
  }

  /** Runs `op` on every child at once; fails with the voted error when fewer than the threshold succeed. */
  async #onAll(
    type: "read" | "write",
    offset: number,
    length: number,
    req: RequestInfo | undefined,
    op: (child: BlockNode, i: number) => Promise<void>,
  ): Promise<Outcome[]> {
    const children = this.#s.children;
    const outcomes = await Promise.all(children.map(async (child, i): Promise<Outcome> => {
      try {
        await op(child, i);
        return { ok: true };
      } catch (e) {
        const error = asBlockError(e, child);
        this.#reportBad(req, type, child, offset, length, error);
        return { ok: false, error };
      }
    }));
    if (outcomes.filter((o) => o.ok).length < this.#s.threshold) {
      this.#failure(req, offset, length);
      throw votedError(outcomes);
    }
    return outcomes;
  }

  /** Reads by the read pattern: every child and a vote, or the children in turn until one succeeds. */
  pread(offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
    return this.#s.readPattern === "fifo" ? this.#readFifo(offset, buf, opts) : this.#readQuorum(offset, buf, opts);
  }

  async #readFifo(offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
    const children = this.#s.children;
    for (let i = 0;; i++) {
      try {
        await children[i].pread(offset, buf, { req: opts.req });
        return;
      } catch (e) {
        const error = asBlockError(e, children[i]);
        this.#reportBad(opts.req, "read", children[i], offset, buf.length, error);
        if (i === children.length - 1) throw error;
      }
    }
  }

  async #readQuorum(offset: number, buf: Uint8Array, opts: RequestOptions): Promise<void> {
    const children = this.#s.children;
    const bufs = children.map(() => ioBuffer(buf.length));
    const outcomes = await this.#onAll("read", offset, buf.length, opts.req, (child, i) => child.pread(offset, bufs[i], { req: opts.req }));
    const good = outcomes.flatMap((o, i) => (o.ok ? [i] : []));
    if (good.every((i) => this.#agree(offset, bufs[good[0]], bufs[i]))) {
      buf.set(bufs[good[0]]);
      return;
    }
    // Versions of the data, newest first as in QEMU's vote list; the strictly largest wins.
    const versions: { data: Uint8Array; members: number[] }[] = [];
    for (const i of good) {
      const v = versions.find((x) => sameBytes(x.data, bufs[i]));
      if (v) v.members.push(i);
      else versions.unshift({ data: bufs[i], members: [i] });
    }
    let winner = versions[0];
    for (const v of versions) if (v.members.length > winner.members.length) winner = v;
    if (winner.members.length < this.#s.threshold) {
      this.#failure(opts.req, offset, buf.length);
      throw new BlockError(
        "EIO",
        `Cannot read ${buf.length} bytes at offset ${offset} on node '${this.#node.name}': no quorum: at most ${winner.members.length} of ${children.length} children agree, ${this.#s.threshold} needed`,
        { node: this.#node.name, offset, length: buf.length },
      );
    }
    buf.set(winner.data);
    const losers = versions.filter((v) => v !== winner).flatMap((v) => v.members);
    for (const i of losers) this.#reportBad(opts.req, "read", children[i], offset, buf.length);
    if (this.#s.rewriteCorrupted) {
      // A correction attempt only: its failures do not fail the read (QEMU ignores them).
      await Promise.all(losers.map((i) => children[i].pwrite(offset, winner.data, { req: opts.req }).catch(() => {})));
    }
  }

  /** Whether two children's data agree; in blkverify mode a difference fails the read with where it is. */
  #agree(offset: number, a: Uint8Array, b: Uint8Array): boolean {
    if (!this.#s.blkverify) return sameBytes(a, b);
    for (let i = 0; i < a.length; i++) {
      if (a[i] !== b[i]) {
        // QEMU prints this and exits; a library fails the request instead.
        throw new BlockError("EIO", `quorum: offset=${offset} bytes=${a.length} contents mismatch at offset ${offset + i}`, {
          node: this.#node.name,
          offset: offset + i,
        });
      }
    }
    return true;
  }

  /** Writes to every child; succeeds when at least the threshold do. */
  async pwrite(offset: number, data: Uint8Array, opts: WriteOptions): Promise<void> {
    await this.#onAll("write", offset, data.length, opts.req, (child) => child.pwrite(offset, data, { req: opts.req, fua: opts.fua }));
  }

  /** Zeroes on every child; succeeds when at least the threshold do. */
  async pwriteZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    await this.#onAll("write", offset, length, opts.req, (child) => child.pwriteZeroes(offset, length, { ...opts, req: opts.req }));
  }

  /** QEMU 7.2's quorum has no discard, and a discard the driver cannot do succeeds doing nothing (it is advisory). */
  pdiscard(): void {}

  /** QEMU 7.2's quorum has no block status: everything is data of this node. */
  blockStatus(offset: number, length: number): BlockStatus {
    return { offset, length, data: true, zero: false, allocated: true };
  }

  /** Flushes every child in turn; succeeds when at least the threshold do (QEMU's quorum_co_flush). */
  async flushChildren(opts: RequestOptions): Promise<void> {
    const outcomes: Outcome[] = [];
    for (const child of this.#s.children) {
      try {
        if (!child.readOnly) await child.flush({ req: opts.req });
        outcomes.push({ ok: true });
      } catch (e) {
        const error = asBlockError(e, child);
        this.#reportBad(opts.req, "flush", child, 0, 0, error);
        outcomes.push({ ok: false, error });
      }
    }
    if (outcomes.filter((o) => o.ok).length < this.#s.threshold) throw votedError(outcomes);
  }

  /** The children's common length; EIO when they differ (QEMU's quorum_co_getlength). */
  getLength(): number {
    const [first, ...rest] = this.#s.children;
    for (const c of rest) {
      if (c.length !== first.length) {
        throw new BlockError(
          "EIO",
          `Quorum node '${this.#node.name}' has children of different lengths: '${first.name}' ${first.length} bytes, '${c.name}' ${c.length} bytes`,
          { node: this.#node.name },
        );
      }
    }
    return first.length;
  }
}
