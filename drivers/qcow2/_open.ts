/**
 * Opening a qcow2 node (QEMU's qcow2_do_open): the options, the header
 * checked against the mode, cache sizing, the active L1 and refcount
 * tables, the snapshot view options (the backing and data file children
 * are in `_children.ts`). Private to `qcow2.ts`.
 *
 * @module
 */

import { BlockError, reportOpenRepair } from "../../core/errors.ts";
import type { BlockNode, OpenContext } from "../../core/node.ts";
import { checkKnownOptions, optBool, optEnum, optInt, optSize, optString } from "../../core/options.ts";
import { entryOffset } from "./_entries.ts";
import {
  clusterSize,
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  l2EntryBytes,
  type Qcow2Header,
  readHeaderFrom,
} from "./header.ts";
import { repairImage } from "./check.ts";
import { type MetadataMode, Qcow2State, type WrongOrder } from "./_state.ts";
import { readSnapshotTableChecked } from "./_snapshot.ts";
import { loadSnapshotView } from "./_snapshot_ops.ts";
import { openBacking, openDataFile } from "./_children.ts";
import { initOverlapChecks, OVERLAP_OPTIONS, parseOverlapOptions } from "./_overlap.ts";
import { CRYPT_NONE, ENCRYPT_OPTIONS, Qcow2Crypto } from "./_crypto.ts";

/**
 * Cache sizes in tables from the cache options (QEMU's read_cache_sizes),
 * with its refusals: all three sizes at once, or a part larger than
 * `cache-size`. `l2-cache-entry-size` must be a power of two from 512 to the
 * cluster size, as in QEMU; the cache here always holds whole tables, so it
 * changes nothing else.
 */
export function cacheTables(ctx: OpenContext, h: Qcow2Header): { l2: number; rb: number } {
  const o = ctx.options;
  const cs = clusterSize(h);
  const entryBytes = l2EntryBytes(h);
  const full = Math.ceil(h.size / cs) * entryBytes;
  const total = optSize(o, "cache-size", "qcow2");
  let l2 = optSize(o, "l2-cache-size", "qcow2");
  let rb = optSize(o, "refcount-cache-size", "qcow2");
  const refuse = (msg: string) => {
    throw new BlockError("EINVAL", msg, { node: ctx.node.name });
  };
  if (total !== undefined && l2 !== undefined && rb !== undefined) {
    refuse("cache-size, l2-cache-size and refcount-cache-size may not be set at the same time");
  }
  if (total !== undefined && l2 !== undefined && l2 > total) refuse("l2-cache-size may not exceed cache-size");
  if (total !== undefined && rb !== undefined && rb > total) refuse("refcount-cache-size may not exceed cache-size");
  const slice = optSize(o, "l2-cache-entry-size", "qcow2") ?? cs;
  if (slice < 512 || slice > cs || (slice & (slice - 1)) !== 0) {
    refuse(`L2 cache entry size must be a power of two between 512 and the cluster size (${cs})`);
  }
  if (total !== undefined && l2 === undefined && rb === undefined) {
    l2 = Math.min(full, Math.floor((total * 4) / 5));
    rb = total - l2;
  } else if (total !== undefined && l2 !== undefined && rb === undefined) rb = Math.max(0, total - l2);
  else if (total !== undefined && rb !== undefined && l2 === undefined) l2 = Math.max(0, total - rb);
  l2 ??= Math.min(full, 32 << 20);
  rb ??= Math.max(Math.floor(l2 / 4), 4 * cs);
  return { l2: Math.max(2, Math.ceil(l2 / cs)), rb: Math.max(4, Math.ceil(rb / cs)) };
}

/** Reads the active L1 table and the refcount table the header points at. */
export async function readTables(node: BlockNode, file: BlockNode, h: Qcow2Header): Promise<{ l1: Uint8Array; reftable: Float64Array }> {
  const l1 = new Uint8Array(h.l1Size * 8);
  if (l1.length) await file.pread(h.l1TableOffset, l1);
  const ev = node.event("reftable_load", undefined);
  if (ev) await ev;
  const rtBytes = new Uint8Array(h.refcountTableClusters * clusterSize(h));
  await file.pread(h.refcountTableOffset, rtBytes);
  const rtView = new DataView(rtBytes.buffer);
  const reftable = new Float64Array(rtBytes.length / 8);
  for (let i = 0; i < reftable.length; i++) {
    reftable[i] = entryOffset(rtView, i * 8);
  }
  return { l1, reftable };
}

/** The `snapshot.id` / `snapshot.name` options (flat or nested), if any: open a read-only view of that snapshot. */
export function snapshotOptions(o: Record<string, unknown>): { id?: string; name?: string } | undefined {
  const nested = typeof o.snapshot === "object" && o.snapshot !== null ? o.snapshot as Record<string, unknown> : {};
  if (o.snapshot !== undefined && typeof o.snapshot !== "object") {
    throw new BlockError("EINVAL", `Invalid option 'snapshot' of driver 'qcow2': expected snapshot.id and/or snapshot.name`);
  }
  checkKnownOptions(nested, ["id", "name"], "qcow2 snapshot");
  const id = optString(o, "snapshot.id", "qcow2") ?? optString(nested, "id", "qcow2");
  const name = optString(o, "snapshot.name", "qcow2") ?? optString(nested, "name", "qcow2");
  return id === undefined && name === undefined ? undefined : { id, name };
}

/** The options of the qcow2 driver (QEMU names). */
export const QCOW2_OPTIONS: readonly string[] = [
  "l2-cache-size",
  "l2-cache-entry-size",
  "refcount-cache-size",
  "cache-size",
  "lazy-refcounts",
  "metadata-mode",
  "x-wrong-order",
  "snapshot",
  "snapshot.id",
  "snapshot.name",
  "bitmap-store",
  "compress-threads",
  ...OVERLAP_OPTIONS,
  ...ENCRYPT_OPTIONS,
];

/**
 * Opens a qcow2 image's state (QEMU's qcow2_do_open): the header checked
 * against the mode, a dirty image repaired, the children, tables, caches,
 * crypto and snapshot view set up. The persistent bitmaps (and with them
 * the autoclear bits) are opened after this, by `Qcow2Bitmaps.open`.
 */
export async function openQcow2State(ctx: OpenContext): Promise<Qcow2State> {
  checkKnownOptions(ctx.options, QCOW2_OPTIONS, "qcow2");
  const file = (await ctx.openChild("file"))!;
  const checking = ctx.check ?? false;
  let h = await readHeaderFrom(file, undefined, { check: checking });
  const rw = !ctx.readOnly;
  if (h.incompatibleFeatures & INCOMPAT_CORRUPT && rw && !checking) {
    throw new BlockError(
      "EACCES",
      "qcow2: Image is corrupt; cannot be opened read/write (open it read-only, or repair it with check -r all)",
      { node: ctx.node.name },
    );
  }
  const lazyOpt = optBool(ctx.options, "lazy-refcounts", "qcow2");
  const lazy = lazyOpt ?? (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0;
  if (lazy && h.version < 3) {
    throw new BlockError("EINVAL", "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level (compat=1.1)");
  }
  const modeOpt = optEnum(ctx.options, "metadata-mode", "qcow2", ["ordered", "metadata-sync"] as const);
  const mode: MetadataMode = lazy ? "lazy" : modeOpt ?? "ordered";
  const wrongOrder = optEnum(ctx.options, "x-wrong-order", "qcow2", ["none", "l2-before-refblock", "snapshot-l1-after-table"] as const) ??
    "none";
  if (rw && !checking && h.incompatibleFeatures & INCOMPAT_DIRTY) {
    // Refcounts may be stale (lazy refcounts and a crash): rebuild them.
    // Its lines are reported as QEMU prints them (onOpenRepair).
    const node = ctx.node.name;
    await repairImage(file, (message) => reportOpenRepair({ node, format: "qcow2", message }));
    h = await readHeaderFrom(file);
    if (h.incompatibleFeatures & INCOMPAT_DIRTY) {
      throw new BlockError("EIO", "qcow2: Could not repair the dirty image; run check -r all", { node: ctx.node.name });
    }
  }
  const backing = await openBacking(ctx, h, file);
  const data = await openDataFile(ctx, h, file);
  const { l1, reftable } = await readTables(ctx.node, file, h);
  const tables = cacheTables(ctx, h);
  const st = new Qcow2State({
    header: h,
    node: ctx.node,
    file,
    data,
    backing,
    l1,
    reftable,
    mode,
    wrongOrder: wrongOrder as WrongOrder,
    l2CacheTables: tables.l2,
    rbCacheTables: tables.rb,
    overlapChecks: parseOverlapOptions(ctx.options),
  });
  st.compressThreads = optInt(ctx.options, "compress-threads", "qcow2");
  if ((st.compressThreads ?? 0) > 64) {
    throw new BlockError("EINVAL", `Invalid value ${st.compressThreads} for qcow2 option 'compress-threads': at most 64`, {
      node: ctx.node.name,
    });
  }
  if (!checking && h.nbSnapshots) {
    // QEMU reads the snapshot table at open (qcow2_read_snapshots) and refuses one it cannot use.
    const t = await readSnapshotTableChecked(file, h, false);
    if ("error" in t) throw new BlockError("EFBIG", `${t.error}\n${t.hint}`, { node: ctx.node.name });
  }
  if (h.cryptMethod !== CRYPT_NONE) {
    st.crypto = await Qcow2Crypto.open(h, file, ctx.options, { noIo: (ctx.noIo ?? false) || checking, node: ctx.node.name });
  }
  const view = snapshotOptions(ctx.options);
  if (view) await loadSnapshotView(st, view.id, view.name);
  // Before the autoclear bits go: a valid bitmap directory is metadata to protect.
  if (rw && !checking) await initOverlapChecks(st);
  return st;
}
