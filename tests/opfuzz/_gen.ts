/**
 * Case generation for the operation fuzzer: a seeded random qcow2 image (cluster size, extended L2, compat, refcount width, lazy
 * refcounts, compression type, creation preallocation, a backing file) and a random sequence of steps run on it by qemu-io and
 * qemu-img commands (writes, zero writes, compressed writes, discards, truncates, resizes with and without preallocation, internal
 * snapshots, commit, amend). A case is plain data (JSON) so a finding can be saved and replayed.
 *
 * @module
 */

/** How the two images are first made. */
export interface CaseImage {
  /** Virtual size in bytes (not always a cluster multiple). */
  size: number;
  /** `qemu-img create -o` options, `key=value` each. */
  options: string[];
  /** Cluster size in bytes (also inside options). */
  clusterSize: number;
  /** Backing file: its format, its size and the qemu-io writes that fill it; absent for none. */
  backing?: { format: "qcow2" | "raw"; size: number; writes: string[] };
}

/** One step: a qemu-io session (its commands) or one qemu-img command (its arguments, `IMG` for the image). */
export type Step =
  | { kind: "io"; commands: string[] }
  | { kind: "img"; args: string[] };

/** A whole case. */
export interface OpCase {
  /** The seed it came from (for the record). */
  seed: number;
  /** The image. */
  image: CaseImage;
  /** The steps, in order. */
  steps: Step[];
}

/** A small seeded PRNG (mulberry32): the same seed gives the same case on every machine. */
export class Rng {
  #s: number;
  /** Starts from a seed. */
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** A float in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  /** One of the items. */
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)];
  }
  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }
}

const KIB = 1024;
const MIB = 1024 * KIB;

function imageOf(r: Rng): CaseImage {
  const v2 = r.chance(0.15);
  const extl2 = !v2 && r.chance(0.4);
  const clusterSize = extl2
    ? r.pick([16 * KIB, 32 * KIB, 64 * KIB, 64 * KIB, 128 * KIB, 2 * MIB])
    : r.pick([512, 4 * KIB, 64 * KIB, 64 * KIB, 2 * MIB]);
  const clusters = r.int(2, clusterSize >= 2 * MIB ? 6 : 48);
  let size = clusters * clusterSize;
  if (r.chance(0.5)) size -= r.pick([512, 512 * r.int(1, 8), clusterSize / 2, clusterSize - 512].filter((d) => d > 0 && d < clusterSize));
  size = Math.min(size, 16 * MIB);
  const options = [`cluster_size=${clusterSize}`, `compat=${v2 ? "0.10" : "1.1"}`];
  if (extl2) options.push("extended_l2=on");
  if (r.chance(0.3)) options.push(`refcount_bits=${r.pick(v2 ? [16] : [1, 2, 8, 32, 64])}`);
  if (!v2 && r.chance(0.2)) options.push("lazy_refcounts=on");
  if (!v2 && r.chance(0.2)) options.push("compression_type=zstd");
  let backing: CaseImage["backing"];
  if (r.chance(0.35)) {
    const bsize = r.pick([size, size, Math.max(512, Math.floor(size / 2 / 512) * 512), size + clusterSize]);
    const writes: string[] = [];
    for (let i = r.int(1, 4); i > 0; i--) writes.push(writeCommand(r, bsize, clusterSize, 0x40 + i, false));
    backing = { format: r.pick(["qcow2", "raw"] as const), size: bsize, writes };
  } else if (r.chance(0.15)) {
    options.push(`preallocation=${r.pick(["metadata", "falloc", "full"])}`);
  }
  return { size, options, clusterSize, backing };
}

/** A range inside [0, size): offset and length at one of several granularities. */
function range(r: Rng, size: number, cluster: number): [number, number] {
  const g = r.pick([1, 512, 4 * KIB, Math.max(512, cluster / 32), cluster, cluster].filter((x) => x <= size));
  const slots = Math.max(1, Math.floor(size / g));
  const off = r.int(0, slots - 1) * g + (g === 1 ? 0 : r.chance(0.1) ? r.int(1, 511) : 0);
  const len = Math.max(1, Math.min(size - off, g * r.int(1, r.chance(0.2) ? 40 : 4) + (r.chance(0.1) ? r.int(1, 511) : 0)));
  return [Math.min(off, size - 1), len];
}

function writeCommand(r: Rng, size: number, cluster: number, pat: number, fancy: boolean): string {
  const [off, len] = range(r, size, cluster);
  const kind = fancy ? r.int(0, 9) : 0;
  if (kind === 6 || kind === 7) return `write -z${kind === 7 ? " -u" : ""} ${off} ${len}`;
  if (kind === 8) {
    const c = r.int(0, Math.max(0, Math.ceil(size / cluster) - 1)) * cluster;
    return `write -c -P ${pat} ${c} ${Math.min(cluster * r.int(1, 2), size - c)}`;
  }
  if (kind === 9) return `discard ${off} ${len}`;
  return `write -P ${pat} ${off} ${len}`;
}

/** The steps of a case; `size` follows resizes so later ranges stay mostly inside the image. */
function stepsOf(r: Rng, image: CaseImage): Step[] {
  const steps: Step[] = [];
  let size = image.size;
  const cluster = image.clusterSize;
  const v2 = image.options.includes("compat=0.10");
  const snaps: string[] = [];
  let pat = 1;
  for (let n = r.int(2, 8); n > 0; n--) {
    const what = r.int(0, 19);
    if (what < 11) {
      const commands: string[] = [];
      for (let i = r.int(1, 6); i > 0; i--) commands.push(writeCommand(r, size, cluster, (pat++ % 250) + 1, true));
      if (r.chance(0.08)) {
        const to = Math.max(512, size + r.pick([-1, 1]) * r.pick([512, cluster, cluster + 512, 3 * cluster]));
        commands.push(`truncate${r.chance(0.5) ? ` -m ${r.pick(["off", "metadata", "falloc", "full"])}` : ""} ${to}`);
        size = to;
      }
      steps.push({ kind: "io", commands });
    } else if (what < 14) {
      const grow = r.chance(0.7);
      const delta = r.pick([512, 4 * KIB, cluster / 2, cluster, cluster + 512, 3 * cluster].filter((d) => d >= 512));
      const to = grow ? size + delta : Math.max(512, size - delta);
      const args = ["resize"];
      if (grow && r.chance(0.7)) args.push(`--preallocation=${r.pick(["off", "metadata", "falloc", "full"])}`);
      if (!grow) args.push("--shrink");
      args.push("-f", "qcow2", "IMG", String(to));
      steps.push({ kind: "img", args });
      size = to;
    } else if (what < 17) {
      if (snaps.length && r.chance(0.5)) {
        const s = r.pick(snaps);
        if (r.chance(0.5)) steps.push({ kind: "img", args: ["snapshot", "-a", s, "IMG"] });
        else {
          steps.push({ kind: "img", args: ["snapshot", "-d", s, "IMG"] });
          snaps.splice(snaps.indexOf(s), 1);
        }
      } else {
        const s = `s${snaps.length + steps.length}`;
        snaps.push(s);
        steps.push({ kind: "img", args: ["snapshot", "-c", s, "IMG"] });
      }
    } else if (what === 17 && image.backing) {
      steps.push({ kind: "img", args: ["commit", "-f", "qcow2", "IMG"] });
    } else if (what === 18 && !v2) {
      // qemu-img 7.2's amend to another refcount width spins for minutes on clusters of 256 KiB and more (2 s at 64 KiB):
      // cases 115, 155, 160, 184, 227, 250, 256, 366 of the first campaign. Measured with 8 MiB images holding 4 MiB of data.
      const widths = cluster > 128 * 1024 ? [16] : [1, 4, 16, 64];
      steps.push({ kind: "img", args: ["amend", "-f", "qcow2", "-o", `refcount_bits=${r.pick(widths)}`, "IMG"] });
    } else {
      steps.push({ kind: "io", commands: [writeCommand(r, size, cluster, (pat++ % 250) + 1, true)] });
    }
  }
  return steps;
}

/** The case a seed gives. */
export function makeCase(seed: number): OpCase {
  const r = new Rng(seed);
  const image = imageOf(r);
  return { seed, image, steps: stepsOf(r, image) };
}
