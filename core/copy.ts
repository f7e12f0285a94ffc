/**
 * Copying one image into another (qemu-img convert's engine, as a library
 * call): ranges that read as zeros are found by block status first and by a
 * zero check of the data second, and are left as holes (or written as zeros
 * where the target needs them); data can be written compressed. With
 * `parallel`, several chunks are in flight: written as each is read, or
 * (`inOrder`, qemu-img convert's default) read ahead and written in source
 * order; a hole is claimed as one range, however many chunks it spans.
 *
 * @module
 */

import { concatSources, type CopySource } from "./_concat.ts";
import { BlockError } from "./errors.ts";
import type { BlockNode, BlockStatus } from "./node.ts";
import { isZero, nonZeroRuns } from "./_bytes.ts";
import { ioBuffer } from "./_io_buffer.ts";

/** Options of {@linkcode copyImage}. */
export interface CopyOptions {
  /** Byte offset in `dst` where `src` starts (to concatenate sources). */
  dstOffset?: number;
  /**
   * Write whole clusters compressed (the target must support compressed
   * writes, e.g. qcow2). The source is read in order and up to
   * `compressWindow` compressed writes stay in flight (qcow2 compresses them
   * on threads and commits them in the order issued); `parallel` is ignored.
   */
  compress?: boolean;
  /**
   * The target already holds data (it was not just created) or reads
   * through a backing file: ranges that read as zeros in the source are
   * written as zeros instead of being skipped. Implied for targets that do
   * not read as zeros when new (`BlockNode.hasZeroInit` false: luks).
   */
  zeroTarget?: boolean;
  /** Copy only what the source's top layer defines (the target shares the source's backing chain, `-B`). */
  topOnly?: boolean;
  /** Compressed writes in flight with `compress` (default: 16 MiB of clusters, 2 to 32). */
  compressWindow?: number;
  /**
   * Chunks in flight (qemu-img's `-m N`): each is read as soon as it is
   * claimed; its writes go out of order (`-W`) unless `inOrder` is set.
   */
  parallel?: number;
  /**
   * With `parallel`, write the chunks in source order (qemu-img convert
   * without `-W`): up to `parallel` chunks are read ahead while the one
   * before them is written, so a source on threads (`aio=threads`) reads
   * while the target writes, and the target still sees one sequential
   * stream of writes.
   */
  inOrder?: boolean;
  /** Zero runs of at least this many bytes are not written as data (`-S`; 0 = write everything as data). Default 4096. */
  sparse?: number;
  /**
   * Copy data ranges by copy offloading (`BlockNode.copyRange`, qemu-img
   * convert -C): as data, without zero detection. When the graph cannot
   * offload, the rest is copied the ordinary way, as qemu-img falls back.
   */
  copyRange?: boolean;
  /**
   * qemu-img convert --salvage: a read that fails is retried sector by
   * sector and the sectors that still fail are copied as zeros; a block
   * status that fails is retried on shorter ranges down to one sector, which
   * is then read as data. Each is reported to `onWarning` in qemu-img's words.
   */
  salvage?: boolean;
  /** Receives salvage warnings ("error while reading offset 512: Input/output error"). */
  onWarning?: (message: string) => void;
  /** Bytes per request (default 2 MiB; whole clusters when compressing). */
  chunkSize?: number;
  /** Called with the bytes of `src` processed so far. */
  progress?: (done: number) => void;
  /** Called with the length of each range copied as data (qemu-img convert's progress counts these). */
  onData?: (bytes: number) => void;
}

const CHUNK = 2 << 20;

/**
 * Copies all of `source` into `dst` (starting at `opts.dstOffset`); a list
 * of sources is copied end to end, as one image.
 *
 * @example
 * ```ts
 * import { copyImage, open } from "@blkgraph/blkgraph";
 * await using src = await open({ driver: "memory", size: 1 << 20 });
 * await using dst = await open({ driver: "memory", size: 1 << 20 });
 * await src.pwrite(4096, new Uint8Array(512).fill(7));
 * await copyImage(src, dst);
 * const back = new Uint8Array(512);
 * await dst.pread(4096, back);
 * console.log(back[0]); // 7
 * ```
 */
export async function copyImage(source: BlockNode | readonly BlockNode[], dst: BlockNode, opts: CopyOptions = {}): Promise<void> {
  // Several sources are read end to end as one (qemu-img convert's stream), so no target cluster is split between two copies.
  const src = concatSources(Array.isArray(source) ? source : [source as BlockNode]);
  const length = src.length;
  const dstOffset = opts.dstOffset ?? 0;
  let chunk = opts.chunkSize ?? CHUNK;
  if (opts.compress) {
    if (!dst.supportsCompressedWrites) {
      throw new BlockError("ENOTSUP", `Compression not supported for format '${dst.formatName}'`, { node: dst.name });
    }
    const info = await dst.formatNode.info();
    chunk = typeof info["cluster-size"] === "number" ? info["cluster-size"] : 65536;
    if (dstOffset % chunk !== 0) {
      throw new BlockError("EINVAL", `Cannot write compressed data at offset ${dstOffset}: not aligned to the cluster size ${chunk}`, {
        node: dst.name,
      });
    }
  }
  if (dstOffset + length > dst.length) {
    throw new BlockError("ENOSPC", `Cannot copy ${length} bytes to offset ${dstOffset} of node '${dst.name}' (${dst.length} bytes)`, {
      node: dst.name,
    });
  }
  let next = 0;
  let done = 0;
  const loops = opts.compress ? 1 : Math.max(1, opts.parallel ?? 1);
  // A target whose new image does not read as zeros (luks) gets its zero ranges written, as qemu-img does.
  const zeroTarget = (opts.zeroTarget ?? false) || !dst.hasZeroInit;
  const sparse = opts.sparse ?? 4096;
  const zeroBuf = sparse === 0 ? new Uint8Array(chunk) : undefined;
  const zeroOut = async (off: number, n: number) => {
    if (zeroBuf && opts.compress) {
      // -S 0 with -c: as qemu-img, the zeros are data, written compressed like any other cluster (a cluster of its own
      // for each, never recycled as a read buffer).
      for (let at = 0; at < n; at += chunk) await writeCompressed(dstOffset + off + at, new Uint8Array(Math.min(chunk, n - at)), false);
      return;
    }
    if (opts.compress && zeroTarget) await drain();
    if (zeroBuf) {
      // -S 0: a fully allocated target, zeros written as data.
      for (let at = 0; at < n; at += zeroBuf.length) {
        await dst.pwrite(dstOffset + off + at, zeroBuf.subarray(0, Math.min(zeroBuf.length, n - at)));
      }
    } else if (zeroTarget) await dst.pwriteZeroes(dstOffset + off, n, { mayUnmap: true });
  };
  // Compressed writes are left in flight, oldest awaited first; the first failure stops the copy.
  const window = opts.compressWindow ?? Math.max(2, Math.min(32, Math.floor((16 << 20) / chunk)));
  const inflight: Promise<void>[] = [];
  let failed: { error: unknown } | undefined;
  // The buffers of compressed writes that completed, for the next reads: a copy allocates at most a window of clusters.
  const spare: Uint8Array[] = [];
  const writeCompressed = async (at: number, data: Uint8Array, recycle = true) => {
    const whole = new Uint8Array(data.buffer, data.byteOffset, data.buffer.byteLength - data.byteOffset);
    const done = () => void (recycle && spare.push(whole));
    inflight.push(dst.pwrite(at, data, { compressed: true }).then(done, (error) => void (failed ??= { error })));
    if (inflight.length >= window) await inflight.shift();
    if (failed) throw failed.error;
  };
  // Before a write that is not compressed: the compressed ones before it commit first (the image's layout stays in guest order).
  const drain = async () => {
    while (inflight.length) await inflight.shift();
    if (failed) throw failed.error;
  };
  // Copy offloading, until the graph first refuses it (then the rest is copied here, as qemu-img's convert does).
  let offload = (opts.copyRange ?? false) && !opts.compress;
  const offloaded = async (off: number, n: number): Promise<boolean> => {
    try {
      await src.copyRange(off, n, dst, dstOffset + off);
      return true;
    } catch {
      offload = false;
      return false;
    }
  };
  const warn = (m: string) => opts.onWarning?.(m);
  const ask = opts.salvage
    ? (off: number, n: number) => salvageStatus(src, off, n, warn)
    : (off: number, n: number) => src.blockStatus(off, n);
  const read = opts.salvage
    ? (off: number, data: Uint8Array) => salvageRead(src, off, data, warn)
    : (off: number, data: Uint8Array) => src.pread(off, data);
  // Recent block-status answers, reused for every chunk inside them (qemu-img's sector_next_status): one request per
  // extent, not one per chunk, each scanning the rest of a long data extent again. Parallel workers ask one at a time,
  // so a chunk claimed while the answer covering it is on its way waits for that answer instead of asking again.
  const known: { offset: number; end: number; zero: boolean; present: boolean; depth: number }[] = [];
  const lookup = async (off: number, max: number) => {
    let k = known.find((e) => off >= e.offset && off < e.end);
    if (!k) {
      const st = await ask(off, max);
      k = { offset: off, end: off + st.length, zero: st.zero, present: st.present ?? st.allocated, depth: st.depth ?? 0 };
      known.push(k);
      if (known.length > loops) known.shift();
    }
    return { length: k.end - off, zero: k.zero, present: k.present, depth: k.depth };
  };
  let asking: Promise<unknown> = Promise.resolve();
  const status = (off: number, max: number) => {
    const p = loops === 1 ? lookup(off, max) : asking.then(() => lookup(off, max));
    asking = p.catch(() => {});
    return p;
  };
  // In-order writes: chunk k writes only after chunk k - 1 has written all of its ranges (`turn` is the chunk whose
  // writes may run); the first failure stops every worker, including those waiting for their turn.
  const ordered = (opts.inOrder ?? false) && loops > 1;
  let claimed = 0;
  let turn = 0;
  const waiting = new Map<number, () => void>();
  let stopped: { error: unknown } | undefined;
  const myTurn = async (seq: number) => {
    if (ordered && seq !== turn && !stopped) await new Promise<void>((resolve) => waiting.set(seq, resolve));
    if (stopped) throw stopped.error;
  };
  const passTurn = (seq: number) => {
    if (!ordered) return;
    turn = seq + 1;
    const wake = waiting.get(turn);
    waiting.delete(turn);
    wake?.();
  };
  const stop = (error: unknown) => {
    stopped ??= { error };
    for (const wake of waiting.values()) wake();
    waiting.clear();
  };
  // The next range for a worker: a chunk, or all of a range that reaches past the chunk and needs no data copied (a
  // hole, zeros, or what the target's backing file provides), as qemu-img's convert_iteration_sectors claims it. Claims
  // are made one at a time, each once the block status of its start is known, so parallel workers never overlap and
  // a long hole is one claim, not one per chunk. (Compressing, holes end on cluster boundaries: decided below.)
  let claiming: Promise<unknown> = Promise.resolve();
  const claimOne = async (): Promise<{ seq: number; start: number; end: number } | undefined> => {
    if (next >= length || stopped) return undefined;
    const start = next;
    let end = Math.min(start + chunk - (start % chunk), length);
    if (!opts.compress) {
      const st = await status(start, length - start);
      const nothingToCopy = (opts.topOnly && st.depth > 0) || st.zero || !st.present;
      if (nothingToCopy && start + st.length > end) end = Math.min(start + st.length, length);
    }
    next = end;
    return { seq: claimed++, start, end };
  };
  const claim = () => {
    const p = claiming.then(claimOne);
    claiming = p.catch(() => {});
    return p;
  };
  const one = async (buf: Uint8Array) => {
    for (let c = await claim(); c; c = await claim()) {
      const { seq, start } = c;
      let end = c.end;
      for (let off = start; off < end;) {
        // Ask about everything up to the end: a hole is skipped in one step, and the answer serves the chunks after this one.
        const st = await status(off, length - off);
        let n = st.length;
        let copied = 0;
        const below = opts.topOnly && st.depth > 0;
        let skip = below || st.zero || !st.present;
        if (opts.compress && n < end - off) {
          // As qemu-img: a cluster only partly a hole (or zeros, or below) counts as data, written whole.
          skip = false;
          n = end - off;
        }
        if (off + n > end) {
          if (skip && next === end) {
            // Compressing: the hole ends at a cluster boundary (or the end), so that clusters stay whole.
            const e = opts.compress && off + n < length ? off + n - ((off + n) % chunk) : off + n;
            next = end = e;
            n = e - off;
          } else n = end - off;
        }
        // Copy offloading writes the target as it reads the source: in its turn.
        if (!skip && offload) await myTurn(seq);
        if (skip && below) {
          // Defined further down the source's backing chain: the target's backing file provides it.
        } else if (skip) {
          await myTurn(seq);
          await zeroOut(off, n);
        } else if (offload && (await offloaded(off, n))) {
          copied = n;
        } else {
          // A compressed write keeps its buffer while in flight.
          const data = !opts.compress ? buf.subarray(0, n) : n <= chunk ? (spare.pop() ?? ioBuffer(chunk)).subarray(0, n) : ioBuffer(n);
          await read(off, data);
          // Read ahead of the chunks before it; written in its turn.
          await myTurn(seq);
          copied = n;
          const wholeCluster = off % chunk === 0 && (n === chunk || off + n === length);
          // -S 0 keeps the target fully allocated: a zero cluster is written (compressed) too, as qemu-img writes it.
          if (opts.compress && wholeCluster && (sparse === 0 || !isZero(data))) await writeCompressed(dstOffset + off, data);
          else {
            if (opts.compress) await drain();
            if (sparse === 0) await dst.pwrite(dstOffset + off, data);
            else if (isZero(data)) await zeroOut(off, n);
            else {
              // Like qemu-img's -S 4k: zero runs inside the data stay holes.
              let at = 0;
              for (const [s, e] of nonZeroRuns(data, sparse)) {
                if (s > at) await zeroOut(off + at, s - at);
                await dst.pwrite(dstOffset + off + s, data.subarray(s, e));
                at = e;
              }
              if (at < n) await zeroOut(off + at, n - at);
            }
          }
        }
        if (copied) opts.onData?.(copied);
        off += n;
        done += n;
        opts.progress?.(done);
      }
      // A chunk that wrote nothing (left to the target's backing file) still passes the turn only in its own turn.
      await myTurn(seq);
      passTurn(seq);
    }
  };
  const workers = [];
  for (let i = 0; i < loops; i++) workers.push(one(ioBuffer(chunk)).catch(stop));
  try {
    // Every worker ends (a failure stops the others at their next step) before the copy returns or throws: nothing of
    // it is still reading or writing when the caller closes the nodes.
    await Promise.all(workers);
  } finally {
    await Promise.all(inflight);
  }
  if (stopped) throw stopped.error;
  if (failed) throw failed.error;
}

const SECTOR = 512;

const strerror = (e: unknown) => (e instanceof BlockError ? e.strerror : String(e));

/** Block status for --salvage: on failure, retried on a quarter of the range, down to one sector, which then counts as data. */
async function salvageStatus(src: CopySource, off: number, n: number, warn: (m: string) => void): Promise<BlockStatus> {
  for (;;) {
    try {
      return await src.blockStatus(off, n);
    } catch (e) {
      if (n <= SECTOR) {
        warn(`error while reading block status at offset ${off}: ${strerror(e)}`);
        return { offset: off, length: Math.min(n, SECTOR), data: true, zero: false, allocated: true, present: true, depth: 0 };
      }
      n = Math.ceil(Math.ceil(n / SECTOR) / 4) * SECTOR;
    }
  }
}

/** A read for --salvage: on failure, read again sector by sector; a sector that still fails reads as zeros. */
async function salvageRead(src: CopySource, off: number, data: Uint8Array, warn: (m: string) => void): Promise<void> {
  try {
    return await src.pread(off, data);
  } catch {
    // Sector by sector below.
  }
  for (let at = 0; at < data.length; at += SECTOR) {
    const part = data.subarray(at, Math.min(at + SECTOR, data.length));
    try {
      await src.pread(off + at, part);
    } catch (e) {
      warn(`error while reading offset ${off + at}: ${strerror(e)}`);
      part.fill(0);
    }
  }
}
