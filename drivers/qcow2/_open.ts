/**
 * Opening a qcow2 node, the parts around the header: the backing and data
 * file children (names relative to the image), cache sizing from the
 * options, the active L1 and refcount tables, and the snapshot view
 * options. Private to `qcow2.ts`.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode, OpenContext } from "../../core/node.ts";
import { checkKnownOptions, optSize, optString } from "../../core/options.ts";
import { entryOffset } from "./_entries.ts";
import { clusterSize, INCOMPAT_DATA_FILE, l2EntryBytes, type Qcow2Header } from "./header.ts";

function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

/** The host filename under a node (through filters such as a recorder), if any. */
function filenameOf(node: BlockNode): string | undefined {
  for (let n: BlockNode | undefined = node; n; n = n.primaryChild) {
    if (typeof n.options.filename === "string") return n.options.filename;
  }
  return undefined;
}

function resolvePath(base: string | undefined, name: string): string {
  if (name.startsWith("/") || base === undefined || /^[a-z][a-z0-9+.-]*:/i.test(name)) return name;
  return `${dirOf(base)}/${name}`;
}

export function cacheTables(ctx: OpenContext, h: Qcow2Header): { l2: number; rb: number } {
  const o = ctx.options;
  const cs = clusterSize(h);
  const entryBytes = l2EntryBytes(h);
  const full = Math.ceil(h.size / cs) * entryBytes;
  const total = optSize(o, "cache-size", "qcow2");
  let l2 = optSize(o, "l2-cache-size", "qcow2");
  let rb = optSize(o, "refcount-cache-size", "qcow2");
  if (total !== undefined && l2 === undefined && rb === undefined) {
    l2 = Math.min(full, Math.floor((total * 4) / 5));
    rb = total - l2;
  } else if (total !== undefined && l2 !== undefined && rb === undefined) rb = Math.max(0, total - l2);
  else if (total !== undefined && rb !== undefined && l2 === undefined) l2 = Math.max(0, total - rb);
  l2 ??= Math.min(full, 32 << 20);
  rb ??= Math.max(Math.floor(l2 / 4), 4 * cs);
  return { l2: Math.max(2, Math.ceil(l2 / cs)), rb: Math.max(4, Math.ceil(rb / cs)) };
}

export async function openBacking(ctx: OpenContext, h: Qcow2Header, file: BlockNode): Promise<BlockNode | undefined> {
  const given = ctx.childSpec?.("backing");
  if (given === null) return undefined;
  if (given !== undefined) return await ctx.openChild("backing", undefined, { readOnly: true });
  if (h.backingFile === undefined) return undefined;
  const filename = resolvePath(filenameOf(file), h.backingFile);
  const spec = h.backingFormat ? { driver: h.backingFormat, file: { driver: "file", filename } } : { filename };
  try {
    return await ctx.openChild("backing", spec, { readOnly: true, probe: true });
  } catch (e) {
    if (!(e instanceof BlockError)) throw e;
    throw new BlockError(e.code, `Could not open backing file '${h.backingFile}': ${e.message}`, { node: ctx.node.name, cause: e });
  }
}

export async function openDataFile(ctx: OpenContext, h: Qcow2Header, file: BlockNode): Promise<BlockNode> {
  const given = ctx.childSpec?.("data-file");
  if (!(h.incompatibleFeatures & INCOMPAT_DATA_FILE)) {
    if (given !== undefined && given !== null) {
      throw new BlockError("EINVAL", "Invalid option 'data-file' of driver 'qcow2': the image does not use an external data file");
    }
    return file;
  }
  if (given !== undefined && given !== null) return (await ctx.openChild("data-file"))!;
  if (h.dataFile === undefined) {
    throw new BlockError("EINVAL", "Could not open data file: the image needs an external data file but names none; give 'data-file'");
  }
  const filename = resolvePath(filenameOf(file), h.dataFile);
  return (await ctx.openChild("data-file", { driver: "file", filename }))!;
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
