/**
 * qemu-img amend for qcow2 (QEMU's qcow2_amend_options): every option
 * qemu-img 7.2 accepts — `compat` (upgrade to 1.1, downgrade to 0.10 in
 * `_downgrade.ts`), `refcount_bits` (new refcount structures,
 * `_refcount_order.ts`), `size` (grow or shrink), `lazy_refcounts`,
 * `data_file` (rename), `data_file_raw` (clear only), `backing_file` /
 * `backing_fmt` (only their current values) and the `encrypt.*` key slot
 * options of a luks-encrypted image — checked in QEMU's order with its
 * messages; creation-only options are refused as qemu-img does. `force`
 * only matters for the key slots, as in QEMU.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { parseSize } from "../../core/options.ts";
import type { AmendOptions, FormatOptions } from "../../core/types.ts";
import { AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, INCOMPAT_DIRTY } from "./header.ts";
import { downgrade } from "./_downgrade.ts";
import { changeRefcountOrder } from "./_refcount_order.ts";
import { resize } from "./_resize.ts";
import { readSnapshotTable, writeSnapshotTable } from "./_snapshot.ts";
import type { Qcow2State } from "./_state.ts";
import { markClean, rewriteHeader } from "./_writeback.ts";
import { amendLuks } from "../_crypto/amend.ts";
import { QCOW2_AMEND_NAMES, QCOW2_CREATION_ONLY_NAMES } from "./_image_options.ts";

function fail(st: Qcow2State, message: string, code: "EINVAL" | "ENOTSUP" = "EINVAL"): never {
  throw new BlockError(code, message, { node: st.node.name });
}

function bool(st: Qcow2State, key: string, v: string): boolean {
  if (v === "on" || v === "true") return true;
  if (v === "off" || v === "false") return false;
  fail(st, `Parameter '${key}' expects 'on' or 'off'`);
}

/** What the options ask for, validated as QEMU validates them (in its option order). */
interface Plan {
  version: 2 | 3;
  size?: number;
  backingFile?: string;
  backingFormat?: string;
  backingGiven: boolean;
  dataFile?: string;
  dataFileRaw: boolean;
  lazy: boolean;
  refcountBits: number;
  /** `encrypt.*` key slot options, without the prefix. */
  luks: Record<string, unknown>;
}

function plan(st: Qcow2State, options: FormatOptions): Plan {
  const h = st.header;
  const given = new Map<string, string>();
  const p0: Record<string, unknown> = {};
  for (const [k0, v] of Object.entries(options)) {
    const k = k0.startsWith("encrypt.") ? k0 : k0.replaceAll("-", "_");
    if (!QCOW2_AMEND_NAMES.includes(k)) {
      fail(
        st,
        QCOW2_CREATION_ONLY_NAMES.includes(k)
          ? `Invalid parameter '${k0}'\nThis option is only supported for image creation`
          : `Invalid parameter '${k0}'`,
      );
    }
    given.set(k, String(v));
    if (k.startsWith("encrypt.")) p0[k.slice("encrypt.".length)] = v;
  }
  const p: Plan = {
    version: h.version,
    backingGiven: false,
    dataFileRaw: (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0,
    lazy: (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0,
    refcountBits: st.refBits,
    luks: p0,
  };
  // Value syntax first (qemu_opts_do_parse), then meaning (qcow2_amend_options), each in option order.
  for (const k of QCOW2_AMEND_NAMES) {
    const v = given.get(k);
    if (v === undefined) continue;
    if (k === "size" && parseSize(v) === undefined) {
      fail(
        st,
        "Parameter 'size' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.",
      );
    }
    if ((k === "lazy_refcounts" || k === "data_file_raw") && v !== "on" && v !== "off" && v !== "true" && v !== "false") {
      fail(st, `Parameter '${k}' expects 'on' or 'off'`);
    }
    if (k === "refcount_bits" && !/^\d+$/.test(v)) fail(st, "Parameter 'refcount_bits' expects a number");
  }
  for (const k of QCOW2_AMEND_NAMES) {
    const v = given.get(k);
    if (v === undefined) continue;
    if (k.startsWith("encrypt.")) {
      if (!st.crypto) fail(st, "Can't amend encryption options - encryption not present");
      if (!st.crypto.volume) fail(st, "Only LUKS encryption options can be amended", "ENOTSUP");
    } else if (k === "compat") {
      if (v === "0.10" || v === "v2") p.version = 2;
      else if (v === "1.1" || v === "v3") p.version = 3;
      else fail(st, `Unknown compatibility level ${v}`);
    } else if (k === "size") {
      const n = parseSize(v)!;
      if (n) p.size = n;
    } else if (k === "backing_file") {
      p.backingGiven = true;
      p.backingFile = v;
    } else if (k === "backing_fmt") {
      p.backingGiven = true;
      p.backingFormat = v;
    } else if (k === "lazy_refcounts") p.lazy = bool(st, k, v);
    else if (k === "refcount_bits") {
      const n = Number(v);
      if (n <= 0 || n > 64 || (n & (n - 1)) !== 0) fail(st, "Refcount width must be a power of two and may not exceed 64 bits");
      p.refcountBits = n;
    } else if (k === "data_file") {
      if (!st.externalData) fail(st, "data-file can only be set for images that use an external data file");
      p.dataFile = v;
    } else if (k === "data_file_raw") {
      p.dataFileRaw = bool(st, k, v);
      if (p.dataFileRaw && !(h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW)) fail(st, "data-file-raw cannot be set on existing images");
    }
  }
  return p;
}

/** qemu-img amend on an open qcow2 image (lock held by the caller's `change`). */
export async function amendLocked(st: Qcow2State, options: FormatOptions, opts: AmendOptions): Promise<void> {
  const p = plan(st, options);
  const h = st.header;
  const oldVersion = h.version;
  // QEMU counts the version change, the refcount width change and an encryption update as the operations of an amend.
  const operations = Number(p.version !== oldVersion) + Number(p.refcountBits !== st.refBits) +
    Number(Object.keys(p.luks).length > 0 && st.crypto?.volume !== undefined);
  const progress = amendProgress(operations, opts.progress);
  // Upgrade first: some features need compat=1.1.
  if (p.version > oldVersion) {
    // v3 needs the 64-bit VM state size and the disk size in every snapshot's extra data.
    const entries = await readSnapshotTable(st);
    if (entries.some((e) => e.extra.length < 16)) await writeSnapshotTable(st, entries, undefined);
    await rewriteHeader(st, (n) => {
      n.version = 3;
      n.headerLength = 112;
    });
  }
  if (p.refcountBits !== st.refBits) {
    if (p.version < 3 && p.refcountBits !== 16) {
      fail(st, "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)");
    }
    await changeRefcountOrder(st, Math.log2(p.refcountBits), undefined, progress("refcount"));
  }
  // data-file-raw blocks backing files, so it is cleared first; then the header is written as it is now.
  await rewriteHeader(st, (n) => {
    n.autoclearFeatures = p.dataFileRaw ? n.autoclearFeatures | AUTOCLEAR_DATA_FILE_RAW : n.autoclearFeatures & ~AUTOCLEAR_DATA_FILE_RAW;
    if (p.dataFile !== undefined) n.dataFile = p.dataFile === "" ? undefined : p.dataFile;
  });
  if (p.backingGiven && (p.backingFile !== st.header.backingFile || p.backingFormat !== st.header.backingFormat)) {
    fail(st, "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.");
  }
  const volume = st.crypto?.volume;
  if (Object.keys(p.luks).length && volume) {
    await amendLuks(volume, p.luks, { unlockSecret: st.crypto!.secretId, force: opts.force, prefix: "encrypt." });
  }
  const lazyNow = (st.header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0;
  if (p.lazy !== lazyNow) {
    if (p.lazy) {
      if (p.version < 3) fail(st, "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
      await rewriteHeader(st, (n) => void (n.compatibleFeatures |= COMPAT_LAZY_REFCOUNTS));
      st.mode = "lazy";
    } else {
      // QEMU's qcow2_mark_clean: refcounts written and the dirty bit cleared before the feature goes.
      await markClean(st, undefined);
      if (st.header.incompatibleFeatures & INCOMPAT_DIRTY) fail(st, "Failed to make the image clean", "ENOTSUP");
      await rewriteHeader(st, (n) => void (n.compatibleFeatures &= ~COMPAT_LAZY_REFCOUNTS));
      st.mode = "ordered";
    }
  }
  if (p.size !== undefined && p.size !== st.header.size) await resize(st, p.size, {});
  // Downgrade last, so unsupported features are gone first.
  if (p.version < oldVersion) await downgrade(st);
}

/**
 * QEMU's qcow2_amend_helper_cb: each operation of an amend reports its own
 * (offset, work size); the caller sees one progress over all of them, the
 * operations not started yet projected at the average size of those begun.
 * Returns a reporter maker: `progress(name)(offset, size)`.
 */
function amendProgress(
  total: number,
  report: ((done: number, total: number) => void) | undefined,
): (op: string) => (offset: number, size: number) => void {
  let last: string | undefined;
  let lastSize = 0;
  let completedOffset = 0;
  let completed = 0;
  return (op) => (offset, size) => {
    if (!report) return;
    if (op !== last) {
      if (last !== undefined) {
        completedOffset += lastSize;
        completed++;
      }
      last = op;
    }
    lastSize = size;
    const current = completedOffset + size;
    const projected = Math.trunc((current * Math.max(0, total - completed - 1)) / (completed + 1));
    report(completedOffset + offset, current + projected);
  };
}
