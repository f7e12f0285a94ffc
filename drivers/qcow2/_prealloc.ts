/**
 * Preallocation of a grown area (QEMU's preallocate_co and the falloc/full
 * branch of qcow2_co_truncate), placed as qemu-img places it:
 *
 * - `metadata`: per L2 table, the table (allocated or copied if shared)
 *   then its data clusters, first fit; the entries point at them (COPIED,
 *   no data written), and the file is extended over the last one.
 * - `falloc`/`full`: a refcount area after the last cluster in use, sized
 *   for the new data and its L2 tables; the data clusters right after it,
 *   the file grown over them with the file node's preallocation; then the
 *   L2 tables (first fit, often the freed old refcount table) and entries.
 *
 * With an external data file, host offsets are guest offsets: only the
 * metadata is preallocated and the data file is resized with the mode.
 * The part of a cluster before the old end keeps its content (copied into
 * the new cluster).
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { RequestInfo } from "../../core/types.ts";
import { entryOffset, HI_COMPRESSED, HI_COPIED, setEntry } from "./_entries.ts";
import { readGuest } from "./_read.ts";
import { allocAt, allocClusters, freeTable, getRefcount, updateRefcount } from "./_refcount.ts";
import { refcountArea } from "./_refcount_area.ts";
import type { Qcow2State } from "./_state.ts";
import { getL2ForWrite, releaseEntry } from "./_write.ts";
import { writeback } from "./_writeback.ts";
import { preWriteOverlapCheck } from "./_overlap.ts";

/** A preallocation mode other than `off`. */
export type PreallocMode = "metadata" | "falloc" | "full";

const INT_MAX = 2 ** 31 - 1;

/**
 * Whether the L2 entry at byte `at` needs a new cluster: everything but a
 * COPIED cluster of its own (QEMU's cluster_needs_new_alloc); a shared or
 * compressed cluster is copied.
 */
function needsCluster(st: Qcow2State, view: DataView, at: number): boolean {
  const hi = view.getUint32(at);
  if (hi & HI_COMPRESSED || !(hi & HI_COPIED)) return true;
  return entryOffset(view, at) === 0 && !st.externalData;
}

/**
 * Frees at once the clusters a link replaced (QEMU frees them there, and
 * later allocations reuse them): the L2 change that dropped them is written
 * back and durable first, so a crash never finds a cluster both mapped and
 * reused.
 */
async function freeReplaced(st: Qcow2State, req: RequestInfo | undefined): Promise<void> {
  if (st.pendingFree.length) await writeback(st, req);
}

/**
 * Points guest cluster `g` (entry at byte `at`) at `host`, keeping the bytes
 * of it before `keepEnd`. With extended L2 entries the subcluster bitmap is
 * left as it was (QEMU links a preallocation with `prealloc` set, which
 * leaves the bitmap alone): the subclusters before the old end that held data
 * stay allocated, now in the new cluster, and the new ones stay unallocated
 * until written. Clearing it would lose the data of the last partial cluster.
 * Two exceptions: `allocateAll` (the grown part must hide a longer backing
 * file: QEMU's subclusters_need_allocation) marks every subcluster
 * allocated, and a compressed cluster, whose bitmap is empty, gets its
 * copied head's subclusters allocated (qemu-img 7.2 leaves them unallocated
 * and so loses those bytes). With `zeroStale`, the rest of a cluster the
 * file already held is zeroed where it does not read as zeros.
 */
async function link(
  st: Qcow2State,
  view: DataView,
  at: number,
  g: number,
  host: number,
  keepEnd: number,
  req: RequestInfo | undefined,
  allocateAll = false,
  zeroStale = true,
) {
  const compressed = (view.getUint32(at) & HI_COMPRESSED) !== 0;
  let written = 0;
  if (keepEnd > g) {
    // The guest bytes before the old end stay what they were (QEMU's
    // cow_start), padded with zeros to the end of their subcluster: that
    // subcluster may be allocated, and a reused host cluster must not show
    // its old bytes after the old end.
    const len = st.extL2 ? Math.min(st.cs, Math.ceil((keepEnd - g) / st.subSize) * st.subSize) : keepEnd - g;
    const head = new Uint8Array(len);
    await readGuest(st, g, head.subarray(0, keepEnd - g), req);
    if (st.crypto) await st.crypto.encrypt(head, host, g);
    await preWriteOverlapCheck(st, 0, host, head.length, true);
    st.noteDataWrite(host, head.length);
    await st.data.pwrite(host, head, { req });
    written = head.length;
  }
  // A reused cluster (freed earlier, not discarded) must not show its old bytes in the new mapping.
  if (zeroStale && !st.externalData) await zeroStaleTail(st, host + written, Math.min(host + st.cs, st.file.length), req);
  releaseEntry(st, view, at, undefined, true);
  setEntry(view, at, host, HI_COPIED, 0);
  if (st.extL2 && (allocateAll || compressed)) {
    const n = allocateAll ? 32 : Math.max(0, Math.ceil((keepEnd - g) / st.subSize));
    view.setUint32(at + 8, 0);
    view.setUint32(at + 12, n >= 32 ? 0xffffffff : ((1 << n) - 1) >>> 0);
  }
}

/** Bytes one QEMU request may cover (BDRV_REQUEST_MAX_BYTES). */
const REQUEST_MAX = Math.floor(INT_MAX / 512) * 512;

/**
 * One qcow2_alloc_host_offset call over guest `[offset, end)`: keeps
 * clusters that are COPIED already, allocates the others in runs (the
 * first run first fit, later ones contiguous with the previous host cluster
 * as long as that is free), and stops where the host mapping cannot go on
 * contiguously. Returns the guest bytes handled and the host end reached.
 */
async function allocHostRange(
  st: Qcow2State,
  offset: number,
  end: number,
  req: RequestInfo | undefined,
): Promise<{ bytes: number; hostEnd: number }> {
  const cs = st.cs;
  const maxRun = Math.floor(REQUEST_MAX / cs);
  let cur = offset;
  let cont = -1;
  let hostEnd = 0;
  while (cur < end) {
    const l1i = Math.floor(cur / st.l2Span);
    const tableEnd = Math.min(end, (l1i + 1) * st.l2Span);
    const e = await getL2ForWrite(st, l1i, req);
    try {
      const first = Math.floor((cur - l1i * st.l2Span) / cs);
      const at = first * st.entryBytes;
      const room = Math.min(maxRun, Math.ceil((tableEnd - Math.floor(cur / cs) * cs) / cs));
      if (!needsCluster(st, e.view, at)) {
        // handle_copied: COPIED clusters are kept (contiguous with what came before, or the call ends).
        const host = entryOffset(e.view, at);
        if (cont >= 0 && host !== cont) break;
        let n = 1;
        while (
          n < room && !needsCluster(st, e.view, at + n * st.entryBytes) && entryOffset(e.view, at + n * st.entryBytes) === host + n * cs
        ) n++;
        cont = host + n * cs;
        cur = Math.min(end, Math.floor(cur / cs) * cs + n * cs);
        continue;
      }
      let n = 1;
      while (n < room && needsCluster(st, e.view, at + n * st.entryBytes)) n++;
      let host: number;
      if (st.externalData) host = Math.floor(cur / cs) * cs;
      else if (cont < 0) host = await allocClusters(st, n, req);
      else {
        n = await allocAt(st, cont / cs, n, req);
        if (n === 0) break; // cannot extend the contiguous allocation
        host = cont;
      }
      const g0 = Math.floor(cur / cs) * cs;
      for (let k = 0; k < n; k++) await link(st, e.view, at + k * st.entryBytes, g0 + k * cs, host + k * cs, k === 0 ? cur : 0, req);
      st.l2Cache.markDirty(e);
      cont = host + n * cs;
      hostEnd = Math.max(hostEnd, cont);
      cur = Math.min(end, g0 + n * cs);
    } finally {
      st.l2Cache.release(e);
    }
    await freeReplaced(st, req);
  }
  return { bytes: cur - offset, hostEnd };
}

/** `preallocation=metadata` over guest `[from, to)` (metadata lock held; QEMU's preallocate_co). */
export async function preallocateMetadata(st: Qcow2State, from: number, to: number, req: RequestInfo | undefined): Promise<void> {
  const chunk = Math.floor(INT_MAX / st.cs) * st.cs;
  let endHost = 0;
  for (let offset = from; offset < to;) {
    const r = await allocHostRange(st, offset, Math.min(to, offset + chunk), req);
    endHost = Math.max(endHost, r.hostEnd);
    offset += r.bytes;
  }
  // The file covers every allocated cluster (sparse: nothing is written but the part before the old end).
  if (!st.externalData && endHost > st.file.length) await st.file.truncate(endHost, { req });
}

/**
 * `preallocation=falloc|full` over guest `[from, to)` (metadata lock held).
 * With `zeroFill` the grown part must read as zeros over a longer backing
 * file: every new subcluster is allocated (the data clusters read zeros).
 * Where the new data clusters reuse a freed tail of the file, bytes there
 * that do not read as zeros are zeroed first (QEMU would show them).
 */
export async function preallocateFull(
  st: Qcow2State,
  from: number,
  to: number,
  mode: "falloc" | "full",
  req: RequestInfo | undefined,
  zeroFill = false,
): Promise<void> {
  const cs = st.cs;
  if (st.externalData) {
    await preallocateMetadata(st, from, to, req);
    return;
  }
  // After the last cluster in use (QEMU's qcow2_get_last_cluster).
  let last = Math.ceil(st.file.length / cs) - 1;
  while (last >= 0 && (await getRefcount(st, last, req)) === 0) last--;
  const oldFileClusters = last >= 0 ? last + 1 : Math.ceil(st.file.length / cs);
  const first = Math.floor(from / cs);
  const nData = Math.ceil(to / cs) - first;
  if (nData <= 0) return;
  const nL2 = Math.ceil(nData / st.l2Entries) + 1;
  await writeback(st, req);
  const { end, oldTable } = await refcountArea(st, oldFileClusters, nData + nL2, true, undefined, req);
  await freeTable(st, oldTable, req);
  for (let c = end; c < end + nData; c++) await updateRefcount(st, c, 1, req);
  // Counted before the file grows over them.
  await writeback(st, req);
  const oldLength = st.file.length;
  try {
    await st.file.truncate((end + nData) * cs, { prealloc: mode, req });
  } catch (e) {
    // As QEMU: the data clusters are freed again and the size stays.
    for (let c = end; c < end + nData; c++) await updateRefcount(st, c, -1, req);
    await writeback(st, req);
    if (!(e instanceof BlockError)) throw e;
    throw new BlockError(e.code, `Failed to resize underlying file: ${e.message}`, { node: st.node.name, cause: e });
  }
  await zeroStaleTail(st, end * cs, Math.min(oldLength, (end + nData) * cs), req);
  let g = first * cs;
  let host = end * cs;
  while (g < to) {
    const l1i = Math.floor(g / st.l2Span);
    const tableEnd = Math.min(to, (l1i + 1) * st.l2Span);
    const e = await getL2ForWrite(st, l1i, req);
    try {
      for (; g < tableEnd; g += cs, host += cs) {
        const at = ((g - l1i * st.l2Span) / cs) * st.entryBytes;
        // The old file's part of these clusters was zeroed above, the rest is the file's new (zero) growth.
        await link(st, e.view, at, g, host, g === first * cs ? from : 0, req, zeroFill, false);
      }
      st.l2Cache.markDirty(e);
    } finally {
      st.l2Cache.release(e);
    }
    await freeReplaced(st, req);
  }
}

/** Zeroes what does not read as zeros in host `[from, end)` of the file (a freed tail the new data clusters reuse). */
async function zeroStaleTail(st: Qcow2State, from: number, end: number, req: RequestInfo | undefined): Promise<void> {
  for (let o = from; o < end;) {
    const s = await st.file.blockStatus(o, end - o, { req });
    const n = Math.max(1, Math.min(s.length, end - o));
    if (!s.zero) {
      await preWriteOverlapCheck(st, 0, o, n, true);
      await st.file.pwriteZeroes(o, n, { req });
    }
    o += n;
  }
}
