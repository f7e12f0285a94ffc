/**
 * Compressed cluster writes (`pwriteCompressed`, used by `convert -c`):
 * the cluster is compressed with the image's compression type on a pool of
 * threads (`_compress_pool.ts`), outside the metadata lock, so that many
 * compressed writes can be in flight; the results are committed one at a
 * time, in the order the writes were issued, under the lock: bytes
 * allocated and packed back to back, across host cluster boundaries
 * (QEMU's qcow2_alloc_bytes), written, and only then the L2 entry set.
 * Every compressed cluster holds one reference to each host cluster it
 * touches.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import { CompressPool } from "./_compress_pool.ts";
import { QCOW2_MAX_WORKERS, runTaskPool } from "../../core/_task_pool.ts";
import { allocClusters, getRefcount, updateRefcount } from "./_refcount.ts";
import { HI_COMPRESSED, maxRefcount, OFFSET_HI_MASK, OFFSET_LO_MASK } from "./_entries.ts";
import type { Qcow2State } from "./_state.ts";
import { getL2ForWrite, releaseEntry, writeLocked } from "./_write.ts";
import { markDirty } from "./_writeback.ts";
import { preWriteOverlapCheck } from "./_overlap.ts";

/**
 * Allocates `len` bytes (at most one cluster) for compressed data and
 * returns their host offset, as QEMU's qcow2_alloc_bytes does: the data
 * goes right after the previous compressed cluster's, and runs on into the
 * next host cluster when that one is newly allocated right behind it; else
 * it starts a new cluster. Each host cluster it touches gains one reference.
 */
async function allocBytes(st: Qcow2State, len: number, req: RequestInfo | undefined): Promise<number> {
  const p = st.event("cluster_alloc_bytes", req);
  if (p) await p;
  const cs = st.cs;
  st.lastCompressed = undefined;
  let off = st.freeByteOffset;
  if (off !== 0) {
    // A cluster freed meanwhile, or one whose refcount is at its limit, takes no more data.
    const rc = await getRefcount(st, Math.floor(off / cs), req);
    if (rc === 0 || rc >= maxRefcount(st.refBits)) off = 0;
  }
  if (off !== 0 && (off % cs) + len <= cs) {
    await updateRefcount(st, Math.floor(off / cs), 1, req);
  } else {
    const host = await allocClusters(st, 1, req);
    if (off !== 0 && host === Math.ceil(off / cs) * cs) await updateRefcount(st, Math.floor(off / cs), 1, req);
    else off = host;
  }
  st.freeByteOffset = (off + len) % cs === 0 ? 0 : off + len;
  return off;
}

/**
 * Compressed writes of one image: compression on its pool, commits in
 * issue order (a write issued later never commits before an earlier one,
 * whichever thread finishes first), each under the metadata lock.
 */
export class CompressedWriter {
  #st: Qcow2State;
  #threads: number | undefined;
  #pool: CompressPool | undefined;
  /** Settles when the last write issued has committed (or failed). */
  #tail: Promise<unknown> = Promise.resolve();

  /** Writes of `st`, compressed up to `threads` at once (default: the pool's size). */
  constructor(st: Qcow2State, threads?: number) {
    this.#st = st;
    this.#threads = threads;
  }

  /** The pool, once a compressed write started it. */
  get pool(): CompressPool | undefined {
    return this.#pool;
  }

  /**
   * Writes whole clusters compressed at guest `offset` (cluster aligned;
   * `data` a multiple of the cluster size, or running to the end of the
   * image), each cluster compressed on its own as QEMU's
   * qcow2_co_pwritev_compressed_part splits it, or written uncompressed
   * when compression does not make it smaller. `commit` runs the locked
   * part (the caller's `change()`); it is called in issue order.
   */
  write(offset: number, data: Uint8Array, commit: (fn: () => Promise<void>) => Promise<void>, req: RequestInfo | undefined): Promise<void> {
    const st = this.#st;
    try {
      checkCompressedWrite(st, offset, data);
    } catch (e) {
      return Promise.reject(e);
    }
    if (data.length <= st.cs) return this.#writeCluster(offset, data, commit, req);
    // One task per cluster in QEMU's task pool: a failed cluster stops further ones, and the error comes once those started have ended.
    return runTaskPool(Math.ceil(data.length / st.cs), QCOW2_MAX_WORKERS, (i) => {
      const at = i * st.cs;
      return this.#writeCluster(offset + at, data.subarray(at, Math.min(at + st.cs, data.length)), commit, req);
    });
  }

  #writeCluster(
    offset: number,
    data: Uint8Array,
    commit: (fn: () => Promise<void>) => Promise<void>,
    req: RequestInfo | undefined,
  ): Promise<void> {
    const st = this.#st;
    // The short tail of the image is compressed as a whole cluster, zero-padded; a whole cluster as it is (it must not change until written).
    let full = data;
    if (data.length < st.cs) {
      full = new Uint8Array(st.cs);
      full.set(data);
    }
    this.#pool ??= new CompressPool({ size: this.#threads });
    const packed = this.#pool.compress(full, st.header.compressionType);
    const prev = this.#tail;
    const done = (async () => {
      // Also when compression failed: the earlier writes settle first.
      const bytes = await packed.finally(() => prev);
      await commit(() => writeCompressedLocked(st, offset, data, bytes, req));
    })();
    this.#tail = done.catch(() => {});
    return done;
  }

  /** Waits for the writes in flight (their errors went to their callers), then frees the pool's compression state. */
  async close(): Promise<void> {
    await this.#tail;
    this.#pool?.close();
  }

  /**
   * After compressed writes, rounds the image file up to a whole 512-byte
   * sector, as qemu-img convert -c's end-of-file write does (QEMU's
   * qcow2_co_pwritev_compressed_part with no bytes). Metadata lock held.
   */
  async alignFileEnd(): Promise<void> {
    const len = this.#st.file.length;
    if (this.#pool && len % 512) await this.#st.file.truncate(len + 512 - (len % 512));
  }
}

function checkCompressedWrite(st: Qcow2State, offset: number, data: Uint8Array): void {
  const cs = st.cs;
  if (offset % cs !== 0 || (data.length % cs !== 0 && offset + data.length !== st.size)) {
    throw new BlockError(
      "EINVAL",
      `Cannot write ${data.length} compressed bytes at offset ${offset}: compressed writes take whole clusters (${cs} bytes each) or run to the end of the image`,
      {
        node: st.node.name,
        offset,
        length: data.length,
      },
    );
  }
  if (st.externalData) {
    throw new BlockError("ENOTSUP", "Cannot write compressed clusters to an image with an external data file", { node: st.node.name });
  }
}

/**
 * Commits one compressed cluster at guest `offset`: `packed` (the
 * compressed bytes, or undefined to write `data` uncompressed) is
 * allocated, written, and then the L2 entry points at it. Metadata lock held.
 */
export async function writeCompressedLocked(
  st: Qcow2State,
  offset: number,
  data: Uint8Array,
  packed: Uint8Array | undefined,
  req: RequestInfo | undefined,
): Promise<void> {
  const cs = st.cs;
  checkCompressedWrite(st, offset, data);
  if (!packed) return writeLocked(st, offset, data, req);
  await markDirty(st, req);
  const l1i = Math.floor(offset / st.l2Span);
  const e = await getL2ForWrite(st, l1i, req);
  try {
    const at = Math.floor((offset - l1i * st.l2Span) / cs) * st.entryBytes;
    // Compression never overwrites: a cluster with a host offset (data, compressed, preallocated zeroes) is refused, as QEMU's
    // qcow2_alloc_compressed_cluster_offset refuses it (EIO), before anything is allocated.
    const hi = e.view.getUint32(at);
    if ((hi & (HI_COMPRESSED | OFFSET_HI_MASK)) !== 0 || (e.view.getUint32(at + 4) & OFFSET_LO_MASK) !== 0) {
      throw new BlockError("EIO", `Cannot write a compressed cluster at guest offset ${offset}: the cluster is already allocated`, {
        node: st.node.name,
        offset,
        length: data.length,
      });
    }
    const host = await allocBytes(st, packed.length, req);
    let p = st.event("write_compressed", req);
    if (p) await p;
    await preWriteOverlapCheck(st, 0, host, packed.length, true);
    st.noteDataWrite(host, packed.length);
    await st.file.pwrite(host, packed, { req });
    p = st.event("l2_update_compressed", req);
    if (p) await p;
    releaseEntry(st, e.view, at, { first: Math.floor(host / cs), end: Math.floor((host + packed.length - 1) / cs) + 1 });
    const x = 62 - (st.clusterBits - 8);
    const extra = Math.floor((host + packed.length - 1) / 512) - Math.floor(host / 512);
    const hostHi = Math.floor(host / 0x100000000);
    e.view.setUint32(at, (HI_COMPRESSED | (extra << (x - 32)) | hostHi) >>> 0);
    e.view.setUint32(at + 4, host % 0x100000000);
    if (st.extL2) e.view.setBigUint64(at + 8, 0n);
    st.l2Cache.markDirty(e);
  } finally {
    st.l2Cache.release(e);
  }
}
