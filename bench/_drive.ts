/**
 * Shared helpers of the format and filter benchmarks: a promise pool that
 * keeps `depth` requests in flight on a node, offset generators, and an
 * `strace -c` parser for counting QEMU's syscalls.
 *
 * @module
 */

import type { BlockNode } from "../mod.ts";
import { ioBuffer } from "../core/_io_buffer.ts";

/** The request kind a benchmark drives. */
export type BenchOp = "read" | "write";

/**
 * Issues one request per entry of `offsets` with `depth` requests in flight
 * (a promise pool) and returns the elapsed seconds.
 */
export async function drive(node: BlockNode, op: BenchOp, size: number, depth: number, offsets: Float64Array): Promise<number> {
  let next = 0;
  const worker = async (buf: Uint8Array): Promise<void> => {
    while (next < offsets.length) {
      const o = offsets[next++];
      if (op === "read") await node.pread(o, buf);
      else await node.pwrite(o, buf);
    }
  };
  const bufs = Array.from({ length: depth }, (_, i) => ioBuffer(size).fill(0xa5 ^ i));
  const t0 = performance.now();
  await Promise.all(bufs.map(worker));
  return (performance.now() - t0) / 1000;
}

/** `n` uniformly random offsets aligned to `size` inside `[0, imageSize)`. */
export function randomOffsets(n: number, size: number, imageSize: number): Float64Array {
  const slots = Math.floor(imageSize / size);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(Math.random() * slots) * size;
  return out;
}

/** `n` offsets `0, step, 2*step, ...` (qemu-img bench's `-S step` walk without wrapping). */
export function steppedOffsets(n: number, step: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = i * step;
  return out;
}

/** Where `qemuBenchOffsets` starts, how far it steps and how it wraps. */
export interface QemuWalk {
  /** Request size in bytes (`-s`). */
  size: number;
  /** Bytes between one request's offset and the next (`-S`); default `size`, as in qemu-img. */
  step?: number;
  /** The image's length in bytes: the walk wraps there. */
  length: number;
  /** The first offset (`-o`), default 0. */
  start?: number;
  /**
   * How the offset wraps: `"image"` (modulo the image length, qemu-img up to
   * 10.0, so 7.2 here) or `"usable"` (modulo `length - size`, qemu-img from
   * commit ff2ab634 on, which keeps a wrapped request inside the image).
   */
  wrap?: "image" | "usable";
}

/**
 * The offsets `qemu-img bench` requests, in the order it submits them: the
 * first at `-o` (0), each next one `step` (`-S`, default the request size)
 * further, wrapped into the image (qemu-img.c's `bench_cb`: `offset += step;
 * offset %= image_size`). Submission order does not depend on the queue
 * depth, so a promise pool taking the next offset whenever a request
 * completes submits the same sequence. Throws where qemu-img would request
 * bytes past the end of the image (it fails that run with EIO).
 *
 * @example
 * ```ts
 * import { qemuBenchOffsets } from "./_drive.ts";
 * // -s 4096 -S 266240 on a 1 MiB image: the fifth request wraps to 16 KiB.
 * console.log([...qemuBenchOffsets(5, { size: 4096, step: 266240, length: 1 << 20 })]);
 * // [0, 266240, 532480, 798720, 16384]
 * ```
 */
export function qemuBenchOffsets(count: number, walk: QemuWalk): Float64Array {
  const { size, length } = walk;
  const step = walk.step || size;
  const modulo = walk.wrap === "usable" ? length - size : length;
  const out = new Float64Array(count);
  let offset = walk.start ?? 0;
  for (let i = 0; i < count; i++) {
    if (offset + size > length) {
      throw new RangeError(`qemu-img bench's request ${i} at offset ${offset} (${size} bytes) runs past the image's end at ${length}`);
    }
    out[i] = offset;
    offset = modulo > 0 ? (offset + step) % modulo : 0;
  }
  return out;
}

/** Syscall counts from `strace -c`, by syscall name. */
export type SyscallCounts = Map<string, number>;

/**
 * Parses the summary table `strace -c` prints (columns `% time`, `seconds`,
 * `usecs/call`, `calls`, `errors`, `syscall`) into call counts by name.
 *
 * @example
 * ```ts
 * import { parseStraceSummary } from "./_drive.ts";
 * const t = " 99.00    0.001000          10       100           fdatasync\n";
 * console.log(parseStraceSummary(t).get("fdatasync")); // 100
 * ```
 */
export function parseStraceSummary(text: string): SyscallCounts {
  const counts: SyscallCounts = new Map();
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5 || !/^[0-9.]+$/.test(f[0]) || f[f.length - 1] === "total") continue;
    const name = f[f.length - 1];
    const calls = Number(f[3]);
    if (/^[a-z_0-9]+$/.test(name) && Number.isFinite(calls)) counts.set(name, (counts.get(name) ?? 0) + calls);
  }
  return counts;
}

/** The total number of calls. */
export function totalCalls(c: SyscallCounts): number {
  let n = 0;
  for (const v of c.values()) n += v;
  return n;
}

/** Sums the counts of the named syscalls. */
export function sumCalls(c: SyscallCounts, names: readonly string[]): number {
  let n = 0;
  for (const name of names) n += c.get(name) ?? 0;
  return n;
}

/** The syscalls that flush a file. */
export const FLUSH_CALLS = ["fdatasync", "fsync"] as const;
/** The syscalls that move data to or from a file, allocate space in it or flush it (with `-i threads`; not eventfd reads/writes). */
export const IO_CALLS = [
  "pread64",
  "pwrite64",
  "preadv",
  "pwritev",
  "preadv2",
  "pwritev2",
  "fallocate",
  "ftruncate",
  "fdatasync",
  "fsync",
] as const;

/** Tells whether strace is installed. */
export function hasStrace(): boolean {
  try {
    return new Deno.Command("strace", { args: ["-V"], stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

/** Runs `strace -f -c -o FILE cmd args` and returns the syscall counts of the whole run. */
export async function straceCounts(cmd: string, args: string[], outFile: string): Promise<SyscallCounts> {
  const out = await new Deno.Command("strace", { args: ["-f", "-c", "-o", outFile, cmd, ...args], stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`strace ${cmd} ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  const counts = parseStraceSummary(await Deno.readTextFile(outFile));
  await Deno.remove(outFile);
  return counts;
}

/** Runs a command and throws with its output when it fails. */
export async function runCmd(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed:\n${text}`);
  return text;
}

/** Writes a file of `size` bytes filled with a non-zero byte pattern. */
export async function writeFilledFile(path: string, size: number): Promise<void> {
  const f = await Deno.open(path, { create: true, write: true, truncate: true });
  try {
    const chunk = new Uint8Array(4 << 20);
    for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31 + 7) & 0xff || 1;
    for (let o = 0; o < size; o += chunk.length) {
      const part = Math.min(chunk.length, size - o);
      let done = 0;
      while (done < part) done += await f.write(chunk.subarray(done, part));
    }
  } finally {
    f.close();
  }
}

/**
 * fdatasyncs a file, so that every overwrite run starts without the dirty
 * page-cache backlog of the previous one.
 */
export async function syncFile(path: string): Promise<void> {
  const f = await Deno.open(path, { read: true, write: true });
  try {
    await f.syncData();
  } finally {
    f.close();
  }
}
