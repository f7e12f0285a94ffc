/**
 * One open RBD image as a driver instance: reads, writes, write-zeroes,
 * discards and flushes through the aio completion engine, block status
 * from `rbd_diff_iterate2`, resize, and RBD snapshots behind the generic
 * snapshot callbacks — each the way QEMU's `block/rbd.c` does it.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode, BlockStatus, DriverInstance } from "../../core/node.ts";
import type { BlockLimits, SnapshotInfo, TruncateOptions, WriteOptions, WriteZeroesOptions } from "../../core/types.ts";
import { AioEngine, type AioStats } from "./_aio.ts";
import type { Connection, RbdOptions } from "./_connect.ts";
import {
  cstr,
  describeErrno,
  type Librbd,
  outPointer,
  outU64,
  RBD_FEATURE_FAST_DIFF,
  RBD_FLAG_FAST_DIFF_INVALID,
  RBD_IMAGE_INFO_SIZE,
  RBD_SNAP_INFO_SIZE,
  RBD_WRITE_ZEROES_FLAG_THICK_PROVISION,
  rbdError,
} from "./_librbd.ts";

/** Largest request passed to librbd (keeps the i32 return values exact). */
export const MAX_IO = 1 << 30;
/** Longest snapshot name QEMU accepts (its id_str is 128 bytes). */
const MAX_SNAP_NAME = 127;
/** What the diff callback returns to stop `rbd_diff_iterate2` early (QEMU's value). */
const STOP_DIFF = -9000;

/** State of one block-status query (QEMU's RBDDiffIterateReq). */
interface DiffRun {
  offs: number;
  bytes: number;
  exists: boolean;
}

/** The instance behind an `rbd` node. */
export class RbdInstance implements DriverInstance {
  /** Byte-granular requests; transfers capped below 2 GiB. */
  readonly limits: Partial<BlockLimits> = { requestAlignment: 1, maxTransfer: MAX_IO, maxWriteZero: MAX_IO, maxDiscard: MAX_IO };
  /** FUA is a flush (librbd's cache makes the flush the durability point). */
  readonly supportsFua = false;

  readonly #lib: Librbd;
  readonly #conn: Connection;
  readonly #image: Deno.PointerValue;
  readonly #engine: AioEngine;
  readonly #node: string;
  readonly #label: string;
  readonly #opts: RbdOptions;
  #size: number;
  readonly #objectSize: number;
  #resizing: Promise<void> = Promise.resolve();
  #diffQueue: Promise<unknown> = Promise.resolve();
  #diffRun: DiffRun = { offs: 0, bytes: 0, exists: false };
  #diffCb: Deno.UnsafeCallback<{ readonly parameters: readonly ["u64", "usize", "i32", "pointer"]; readonly result: "i32" }> | undefined;
  #closed = false;

  private constructor(
    lib: Librbd,
    conn: Connection,
    image: Deno.PointerValue,
    engine: AioEngine,
    node: BlockNode,
    o: RbdOptions,
    size: number,
    obj: number,
  ) {
    this.#lib = lib;
    this.#conn = conn;
    this.#image = image;
    this.#node = node.name;
    this.#opts = o;
    this.#label = `${o.pool}/${o.namespace ? o.namespace + "/" : ""}${o.image}${o.snapshot ? "@" + o.snapshot : ""}`;
    this.#size = size;
    this.#objectSize = obj;
    this.#engine = engine;
  }

  /**
   * Opens the image on a connection (which it then owns). A snapshot opens
   * read-only, as in QEMU.
   */
  static async open(lib: Librbd, conn: Connection, node: BlockNode, o: RbdOptions, readOnly: boolean): Promise<RbdInstance> {
    const where = `${o.pool}/${o.namespace ? o.namespace + "/" : ""}${o.image}`;
    const out = new Uint8Array(8);
    const r = await lib.rbd_open(conn.ioctx, cstr(o.image), out, o.snapshot ? cstr(o.snapshot) : null);
    if (r < 0) {
      if (r === -2 && o.snapshot) {
        // Tell a missing snapshot from a missing image.
        const probe = new Uint8Array(8);
        if ((await lib.rbd_open(conn.ioctx, cstr(o.image), probe, null)) === 0) {
          await lib.rbd_close(outPointer(probe));
          throw new BlockError("ENOENT", `Cannot open RBD image '${where}@${o.snapshot}': the image has no snapshot '${o.snapshot}'`);
        }
      }
      if (r === -2) throw new BlockError("ENOENT", `Cannot open RBD image '${where}': no image '${o.image}' in pool '${o.pool}'`);
      throw rbdError(r, `Cannot open RBD image '${where}'`);
    }
    const image = outPointer(out);
    let engine: AioEngine | undefined;
    try {
      if (o.snapshot && !readOnly) {
        throw new BlockError("EROFS", `Cannot open RBD image '${where}@${o.snapshot}' read-write: rbd snapshots are read-only`);
      }
      const info = new Uint8Array(RBD_IMAGE_INFO_SIZE);
      const rs = await lib.rbd_stat(image, info, info.length);
      if (rs < 0) throw rbdError(rs, `Cannot read the size of RBD image '${where}'`);
      engine = AioEngine.create(lib, image, o.completion);
      return new RbdInstance(lib, conn, image, engine, node, o, outU64(info, 0), outU64(info, 8));
    } catch (e) {
      await engine?.close();
      await lib.rbd_close(image);
      throw e;
    }
  }

  #fail(what: string, offset: number, length: number, ret: number): never {
    const { code, text } = describeErrno(ret);
    throw new BlockError(code, `Cannot ${what} ${length} bytes at offset ${offset} on RBD image '${this.#label}': ${text}`, {
      node: this.#node,
      offset,
      length,
    });
  }

  /** Completion engine counters (for tests and benchmarks). */
  get aioStats(): AioStats {
    return this.#engine.stats;
  }

  getLength(): number {
    return this.#size;
  }

  async pread(offset: number, buf: Uint8Array): Promise<void> {
    // Make sure the bytes live off the JS heap (small typed arrays may not) before librbd writes them.
    void buf.buffer;
    const n = buf.length;
    const r = await this.#engine.submit((c) => this.#lib.rbd_aio_read2(this.#image, offset, n, buf, c, 0), buf);
    if (r < 0) this.#fail("read", offset, n, r);
    if (r < n) buf.fill(0, r);
  }

  async pwrite(offset: number, data: Uint8Array, _opts: WriteOptions): Promise<void> {
    const n = data.length;
    // librbd refuses writes past the end: grow first, as QEMU does.
    if (offset + n > this.#size) await this.#grow(offset + n);
    void data.buffer;
    const r = await this.#engine.submit((c) => this.#lib.rbd_aio_write2(this.#image, offset, n, data, c, 0), data);
    if (r < 0) this.#fail("write", offset, n, r);
  }

  async pwriteZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    if (offset + length > this.#size) await this.#grow(offset + length);
    // Without may-unmap the range must stay allocated (QEMU's thick-provision flag).
    const flags = opts.mayUnmap ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION;
    const r = await this.#engine.submit((c) => this.#lib.rbd_aio_write_zeroes(this.#image, offset, length, c, flags, 0));
    if (r < 0) this.#fail("write zeroes to", offset, length, r);
  }

  async pdiscard(offset: number, length: number): Promise<void> {
    const end = Math.min(offset + length, this.#size);
    if (end <= offset) return;
    const r = await this.#engine.submit((c) => this.#lib.rbd_aio_discard(this.#image, offset, end - offset, c));
    if (r < 0) this.#fail("discard", offset, end - offset, r);
  }

  async flush(): Promise<void> {
    const r = await this.#engine.submit((c) => this.#lib.rbd_aio_flush(this.#image, c));
    if (r < 0) {
      const { code, text } = describeErrno(r);
      throw new BlockError(code, `Cannot flush RBD image '${this.#label}': ${text}`, { node: this.#node });
    }
  }

  async truncate(length: number, opts: TruncateOptions): Promise<void> {
    if (opts.prealloc && opts.prealloc !== "off") {
      throw new BlockError("ENOTSUP", `Cannot resize RBD image '${this.#label}': unsupported preallocation mode '${opts.prealloc}'`, {
        node: this.#node,
      });
    }
    await this.#resize(length);
  }

  #grow(end: number): Promise<void> {
    return this.#resize(end, true);
  }

  /** Resizes (one at a time); `growOnly` never shrinks (concurrent writes past the end). */
  #resize(length: number, growOnly = false): Promise<void> {
    const run = this.#resizing.catch(() => {}).then(async () => {
      if (growOnly && length <= this.#size) return;
      const r = await this.#lib.rbd_resize(this.#image, length);
      if (r < 0) {
        const { code, text } = describeErrno(r);
        throw new BlockError(code, `Cannot resize RBD image '${this.#label}' to ${length} bytes: ${text}`, { node: this.#node });
      }
      this.#size = length;
    });
    this.#resizing = run;
    return run;
  }

  async #u64(call: (out: Uint8Array) => Promise<number>): Promise<number | undefined> {
    const out = new Uint8Array(8);
    return (await call(out)) < 0 ? undefined : outU64(out);
  }

  /**
   * Allocation from the fast-diff map (QEMU's qemu_rbd_co_block_status):
   * without a valid fast-diff map everything reads as data. The query
   * starts on an object boundary (whole objects are what the map knows, and
   * librbd before 1.17 reports wrong offsets otherwise).
   */
  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    const data: BlockStatus = { offset, length, data: true, zero: false, allocated: true, depth: 0, hostOffset: offset };
    const features = await this.#u64((o) => this.#lib.rbd_get_features(this.#image, o));
    if (features === undefined || !(features & RBD_FEATURE_FAST_DIFF)) return data;
    const flags = await this.#u64((o) => this.#lib.rbd_get_flags(this.#image, o));
    if (flags === undefined || flags & RBD_FLAG_FAST_DIFF_INVALID) return data;
    const head = offset % this.#objectSize;
    const run = await this.#diff(offset - head, length + head);
    if (run === undefined) return data;
    const n = Math.min(length, Math.max(1, run.bytes - head));
    return run.exists ? { ...data, length: n } : { ...data, length: n, data: false, zero: true };
  }

  /** One `rbd_diff_iterate2` run (queued: the callback is shared). */
  #diff(start: number, length: number): Promise<DiffRun | undefined> {
    const run = this.#diffQueue.catch(() => {}).then(async () => {
      this.#diffCb ??= this.#makeDiffCallback();
      const req: DiffRun = { offs: start, bytes: 0, exists: false };
      this.#diffRun = req;
      const r = await this.#lib.rbd_diff_iterate2(this.#image, null, start, length, 1, 1, this.#diffCb.pointer, null);
      if (r < 0 && r !== STOP_DIFF) return undefined;
      // No callback at all: the whole range is unallocated.
      if (!req.exists && r === 0 && req.bytes === 0) req.bytes = length;
      return req;
    });
    this.#diffQueue = run;
    return run;
  }

  #makeDiffCallback() {
    // Called on the worker thread running rbd_diff_iterate2; thread-safe
    // callbacks run it on the event loop, which is free (awaiting the call).
    const cb = Deno.UnsafeCallback.threadSafe(
      { parameters: ["u64", "usize", "i32", "pointer"], result: "i32" } as const,
      (offsRaw: number | bigint, lenRaw: number | bigint, exists: number): number => {
        const req = this.#diffRun;
        const offs = Number(offsRaw);
        const len = Number(lenRaw);
        if (!exists) return 0;
        if (!req.exists && offs > req.offs) {
          // An unallocated run up to the first allocated extent.
          req.bytes = offs - req.offs;
          return STOP_DIFF;
        }
        // An allocated run that stops at the first gap.
        if (req.exists && offs > req.offs + req.bytes) return STOP_DIFF;
        req.bytes += len;
        req.exists = true;
        return 0;
      },
    );
    cb.unref();
    return cb;
  }

  // ---- snapshots (QEMU's qemu_rbd_snap_*): the name is the id ----------

  async snapshotList(): Promise<SnapshotInfo[]> {
    let max = 16;
    for (let attempt = 0; attempt < 8; attempt++) {
      const snaps = new Uint8Array(RBD_SNAP_INFO_SIZE * max);
      const maxBuf = new Int32Array([max]);
      const n = await this.#lib.rbd_snap_list(this.#image, snaps, new Uint8Array(maxBuf.buffer));
      if (n === -34) {
        max = Math.max(maxBuf[0], max * 2);
        continue;
      }
      if (n < 0) throw rbdError(n, `Cannot list the snapshots of RBD image '${this.#label}'`, this.#node);
      const out: SnapshotInfo[] = [];
      for (let i = 0; i < n; i++) {
        const at = i * RBD_SNAP_INFO_SIZE;
        const name = Deno.UnsafePointerView.getCString(outPointer(snaps.subarray(at + 16))!);
        out.push({ id: name, name, vmStateSize: outU64(snaps, at + 8), dateSec: 0, dateNsec: 0, vmClockNsec: 0, icount: 0 });
      }
      this.#lib.rbd_snap_list_end(snaps);
      return out;
    }
    throw new BlockError("EIO", `Cannot list the snapshots of RBD image '${this.#label}': the list kept growing`, { node: this.#node });
  }

  async snapshotCreate(info: SnapshotInfo): Promise<void> {
    const what = `Cannot create snapshot '${info.name}' of RBD image '${this.#label}'`;
    if (!info.name) throw new BlockError("EINVAL", `${what}: rbd snapshots need a name`, { node: this.#node });
    if (info.id && info.id !== info.name) {
      throw new BlockError("EINVAL", `${what}: an rbd snapshot's id is its name (got id '${info.id}')`, { node: this.#node });
    }
    if (new TextEncoder().encode(info.name).length > MAX_SNAP_NAME) {
      throw new BlockError("ERANGE", `${what}: the name is longer than ${MAX_SNAP_NAME} bytes`, { node: this.#node });
    }
    const r = await this.#lib.rbd_snap_create(this.#image, cstr(info.name));
    if (r < 0) throw rbdError(r, what, this.#node);
  }

  async snapshotDelete(idOrName: string): Promise<void> {
    const r = await this.#lib.rbd_snap_remove(this.#image, cstr(idOrName));
    if (r < 0) throw rbdError(r, `Cannot delete snapshot '${idOrName}' of RBD image '${this.#label}'`, this.#node);
  }

  async snapshotGoto(idOrName: string): Promise<void> {
    const r = await this.#lib.rbd_snap_rollback(this.#image, cstr(idOrName));
    if (r < 0) throw rbdError(r, `Cannot roll RBD image '${this.#label}' back to snapshot '${idOrName}'`, this.#node);
    // The rollback restores the snapshot's size.
    const size = await this.#u64((o) => this.#lib.rbd_get_size(this.#image, o));
    if (size !== undefined) this.#size = size;
  }

  info(): Record<string, unknown> {
    const o = this.#opts;
    return {
      "cluster-size": this.#objectSize,
      pool: o.pool,
      namespace: o.namespace,
      image: o.image,
      ...(o.snapshot ? { snapshot: o.snapshot } : {}),
      "mon-host": this.#conn.monHost,
      "rbd-cache": this.#conn.rbdCache,
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Block status and resizes are not tracked as requests: let them finish
    // (the diff callback must outlive its rbd_diff_iterate2 call).
    await this.#diffQueue.catch(() => {});
    await this.#resizing.catch(() => {});
    await this.#engine.close();
    const r = await this.#lib.rbd_close(this.#image);
    this.#diffCb?.close();
    await this.#conn.close();
    if (r < 0) throw rbdError(r, `Cannot close RBD image '${this.#label}'`, this.#node);
  }
}
