/**
 * Structure-aware mutations of qcow2 images for the fuzzer: header fields
 * and feature bits, header extensions, the backing file name, L1 and L2
 * entries (standard, zero, compressed descriptors, subcluster bitmaps),
 * refcount table entries and refcount block entries of every width, the
 * snapshot table, the bitmap directory and bitmap tables, compressed data
 * (including decompression bombs), raw byte flips, truncation. Each
 * mutation is a list of byte patches (so a case is a seed plus patches,
 * replayable anywhere) with a label saying what it did.
 *
 * @module
 */

import { deflateRawSync, zstdCompressSync } from "node:zlib";
import { type Layout, layoutOf, type Region } from "./_layout.ts";
import { applyInPlace, be, HI, type Mutation, patch, type Rng } from "./_patch.ts";

export { applyMutations, bytesOf, type Mutation, Rng } from "./_patch.ts";

/** The fixed header fields (qcow2.txt): offset, width, name. */
const HEADER_FIELDS: readonly [number, number, string][] = [
  [4, 4, "version"],
  [8, 8, "backing_file_offset"],
  [16, 4, "backing_file_size"],
  [20, 4, "cluster_bits"],
  [24, 8, "size"],
  [32, 4, "crypt_method"],
  [36, 4, "l1_size"],
  [40, 8, "l1_table_offset"],
  [48, 8, "refcount_table_offset"],
  [56, 4, "refcount_table_clusters"],
  [60, 4, "nb_snapshots"],
  [64, 8, "snapshots_offset"],
  [72, 8, "incompatible_features"],
  [80, 8, "compatible_features"],
  [88, 8, "autoclear_features"],
  [96, 4, "refcount_order"],
  [100, 4, "header_length"],
  [104, 1, "compression_type"],
];

function read(img: Uint8Array, at: number, size: number): bigint {
  let v = 0n;
  for (let i = 0; i < size; i++) v = (v << 8n) | BigInt(img[at + i] ?? 0);
  return v;
}

/** Offsets a table entry may be pointed at: metadata, data, the file's end, misaligned and huge values. */
function interestingOffset(r: Rng, l: Layout): bigint {
  const cs = BigInt(l.cs);
  const regions = l.regions;
  switch (r.int(12)) {
    case 0:
      return 0n;
    case 1:
    case 2:
    case 3: {
      // Some metadata structure (overlaps).
      const g = regions.length ? r.pick(regions) : { offset: 0, length: l.cs };
      return BigInt(Math.floor(g.offset / l.cs) * l.cs);
    }
    case 4:
      return BigInt(Math.floor(l.fileLength / l.cs)) * cs;
    case 5:
      return BigInt(Math.ceil(l.fileLength / l.cs) + r.int(4)) * cs;
    case 6:
      return BigInt(r.int(Math.max(1, Math.ceil(l.fileLength / l.cs)))) * cs + BigInt(r.pick([512, 1, l.cs / 2, l.cs - 512]));
    case 7:
      return r.pick([1n << 31n, 1n << 32n, 1n << 40n, (1n << 53n) - cs, 1n << 53n, 1n << 55n, (1n << 56n) - cs]);
    case 8:
      return r.pick([1n << 62n, 1n << 63n, (1n << 64n) - 1n, (1n << 63n) - cs]);
    default:
      return BigInt(r.int(Math.max(1, Math.ceil(l.fileLength / l.cs)))) * cs;
  }
}

function entryMutation(r: Rng, l: Layout, region: Region, entryBytes: number, kind: string): Mutation {
  const n = Math.max(1, Math.floor(region.length / entryBytes));
  const idx = r.int(n);
  const at = region.offset + idx * entryBytes;
  let value: bigint;
  let label: string;
  const flags = r.pick([0n, 1n << 63n, 1n << 63n, 1n << 62n, 1n, (1n << 63n) | 1n, 0x7f00000000000000n, 0x1fen]);
  switch (r.int(6)) {
    case 0:
      value = 0n;
      label = "0";
      break;
    case 1: {
      // A compressed descriptor (L2 only meaningful): host offset and sector count.
      const x = 62n - BigInt(l.clusterBits - 8);
      const host = interestingOffset(r, l) + BigInt(r.pick([0, 0, 1, 300, 511]));
      const sectors = BigInt(r.pick([0, 1, 2, r.int(1 << Math.min(20, l.clusterBits - 8)), (1 << (l.clusterBits - 8)) - 1]));
      value = (1n << 62n) | (sectors << x) | (host & ((1n << x) - 1n));
      label = `compressed descriptor host=0x${(host & ((1n << x) - 1n)).toString(16)} sectors=${sectors + 1n}`;
      break;
    }
    case 2: {
      // Flip one bit of the current entry (resolved against the image).
      const bit = r.int(entryBytes * 8);
      const byteAt = at + entryBytes - 1 - Math.floor(bit / 8);
      return { label: `${kind}[${idx}] @0x${at.toString(16)} flip bit ${bit}`, patches: [{ at: byteAt, hex: `flip:${bit % 8}` }] };
    }
    default: {
      const off = interestingOffset(r, l);
      value = flags | off;
      label = `0x${value.toString(16)}`;
    }
  }
  const patches = [patch(at, be(value, 8))];
  if (entryBytes === 16 && r.chance(0.5)) {
    const bitmaps = r.pick([0n, 0xffffffffn, 0xffffffff00000000n, 0xffffffffffffffffn, BigInt(r.int(HI)) * 0x100000001n]);
    patches.push(patch(at + 8, be(bitmaps, 8)));
    label += ` bitmaps=0x${bitmaps.toString(16)}`;
  }
  return { label: `${kind}[${idx}] @0x${at.toString(16)} := ${label}`, patches };
}

function refcountPatch(l: Layout, block: Region, index: number, value: number, img: Uint8Array): { at: number; hex: string } {
  const bits = l.refcountBits;
  if (bits >= 8) {
    const bytes = bits / 8;
    return patch(block.offset + index * bytes, be(BigInt(value), bytes));
  }
  const perByte = 8 / bits;
  const at = block.offset + Math.floor(index / perByte);
  const shift = bits * (index % perByte);
  const mask = ((1 << bits) - 1) << shift;
  const b = ((img[at] ?? 0) & ~mask) | ((value << shift) & mask);
  return patch(at, new Uint8Array([b]));
}

let zstdBomb: Uint8Array | undefined;
let deflateBomb: Uint8Array | undefined;

/** A zstd frame of a few bytes that decodes to 64 MiB, and a deflate stream that decodes to 16 MiB. */
function bombs(): { zstd: Uint8Array; deflate: Uint8Array } {
  zstdBomb ??= new Uint8Array(zstdCompressSync(new Uint8Array(64 << 20)));
  deflateBomb ??= new Uint8Array(deflateRawSync(new Uint8Array(16 << 20), { windowBits: 12 }));
  return { zstd: zstdBomb, deflate: deflateBomb };
}

const EXT_TYPES = [0, 0xe2792aca, 0x6803f857, 0x23852875, 0x0537be77, 0x44415441, 0x12345678];
const NAMES = ["", "img.qcow2", ".", "/", "base.qcow2", "nonexistent.qcow2", "json:{}", "../img.qcow2", "./img.qcow2", "data.raw"];

/** One random mutation of `img` (whose layout is `l`). */
export function mutateOnce(r: Rng, img: Uint8Array, l: Layout): Mutation {
  const pickRegion = (kinds: string[]) => {
    const c = l.regions.filter((g) => kinds.includes(g.kind));
    return c.length ? r.pick(c) : undefined;
  };
  // Weights: most mutations hit tables (so most images still open and the
  // read, write and check paths run); a few hit the header.
  const WEIGHTS = [2, 0, 0, 1, 1, 1, 6, 0, 0, 2, 1, 3, 0, 2, 2, 1, 2, 1, 1, 1];
  const total = WEIGHTS.reduce((a, b) => a + b, 0);
  for (let tries = 0; tries < 20; tries++) {
    let roll = r.int(total);
    let what = 0;
    while (roll >= WEIGHTS[what]) roll -= WEIGHTS[what++];
    switch (what) {
      case 0:
      case 1:
      case 2: {
        const [at, size, name] = r.pick(HEADER_FIELDS);
        if (at + size > l.headerLength && at > 72) continue;
        const cur = read(img, at, size);
        const max = (1n << BigInt(size * 8)) - 1n;
        const v = r.pick([
          0n,
          1n,
          cur + 1n,
          cur - 1n,
          cur + BigInt(l.cs),
          cur * 2n,
          cur ^ (1n << BigInt(r.int(size * 8))),
          max,
          max >> 1n,
          BigInt(r.int(64)),
          BigInt(r.int(HI)),
          interestingOffset(r, l),
          BigInt(l.fileLength),
          1n << 53n,
          (1n << 53n) + 1n,
        ]) & max;
        return { label: `header ${name} := 0x${v.toString(16)}`, patches: [patch(at, be(v, size))] };
      }
      case 3: {
        if (l.version < 3) continue;
        const [at, name] = r.pick([[72, "incompatible"], [80, "compatible"], [88, "autoclear"]] as const);
        const bit = r.chance(0.7) ? r.int(6) : r.int(64);
        const cur = read(img, at, 8);
        const v = cur ^ (1n << BigInt(bit));
        return { label: `header ${name} feature bit ${bit} flipped`, patches: [patch(at, be(v, 8))] };
      }
      case 4: {
        if (!l.extensions.length) continue;
        const e = r.pick(l.extensions);
        switch (r.int(3)) {
          case 0:
            return {
              label: `extension @${e.offset} type := 0x${r.pick(EXT_TYPES).toString(16)}`,
              patches: [patch(e.offset, be(BigInt(r.pick(EXT_TYPES)), 4))],
            };
          case 1: {
            const len = r.pick([0, e.length + 1, e.length - 1, e.length + 8, 0xffffffff, l.cs, r.int(4096)]) >>> 0;
            return { label: `extension 0x${e.type.toString(16)} length := ${len}`, patches: [patch(e.offset + 4, be(BigInt(len), 4))] };
          }
          default: {
            const at = e.offset + 8 + r.int(Math.max(1, Math.min(e.length, l.cs)));
            return {
              label: `extension 0x${e.type.toString(16)} byte @${at} := random`,
              patches: [patch(at, new Uint8Array([r.int(256)]))],
            };
          }
        }
      }
      case 5: {
        // A new backing file name somewhere after the extensions.
        const name = new TextEncoder().encode(r.pick(NAMES));
        const at = Math.min(l.cs, img.length) - 64 - r.int(64);
        if (at < l.headerLength + 16) continue;
        return {
          label: `backing file name := '${new TextDecoder().decode(name)}'`,
          patches: [patch(at, name), patch(8, be(BigInt(at), 8)), patch(16, be(BigInt(name.length), 4))],
        };
      }
      case 6:
      case 7:
      case 8: {
        const g = pickRegion(["l2", "snapshot-l2"]);
        if (!g) continue;
        return entryMutation(r, l, g, l.l2EntryBytes, g.kind);
      }
      case 9: {
        const g = pickRegion(["l1", "snapshot-l1"]);
        if (!g) continue;
        return entryMutation(r, l, g, 8, g.kind);
      }
      case 10: {
        const g = pickRegion(["refcount-table"]);
        if (!g) continue;
        const m = entryMutation(r, l, { ...g, length: Math.min(g.length, 64) }, 8, "reftable");
        return m;
      }
      case 11:
      case 12: {
        const g = pickRegion(["refcount-block"]);
        if (!g) continue;
        const per = (l.cs * 8) / l.refcountBits;
        // Prefer the clusters of metadata and data that exist.
        const used = Math.ceil(l.fileLength / l.cs);
        const target = r.chance(0.6) && l.regions.length
          ? Math.floor(r.pick(l.regions).offset / l.cs) % per
          : r.int(Math.min(per, used + 4));
        const max = l.refcountBits >= 32 ? 0xffffffff : (1 << l.refcountBits) - 1;
        const v = r.pick([0, 0, 1, 2, max, r.int(max + 1)]);
        return { label: `refcount of cluster ${target} := ${v}`, patches: [refcountPatch(l, g, target, v, img)] };
      }
      case 13: {
        const g = pickRegion(["snapshot-table"]);
        if (!g) continue;
        const fields: [number, number, string][] = [
          [0, 8, "l1_table_offset"],
          [8, 4, "l1_size"],
          [12, 2, "id_str_size"],
          [14, 2, "name_size"],
          [
            32,
            4,
            "vm_state_size",
          ],
          [36, 4, "extra_data_size"],
          [40, 8, "vm_state_size_large"],
          [48, 8, "disk_size"],
        ];
        const [off, size, name] = r.pick(fields);
        const max = (1n << BigInt(size * 8)) - 1n;
        const v = r.pick([0n, 1n, 7n, max, max >> 1n, interestingOffset(r, l) & max, BigInt(r.int(1 << 16)), 1n << 53n & max]);
        return { label: `snapshot 0 ${name} := 0x${v.toString(16)}`, patches: [patch(g.offset + off, be(v, size))] };
      }
      case 14: {
        const g = pickRegion(["bitmap-directory", "bitmap-table"]);
        if (!g) continue;
        if (g.kind === "bitmap-table") return entryMutation(r, l, g, 8, "bitmap-table");
        const fields: [number, number, string][] = [
          [0, 8, "bitmap_table_offset"],
          [8, 4, "bitmap_table_size"],
          [12, 4, "flags"],
          [16, 1, "type"],
          [
            17,
            1,
            "granularity_bits",
          ],
          [18, 2, "name_size"],
          [20, 4, "extra_data_size"],
        ];
        const [off, size, name] = r.pick(fields);
        const max = (1n << BigInt(size * 8)) - 1n;
        const v = r.pick([0n, 1n, 2n, 3n, 0xffn & max, max, max >> 1n, interestingOffset(r, l) & max, BigInt(r.int(64))]);
        return { label: `bitmap 0 ${name} := 0x${v.toString(16)}`, patches: [patch(g.offset + off, be(v, size))] };
      }
      case 15: {
        const ext = l.extensions.find((e) => e.type === 0x23852875);
        if (!ext) continue;
        const fields: [number, number, string][] = [[0, 4, "nb_bitmaps"], [4, 4, "reserved"], [8, 8, "bitmap_directory_size"], [
          16,
          8,
          "bitmap_directory_offset",
        ]];
        const [off, size, name] = r.pick(fields);
        const max = (1n << BigInt(size * 8)) - 1n;
        const v = r.pick([0n, 1n, 2n, 65n, max, 1n << 53n & max, interestingOffset(r, l) & max, BigInt(r.int(1 << 20))]);
        return { label: `bitmaps extension ${name} := 0x${v.toString(16)}`, patches: [patch(ext.offset + 8 + off, be(v, size))] };
      }
      case 16: {
        const g = pickRegion(["compressed"]);
        if (!g) continue;
        if (r.chance(0.3)) {
          // A decompression bomb in place of the cluster's data.
          const zstd = img[g.offset] === 0x28 && img[g.offset + 1] === 0xb5;
          const b = zstd ? bombs().zstd : bombs().deflate;
          const data = b.subarray(0, Math.min(b.length, Math.max(g.length, 512)));
          return {
            label: `compressed @0x${g.offset.toString(16)} := ${zstd ? "zstd" : "deflate"} bomb (${data.length} bytes)`,
            patches: [patch(g.offset, data)],
          };
        }
        const n = 1 + r.int(4);
        const patches = [];
        for (let i = 0; i < n; i++) patches.push(patch(g.offset + r.int(g.length), new Uint8Array([r.int(256)])));
        return { label: `compressed @0x${g.offset.toString(16)} ${n} random bytes`, patches };
      }
      case 17: {
        // Random bytes in some structure (or the header).
        const g = l.regions.length && r.chance(0.8) ? r.pick(l.regions) : { kind: "header", offset: 0, length: Math.min(l.cs, 512) };
        const n = 1 + r.int(8);
        const patches = [];
        for (let i = 0; i < n; i++) patches.push(patch(g.offset + r.int(Math.max(1, g.length)), new Uint8Array([r.int(256)])));
        return { label: `${g.kind} @0x${g.offset.toString(16)} ${n} random bytes`, patches };
      }
      case 18: {
        // Truncate inside some structure, or extend the file.
        if (r.chance(0.7)) {
          const g = l.regions.length ? r.pick(l.regions) : { offset: l.cs, length: l.cs, kind: "?" };
          const len = Math.max(0, g.offset + r.int(g.length + 1));
          return { label: `truncate to ${len} (inside ${g.kind})`, patches: [], length: len };
        }
        const len = l.fileLength + r.pick([1, 512, l.cs, 3 * l.cs + 7]);
        return { label: `extend to ${len}`, patches: [], length: len };
      }
      default: {
        // Zero a whole metadata cluster.
        if (!l.regions.length) continue;
        const g = r.pick(l.regions);
        const start = Math.floor(g.offset / l.cs) * l.cs;
        return {
          label: `zero cluster @0x${start.toString(16)} (${g.kind})`,
          patches: [patch(start, new Uint8Array(Math.min(l.cs, 65536)))],
        };
      }
    }
  }
  return { label: "header byte 5 random", patches: [patch(5, new Uint8Array([r.int(256)]))] };
}

/** Resolves `flip:N` patches against the image (bit flips of the current byte). */
function resolve(img: Uint8Array, m: Mutation): Mutation {
  return {
    ...m,
    patches: m.patches.map((p) => {
      if (!p.hex.startsWith("flip:")) return p;
      const bit = Number(p.hex.slice(5));
      return patch(p.at, new Uint8Array([(img[p.at] ?? 0) ^ (1 << bit)]));
    }),
  };
}

/** 1–8 mutations of `seed`, each aimed at the layout as the previous ones left it. */
export function mutate(r: Rng, seed: Uint8Array): { image: Uint8Array; mutations: Mutation[] } {
  const n = 1 + r.int(8);
  let img: Uint8Array = seed.slice();
  const out: Mutation[] = [];
  for (let i = 0; i < n; i++) {
    const l = layoutOf(img);
    const raw = resolve(img, mutateOnce(r, img, l));
    // A patch aimed by an already mutated length field may land far out: keep the file near its size.
    const m = { ...raw, patches: raw.patches.filter((p) => p.at <= img.length + l.cs) };
    out.push(m);
    img = applyInPlace(img, [m]);
  }
  return { image: img, mutations: out };
}
