/**
 * What `qemu-img info --output=json` shows of an open qcow2 image: its
 * format-specific data (compat, refcount bits, encryption, data file, ...)
 * and the common fields the header gives.
 *
 * @module
 */

import { COMPRESSION_NAMES } from "./_compression_types.ts";
import { AUTOCLEAR_DATA_FILE_RAW, clusterSize, COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, INCOMPAT_EXTL2 } from "./header.ts";
import type { Qcow2State } from "./_state.ts";

/** Format-specific information shaped like `qemu-img info --output=json`; `bitmaps` (the persistent ones, if any) in QEMU's place. */
export function qcow2Info(st: Qcow2State, bitmaps: readonly unknown[] = []): Record<string, unknown> {
  const h = st.header;
  const data: Record<string, unknown> = {
    compat: h.version === 3 ? "1.1" : "0.10",
    "compression-type": COMPRESSION_NAMES[h.compressionType],
  };
  if (h.version === 3) data["lazy-refcounts"] = (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0;
  if (bitmaps.length) data.bitmaps = bitmaps;
  data["refcount-bits"] = 2 ** h.refcountOrder;
  if (st.crypto) data.encrypt = st.crypto.info();
  if (h.dataFile !== undefined) {
    data["data-file"] = h.dataFile;
    data["data-file-raw"] = (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0;
  }
  if (h.version === 3) {
    data.corrupt = (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0;
    data["extended-l2"] = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0;
  }
  const out: Record<string, unknown> = {
    "format-specific": { type: "qcow2", data },
    "cluster-size": clusterSize(h),
    "virtual-size": st.size,
    "dirty-flag": (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0,
  };
  if (h.backingFile !== undefined) out["backing-filename"] = h.backingFile;
  if (h.backingFormat !== undefined) out["backing-filename-format"] = h.backingFormat;
  if (st.crypto) out.encrypted = true;
  return out;
}
