/**
 * Seed images for the qcow2 fuzzer, one per family: versions 2 and 3,
 * cluster sizes 512 B to 2 MiB, every refcount width, extended L2 entries,
 * zlib and zstd compressed clusters, a backing chain, external data files,
 * internal snapshots, persistent bitmaps, lazy refcounts, a dirty image and
 * LUKS encryption (the secret is {@linkcode FUZZ_SECRET}).
 * qemu-img and qemu-io make them (the reference writer); without QEMU the
 * families blkgraph can make itself are made by blkgraph.
 *
 * A seed is a directory: `img.qcow2` (the image the fuzzer mutates) and
 * whatever it refers to by relative name (`base.qcow2`, `data.raw`).
 *
 * @module
 */

import { createHash } from "node:crypto";
import { createImage, open } from "../../mod.ts";
import { readHeaderFrom, serialiseHeader } from "../../drivers/qcow2/mod.ts";

/** One family of seed images. */
export interface Family {
  /** Family name (used in reports and reproducers). */
  name: string;
  /** qemu-img create options. */
  o: string;
  /** Virtual size. */
  size: string;
  /** qemu-io commands run on the image after creation. */
  io: string[];
  /** Build through `qemu-img convert -c` from a raw file holding what `io` writes. */
  compressed?: boolean;
  /** Needs a base image `base.qcow2` (written with `baseIo`). */
  baseIo?: string[];
  /** Internal snapshots to take between groups of writes. */
  snapshots?: string[];
  /** Persistent bitmaps to add before the writes. */
  bitmaps?: string[];
  /** End with a killed qemu-io (lazy refcounts: the dirty bit stays set). */
  kill?: boolean;
  /** Encrypted: every open passes `encrypt.key-secret` = {@linkcode FUZZ_SECRET}. */
  encrypted?: boolean;
}

/** The secret of the encrypted family: QEMU's `--object` argument and its id. */
export const FUZZ_SECRET = { id: "fzsec", object: "secret,id=fzsec,data=fuzz-passphrase" } as const;

/**
 * How a QEMU tool names image `name` (relative to its working directory):
 * the name itself, or for an encrypted image `--object` arguments and a
 * `json:` name carrying `encrypt.key-secret`.
 */
export function qemuImage(name: string, encrypted: boolean | undefined): { pre: string[]; name: string } {
  if (!encrypted) return { pre: [], name };
  const json = { driver: "qcow2", file: { driver: "file", filename: name }, "encrypt.key-secret": FUZZ_SECRET.id };
  return { pre: ["--object", FUZZ_SECRET.object], name: `json:${JSON.stringify(json)}` };
}

const W = ["write -P 0x11 0 64k", "write -P 0x22 192k 100k", "write -P 0x33 700k 4k", "write -z 400k 64k"];

/** The families (a few MiB each at most). */
export const FAMILIES: readonly Family[] = [
  { name: "v3-64k", o: "", size: "1M", io: W },
  { name: "v2-64k", o: "compat=0.10", size: "1M", io: W },
  { name: "v3-512", o: "cluster_size=512", size: "1M", io: W },
  { name: "v2-512", o: "compat=0.10,cluster_size=512", size: "256k", io: ["write -P 0x11 0 20k", "write -P 0x22 100k 7k"] },
  { name: "v3-4k", o: "cluster_size=4k", size: "2M", io: W },
  { name: "v3-2M", o: "cluster_size=2M", size: "4M", io: ["write -P 0x11 0 64k", "write -P 0x22 3M 1M"] },
  { name: "refbits-1", o: "cluster_size=4k,refcount_bits=1", size: "1M", io: W },
  { name: "refbits-2", o: "cluster_size=4k,refcount_bits=2", size: "1M", io: W },
  { name: "refbits-4", o: "refcount_bits=4", size: "1M", io: W },
  { name: "refbits-8", o: "cluster_size=1k,refcount_bits=8", size: "1M", io: W },
  { name: "refbits-32", o: "refcount_bits=32", size: "1M", io: W },
  { name: "refbits-64", o: "cluster_size=512,refcount_bits=64", size: "512k", io: ["write -P 0x11 0 8k", "write -P 0x22 300k 3k"] },
  { name: "extl2-64k", o: "extended_l2=on", size: "1M", io: ["write -P 0x11 0 4k", "write -P 0x22 70k 10k", "write -z 200k 64k"] },
  { name: "extl2-32k", o: "extended_l2=on,cluster_size=32k", size: "1M", io: ["write -P 0x11 1k 3k", "write -P 0x22 500k 40k"] },
  { name: "zlib", o: "cluster_size=4k", size: "1M", io: W, compressed: true },
  { name: "zstd", o: "cluster_size=4k,compression_type=zstd", size: "1M", io: W, compressed: true },
  { name: "zlib-64k", o: "", size: "1M", io: W, compressed: true },
  { name: "backing", o: "cluster_size=4k", size: "1M", io: ["write -P 0x44 10k 30k", "write -P 0x55 600k 8k"], baseIo: W },
  { name: "backing-v2", o: "compat=0.10", size: "1M", io: ["write -P 0x44 10k 30k"], baseIo: W },
  { name: "data-file", o: "data_file=data.raw,cluster_size=4k", size: "1M", io: W },
  { name: "data-file-raw", o: "data_file=data.raw,data_file_raw=on", size: "1M", io: W },
  { name: "snapshots", o: "cluster_size=4k", size: "1M", io: W, snapshots: ["s1", "s2"] },
  { name: "bitmaps", o: "", size: "1M", io: W, bitmaps: ["b0", "b1"] },
  { name: "lazy", o: "lazy_refcounts=on,cluster_size=4k", size: "1M", io: W },
  { name: "dirty", o: "lazy_refcounts=on", size: "1M", io: W, kill: true },
  // LUKS with a short iteration time: every open derives the key again.
  {
    name: "luks",
    o: `encrypt.format=luks,encrypt.key-secret=${FUZZ_SECRET.id},encrypt.iter-time=10,cluster_size=4k`,
    size: "1M",
    io: W,
    encrypted: true,
  },
];

/** A built seed. */
export interface Seed {
  /** Its family. */
  family: Family;
  /** Directory holding `img.qcow2` and its companions. */
  dir: string;
  /** Companion files (names in `dir`) the image refers to. */
  companions: string[];
}

async function sh(cmd: string, args: string[], cwd: string): Promise<void> {
  let out = await new Deno.Command(cmd, { args, cwd, stdout: "null", stderr: "piped" }).output();
  // QEMU's PBKDF2 calibration gives up when a busy machine's thread CPU clock shows no time: try again.
  for (let i = 0; i < 5 && !out.success && /Unable to get accurate CPU usage/.test(new TextDecoder().decode(out.stderr)); i++) {
    out = await new Deno.Command(cmd, { args, cwd, stdout: "null", stderr: "piped" }).output();
  }
  if (!out.success && !(cmd === "qemu-io" && out.signal === "SIGKILL")) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

function ioArgs(cmds: string[]): string[] {
  return cmds.flatMap((c) => ["-c", c]);
}

async function buildWithQemu(f: Family, dir: string): Promise<string[]> {
  const companions: string[] = [];
  const create = ["create", "-q", "-f", "qcow2"];
  if (f.o) create.push("-o", f.o);
  if (f.baseIo) {
    await sh("qemu-img", ["create", "-q", "-f", "qcow2", "base.qcow2", f.size], dir);
    await sh("qemu-io", [...ioArgs(f.baseIo), "base.qcow2"], dir);
    create.push("-b", "base.qcow2", "-F", "qcow2");
    companions.push("base.qcow2");
  }
  if (f.o.includes("data_file=")) companions.push("data.raw");
  if (f.compressed) {
    await sh("qemu-img", ["create", "-q", "-f", "raw", "src.raw", f.size], dir);
    await sh("qemu-io", ["-f", "raw", ...ioArgs(f.io), "src.raw"], dir);
    await sh("qemu-img", ["convert", "-c", "-f", "raw", "-O", "qcow2", ...(f.o ? ["-o", f.o] : []), "src.raw", "img.qcow2"], dir);
    await Deno.remove(`${dir}/src.raw`);
    return companions;
  }
  if (f.encrypted) {
    const img = qemuImage("img.qcow2", true);
    await sh("qemu-img", [...create.slice(0, 1), ...img.pre, ...create.slice(1), "img.qcow2", f.size], dir);
    await sh("qemu-io", [...img.pre, ...ioArgs(f.io), img.name], dir);
    return companions;
  }
  await sh("qemu-img", [...create, "img.qcow2", f.size], dir);
  for (const b of f.bitmaps ?? []) await sh("qemu-img", ["bitmap", "--add", "img.qcow2", b], dir);
  if (f.snapshots) {
    // Writes, a snapshot, more writes, another snapshot...: tables shared and copied.
    for (const [i, s] of f.snapshots.entries()) {
      await sh("qemu-io", [...ioArgs(f.io.slice(i, i + 2)), "img.qcow2"], dir);
      await sh("qemu-img", ["snapshot", "-c", s, "img.qcow2"], dir);
    }
    await sh("qemu-io", [...ioArgs(f.io.slice(-2)), "img.qcow2"], dir);
    return companions;
  }
  await sh("qemu-io", [...ioArgs(f.io), ...(f.kill ? ["-c", "sigraise 9"] : []), "img.qcow2"], dir);
  return companions;
}

const blkgraphMakes = (f: Family) => !f.snapshots && !f.bitmaps && !f.kill && !f.encrypted;

function parseSizeText(s: string): number {
  const m = /^(\d+)([kKmM]?)$/.exec(s)!;
  return Number(m[1]) * (m[2] === "" ? 1 : /k/i.test(m[2]) ? 1024 : 1 << 20);
}

/** Builds the family with blkgraph itself (no QEMU): same options and writes. */
async function buildWithBlkgraph(f: Family, dir: string): Promise<string[]> {
  const opts: Record<string, string> = {};
  for (const kv of f.o.split(",").filter(Boolean)) {
    const [k, v] = kv.split("=");
    opts[k] = k === "data_file" ? `${dir}/${v}` : v;
  }
  const companions: string[] = [];
  const size = parseSizeText(f.size);
  if (f.baseIo) {
    await createImage(`${dir}/base.qcow2`, "qcow2", size);
    await runIo(`${dir}/base.qcow2`, f.baseIo, false);
    opts.backing_file = "base.qcow2";
    opts.backing_fmt = "qcow2";
    companions.push("base.qcow2");
  }
  if (opts.data_file) companions.push("data.raw");
  await createImage(`${dir}/img.qcow2`, "qcow2", size, { options: opts });
  await runIo(`${dir}/img.qcow2`, f.io, f.compressed ?? false);
  if (opts.data_file) {
    // Store the name relative, as qemu-img does for a relative data_file.
    const path = `${dir}/img.qcow2`;
    await using file = await open({ driver: "file", filename: path });
    const h = await readHeaderFrom(file);
    await file.pwrite(0, serialiseHeader({ ...h, dataFile: "data.raw" }, 2 ** h.clusterBits));
  }
  return companions;
}

async function runIo(path: string, cmds: string[], compressed: boolean): Promise<void> {
  await using node = await open(path);
  for (const c of cmds) {
    const m = /^write (-P (0x[0-9a-f]+)|-z) (\d+[kM]?) (\d+[kM]?)$/.exec(c)!;
    const off = parseSizeText(m[3]);
    const len = parseSizeText(m[4]);
    if (m[1] === "-z") await node.pwriteZeroes(off, len);
    else if (compressed) {
      const cs = (await node.info())["cluster-size"] as number;
      const buf = new Uint8Array(cs);
      for (let o = Math.floor(off / cs) * cs; o < off + len; o += cs) {
        buf.fill(0);
        buf.fill(Number(m[2]), Math.max(0, off - o), Math.min(cs, off + len - o));
        await node.pwrite(o, buf.subarray(0, Math.min(cs, node.length - o)), { compressed: true });
      }
    } else await node.pwrite(off, new Uint8Array(len).fill(Number(m[2])));
  }
}

/**
 * Builds every family into `root` (once: an existing seed directory is
 * reused) and returns the seeds. Without QEMU only the families blkgraph
 * can make are built.
 */
export async function buildSeeds(root: string, opts: { qemu: boolean; only?: string[] }): Promise<Seed[]> {
  const seeds: Seed[] = [];
  for (const f of FAMILIES) {
    if (opts.only && !opts.only.includes(f.name)) continue;
    if (!opts.qemu && !blkgraphMakes(f)) continue;
    const dir = `${root}/${opts.qemu ? "qemu" : "blkgraph"}-${f.name}`;
    const done = `${dir}/.done`;
    let companions: string[];
    try {
      companions = JSON.parse(await Deno.readTextFile(done));
    } catch {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.mkdir(dir, { recursive: true });
      companions = opts.qemu ? await buildWithQemu(f, dir) : await buildWithBlkgraph(f, dir);
      await Deno.writeTextFile(done, JSON.stringify(companions));
    }
    seeds.push({ family: f, dir, companions });
  }
  return seeds;
}

/** Where seeds are cached between runs: named by a hash of the family definitions, so a changed family is rebuilt. */
export function seedCacheDir(): string {
  const hash = createHash("sha256").update(JSON.stringify(FAMILIES)).digest("hex").slice(0, 12);
  return `${Deno.env.get("TMPDIR") ?? "/tmp"}/blkgraph-fuzz-seeds-${hash}`;
}
