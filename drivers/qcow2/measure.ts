/**
 * `qemu-img measure` for qcow2 targets: the size an image needs for given
 * data and its size fully allocated, with QEMU's formulas
 * (qcow2_calc_prealloc_size and the refcount-metadata fixed point).
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { MeasureResult } from "../../core/types.ts";
import type { MeasureInput } from "../../core/node.ts";
import { refblockCount } from "./_create_alloc.ts";
import { parseCreateOptions } from "./create.ts";
import { l2EntrySize } from "./_entries.ts";
import { MAX_L1_BYTES } from "./_header_layout.ts";

/** Layout parameters of a qcow2 image being measured. */
export interface Qcow2Layout {
  /** Cluster size in bytes. */
  clusterSize: number;
  /** Refcount entry width in bits (1..64, power of two). */
  refcountBits: number;
  /** Extended L2 entries (16 bytes each instead of 8). */
  extendedL2: boolean;
}

const roundUp = (a: number, b: number) => Math.ceil(a / b) * b;

/**
 * qemu's qcow2_refcount_metadata_size: bytes of refcount blocks and table for `clusters` clusters.
 *
 * @example
 * ```ts
 * import { refcountMetadataSize } from "./measure.ts";
 * console.log(refcountMetadataSize(16, 65536, 16)); // 131072
 * ```
 */
export function refcountMetadataSize(clusters: number, clusterSize: number, refcountBits: number): number {
  const blocks = refblockCount(clusters, clusterSize, (clusterSize * 8) / refcountBits, false);
  return (blocks + Math.ceil(blocks / (clusterSize / 8))) * clusterSize;
}

/**
 * qemu's qcow2_calc_prealloc_size: bytes of a fully allocated qcow2 image of `size`.
 *
 * @example
 * ```ts
 * import { qcow2FullSize } from "./measure.ts";
 * console.log(qcow2FullSize(1 << 20, { clusterSize: 65536, refcountBits: 16, extendedL2: false })); // 1376256
 * ```
 */
export function qcow2FullSize(size: number, l: Qcow2Layout): number {
  const cs = l.clusterSize;
  const aligned = roundUp(size, cs);
  const l2e = l2EntrySize(l.extendedL2);
  let meta = cs; // header
  const nl2e = roundUp(aligned / cs, cs / l2e);
  meta += nl2e * l2e;
  const nl1e = roundUp((nl2e * l2e) / cs, cs / 8);
  meta += nl1e * 8;
  meta += refcountMetadataSize((aligned + meta) / cs, cs, l.refcountBits);
  return meta + aligned;
}

/**
 * Measures a qcow2 image of `input.size` holding the data `input.source`
 * allocates (each cluster with data counts whole), as QEMU's qcow2_measure
 * does: only the layout options and the preallocation are parsed (a backing
 * file with preallocation is no error here), and all data counts when the
 * target has a backing file (what it shares with the source is unknown) or
 * is preallocated in full (`full`, `falloc`). A LUKS-encrypted target adds
 * its header and key material to both sizes.
 *
 * @example
 * ```ts
 * import { measureQcow2 } from "./measure.ts";
 * const r = await measureQcow2({ size: 1 << 20, options: {} });
 * console.log(r.required, r.fullyAllocated); // 327680 1376256
 * ```
 */
export async function measureQcow2(input: MeasureInput): Promise<MeasureResult> {
  const size = roundUp(input.size, 512);
  const layout: Record<string, string | number | boolean> = {};
  let backing = false;
  for (const [k, v] of Object.entries(input.options)) {
    const key = k.replaceAll("-", "_");
    if (key === "backing_file") backing = v !== "";
    else if (key !== "backing_fmt") layout[k] = v;
  }
  const o = parseCreateOptions(0, layout);
  const l: Qcow2Layout = { clusterSize: o.clusterSize, refcountBits: o.refcountBits, extendedL2: o.extendedL2 };
  const cs = l.clusterSize;
  const l2Tables = Math.ceil(roundUp(size, cs) / cs / (cs / l2EntrySize(l.extendedL2)));
  if (l2Tables * 8 > MAX_L1_BYTES) throw new BlockError("EFBIG", "The image size is too large (try using a larger cluster size)");
  let data = 0;
  const src = input.source;
  if (src && backing) {
    data = roundUp(src.length, cs);
  } else if (src) {
    const end = src.length;
    for (let off = 0; off < end;) {
      const st = await src.blockStatus(off, end - off);
      let n = st.length;
      const present = st.present ?? st.allocated;
      if (!st.zero && st.data && present) {
        n = roundUp(off + n, l.clusterSize) - off;
        data += (off % l.clusterSize) + n;
      }
      off += n;
    }
  }
  if (o.preallocation === "full" || o.preallocation === "falloc") data = roundUp(size, cs);
  // A LUKS header and its key material come first, in whole clusters (QEMU's luks_payload_size).
  const luks = o.encrypt?.format === "luks" ? roundUp(o.encrypt.headerBytes, cs) : 0;
  const full = luks + qcow2FullSize(size, l);
  const result: MeasureResult = { required: full - roundUp(size, l.clusterSize) + data, fullyAllocated: full };
  // A version 3 target can hold the source's persistent bitmaps, when the source can have them.
  if (o.version >= 3 && src?.bitmaps.persistent) result.bitmaps = await bitmapsSize(src, l.clusterSize);
  return result;
}

/** QEMU's qcow2_get_persistent_dirty_bitmap_size: data and table clusters of every persistent bitmap, plus the directory. */
async function bitmapsSize(src: MeasureInput["source"] & object, cs: number): Promise<number> {
  let bytes = 0;
  let dir = 0;
  for (const b of await src.bitmaps.list()) {
    if (!b.persistent) continue;
    const clusters = Math.ceil(Math.ceil(Math.ceil(src.length / b.granularity) / 8) / cs);
    bytes += clusters * cs + roundUp(clusters * 8, cs);
    dir += Math.ceil((24 + new TextEncoder().encode(b.name).length) / 8) * 8;
  }
  return bytes + roundUp(dir, cs);
}
