/**
 * The qcow2 read path and block status: one `pread` per contiguous host
 * extent (decrypted in encrypted images), zeros for zero clusters, the
 * backing file for unallocated ranges (zeros past its end), and
 * decompression for compressed clusters.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import { DONE } from "../../core/_node_core.ts";
import type { BlockStatus } from "../../core/node.ts";
import { loadCodecs } from "./_codecs.ts";
import { K_COMPRESSED, K_NORMAL, K_UNALLOC, K_ZERO, map, type Mapping, mapSync, newMapping } from "./_l2.ts";
import type { Qcow2State } from "./_state.ts";

/** Reads from the backing node, with zeros past its end (or without a backing node). */
export async function readBacking(st: Qcow2State, offset: number, buf: Uint8Array, req: RequestInfo | undefined): Promise<void> {
  const b = st.backing;
  const avail = b ? Math.max(0, Math.min(buf.length, b.length - offset)) : 0;
  if (avail < buf.length) buf.fill(0, avail);
  if (avail > 0) {
    const p = st.event("read_backing_aio", req);
    if (p) await p;
    await b!.pread(offset, avail === buf.length ? buf : buf.subarray(0, avail), { req });
  }
}

/** Reads and decompresses the compressed cluster described by `m`. */
export async function readCompressed(st: Qcow2State, m: Mapping, req: RequestInfo | undefined): Promise<Uint8Array> {
  const cached = st.lastCompressed;
  if (cached && cached.key === m.host) return cached.data;
  const p = st.event("read_compressed", req);
  if (p) await p;
  const host = m.host;
  // Past the end of the file the data reads as zeros, as QEMU's read there does.
  const n = Math.max(0, Math.min(m.compressedBytes, st.file.length - host));
  const raw = new Uint8Array(m.compressedBytes);
  st.ioInFlight++;
  try {
    if (n) await st.file.pread(host, raw.subarray(0, n), { req });
  } finally {
    st.ioInFlight--;
  }
  const { decompressCluster } = await loadCodecs();
  let data: Uint8Array;
  try {
    data = decompressCluster(raw, st.cs, st.header.compressionType);
  } catch (e) {
    // Name the cluster: where its compressed data lies (the L2 entry's descriptor).
    if (!(e instanceof BlockError)) throw e;
    throw new BlockError(e.code, `${e.message} (compressed data at host offset 0x${host.toString(16)}, ${m.compressedBytes} bytes)`, {
      node: st.node.name,
      cause: e,
    });
  }
  st.lastCompressed = { key: host, data };
  return data;
}

const scratch = newMapping();

/** Host offsets past this are past the end of any file (and not exact as numbers). */
const MAX_HOST = Number.MAX_SAFE_INTEGER;

/**
 * One lock-free data read or write at `host`, inside an allocated extent
 * of an unencrypted image: raises `event`, then passes the request to the
 * data file synchronously and returns its promise as it is (`DONE` when
 * the file completed synchronously: no async frame, no promise of its own).
 * `ioInFlight` counts it until it settles, so no cluster it touches is
 * freed meanwhile.
 */
export function dataIo(st: Qcow2State, host: number, buf: Uint8Array, req: RequestInfo | undefined, write: boolean): Promise<void> {
  st.ioInFlight++;
  let p: Promise<void>;
  try {
    const ev = st.event(write ? "write_aio" : "read_aio", req);
    // The node emulates FUA for qcow2 (no supportsFua): the data file gets the request only.
    const opts = req ? { req } : NO_OPTS;
    if (ev) p = ev.then(() => write ? st.data.pwrite(host, buf, opts) : st.data.pread(host, buf, opts));
    else p = write ? st.data.pwrite(host, buf, opts) : st.data.pread(host, buf, opts);
  } catch (e) {
    st.ioInFlight--;
    return Promise.reject(e);
  }
  if (p === DONE) {
    st.ioInFlight--;
    return p;
  }
  return p.then(() => {
    st.ioInFlight--;
  }, (e) => {
    st.ioInFlight--;
    throw e;
  });
}

const NO_OPTS = Object.freeze({});

/**
 * The read hit path: a read inside one allocated extent of an unencrypted
 * image whose L2 table is cached is one {@linkcode dataIo}; undefined when
 * the read needs the general path. Throws on a corrupt L2 entry.
 */
export function readFast(st: Qcow2State, offset: number, buf: Uint8Array, req: RequestInfo | undefined): Promise<void> | undefined {
  if (st.crypto || !mapSync(st, offset, buf.length, scratch) || scratch.bytes !== buf.length || scratch.kind !== K_NORMAL) return undefined;
  if (scratch.host + buf.length > MAX_HOST) return undefined;
  return dataIo(st, scratch.host, buf, req, false);
}

/** Reads guest bytes `[offset, offset + buf.length)` through the current mapping. */
export async function readGuest(st: Qcow2State, offset: number, buf: Uint8Array, req: RequestInfo | undefined): Promise<void> {
  const len = buf.length;
  // Fast path: one extent fully mapped from cached tables.
  if (mapSync(st, offset, len, scratch) && scratch.bytes === len && scratch.kind === K_NORMAL && scratch.host + len <= MAX_HOST) {
    const host = scratch.host;
    st.ioInFlight++;
    try {
      const p = st.event("read_aio", req);
      if (p) await p;
      await st.data.pread(host, buf, { req });
    } finally {
      st.ioInFlight--;
    }
    if (st.crypto) await st.crypto.decrypt(buf, host, offset);
    return;
  }
  const m = newMapping();
  let done = 0;
  while (done < len) {
    const off = offset + done;
    await map(st, off, len - done, m, req);
    const n = m.bytes;
    const part = buf.subarray(done, done + n);
    switch (m.kind) {
      case K_NORMAL: {
        const host = m.host;
        if (host + n > MAX_HOST) {
          // Past 2^53 bytes, so past the end of any file: QEMU reads zeros there (encrypted, they decrypt to noise).
          if (st.crypto) {
            throw new BlockError("EIO", `Cannot read guest offset ${off}: its cluster lies at host offset ${host}, past 2^53 bytes`, {
              node: st.node.name,
              offset: off,
            });
          }
          part.fill(0);
          break;
        }
        st.ioInFlight++;
        try {
          const p = st.event("read_aio", req);
          if (p) await p;
          await st.data.pread(host, part, { req });
        } finally {
          st.ioInFlight--;
        }
        if (st.crypto) await st.crypto.decrypt(part, host, off);
        break;
      }
      case K_ZERO:
        part.fill(0);
        break;
      case K_UNALLOC:
        await readBacking(st, off, part, req);
        break;
      case K_COMPRESSED: {
        const data = await readCompressed(st, m, req);
        const inCluster = off % st.cs;
        part.set(data.subarray(inCluster, inCluster + n));
        break;
      }
    }
    done += n;
  }
}

/** Block status of the extent at `offset` (at most `length` bytes). */
export async function blockStatus(st: Qcow2State, offset: number, length: number, req: RequestInfo | undefined): Promise<BlockStatus> {
  const m = newMapping();
  await map(st, offset, length, m, req);
  const n = m.bytes;
  switch (m.kind) {
    case K_NORMAL:
      // Like QEMU, an encrypted cluster's host offset is not reported (its bytes there are ciphertext).
      if (st.crypto) return { offset, length: n, data: true, zero: false, allocated: true, present: true, depth: 0 };
      return { offset, length: n, data: true, zero: false, allocated: true, present: true, depth: 0, hostOffset: m.host, file: st.data };
    case K_ZERO:
      // A preallocated zero cluster reports its host offset, as QEMU's qcow2_co_block_status does (ZERO_ALLOC).
      if (m.host && !st.crypto) {
        return { offset, length: n, data: false, zero: true, allocated: true, present: true, depth: 0, hostOffset: m.host, file: st.data };
      }
      return { offset, length: n, data: false, zero: true, allocated: true, present: true, depth: 0 };
    case K_COMPRESSED:
      return { offset, length: n, data: true, zero: false, allocated: true, present: true, depth: 0, compressed: true };
  }
  const b = st.backing;
  if (!b || offset >= b.length) {
    return { offset, length: n, data: false, zero: true, allocated: false, present: false, depth: b ? 1 : 0 };
  }
  const s = await b.blockStatus(offset, Math.min(n, b.length - offset), { req });
  return {
    offset,
    length: Math.min(n, s.length),
    data: s.data,
    zero: s.zero,
    allocated: false,
    present: s.present ?? s.allocated,
    depth: (s.depth ?? 0) + 1,
    hostOffset: s.hostOffset,
    file: s.file,
    compressed: s.compressed,
  };
}
