/**
 * `blkgraph convert`: qemu-img convert. Copies one or more sources (end to
 * end) into a new image, skipping ranges that read as zeros (block status
 * first, then a zero check of the data), optionally writing compressed
 * clusters (`-c`) and printing qemu's progress line (`-p`).
 *
 * @module
 */

import type { BlockNode } from "../core/node.ts";
import { createImage } from "../core/open.ts";
import {
  CliError,
  type CliIO,
  flagList,
  flagString,
  formatNode,
  intArg,
  isZero,
  needPositionals,
  openImage,
  parseVerbArgs,
  sizeArg,
  type Verb,
} from "./_common.ts";
import { parseCreateOptions } from "./create.ts";
import { chainStatus } from "./map.ts";
import { startTrace, type Trace, traceTarget } from "./_trace.ts";

const USAGE = `Usage: blkgraph convert [-c] [-p] [-q] [-n] [-W] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt]
                        [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size] [-m num]
                        [--image-opts] [--target-image-opts] [-U] [--trace[=FILE]] filename [filename2 [...]] output_filename

Converts (copies) images. Zero and unallocated ranges are skipped; -c
writes compressed clusters (qcow2), -p shows progress, -n writes into an
existing target, -B makes the target an overlay of backing_file and copies
only what the sources allocate themselves.
`;

const CHUNK = 2 << 20;
/** qemu-img convert's default `-S`: zero runs of at least 4 KiB stay holes. */
const SPARSE = 4096;

/** Ranges `[start, end)` of `data` holding non-zero bytes, at `gran` granularity, adjacent ones merged. */
export function nonZeroRuns(data: Uint8Array, gran: number): [number, number][] {
  const runs: [number, number][] = [];
  for (let s = 0; s < data.length; s += gran) {
    const e = Math.min(data.length, s + gran);
    if (isZero(data.subarray(s, e))) continue;
    const last = runs[runs.length - 1];
    if (last && last[1] === s) last[1] = e;
    else runs.push([s, e]);
  }
  return runs;
}

/** A driver instance that can write compressed clusters (qcow2). */
interface CompressingInstance {
  pwriteCompressed?(offset: number, data: Uint8Array): Promise<void> | void;
}

/** Options of {@linkcode copyImage}. */
export interface CopyOptions {
  /** Write whole clusters compressed through the target's `pwriteCompressed`. */
  compress?: boolean;
  /** The target is not freshly created: zero ranges must be written as zeros. */
  existingTarget?: boolean;
  /** Only copy ranges the source's top layer allocates (target has a backing file). */
  topOnly?: boolean;
  /** Requests in flight (out-of-order writes, `-W`). */
  parallel?: number;
  /** Zero runs of at least this many bytes are not written (`-S`; 0 = write everything). */
  sparse?: number;
  /** Called with the bytes processed so far. */
  progress?: (done: number) => void;
}

/** Copies `src` into `dst` at `dstOffset`, skipping zero ranges. */
export async function copyImage(src: BlockNode, dst: BlockNode, dstOffset: number, opts: CopyOptions = {}): Promise<void> {
  const length = src.length;
  const inst = formatNode(dst).instance as CompressingInstance;
  let chunk = CHUNK;
  if (opts.compress) {
    if (typeof inst.pwriteCompressed !== "function") {
      throw new CliError(`Compression not supported for format '${formatNode(dst).driver.name}' (the target must be qcow2)`);
    }
    const info = await formatNode(dst).info();
    const cs = typeof info["cluster-size"] === "number" ? info["cluster-size"] : 65536;
    chunk = cs;
    if (dstOffset % cs !== 0) {
      throw new CliError(`Cannot write compressed data at offset ${dstOffset}: not aligned to the cluster size ${cs}`);
    }
  }
  let next = 0;
  let done = 0;
  const sparse = opts.sparse ?? SPARSE;
  const zeroBuf = sparse === 0 ? new Uint8Array(chunk) : undefined;
  const zeroOut = async (off: number, n: number) => {
    if (zeroBuf) {
      // -S 0: a fully allocated target, zeros written as data.
      for (let at = 0; at < n; at += zeroBuf.length) {
        await dst.pwrite(dstOffset + off + at, zeroBuf.subarray(0, Math.min(zeroBuf.length, n - at)));
      }
    } else if (opts.existingTarget) await dst.pwriteZeroes(dstOffset + off, n, { mayUnmap: true });
  };
  const one = async (buf: Uint8Array) => {
    while (next < length) {
      // Claim one chunk before awaiting, so parallel workers never overlap.
      const start = next;
      const end = Math.min(start + chunk - (start % chunk), length);
      next = end;
      for (let off = start; off < end;) {
        const st = await chainStatus(src, off, end - off);
        const n = st.length;
        if (opts.topOnly && st.depth > 0) {
          // Defined by the backing chain: the target's backing file provides it.
        } else if (st.zero || (opts.topOnly && !st.present)) {
          await zeroOut(off, n);
        } else {
          const data = buf.subarray(0, n);
          await src.pread(off, data);
          const wholeCluster = off % chunk === 0 && (n === chunk || off + n === length);
          if (opts.compress && wholeCluster && !isZero(data)) await inst.pwriteCompressed!(dstOffset + off, data);
          else if (sparse === 0) await dst.pwrite(dstOffset + off, data);
          else if (isZero(data)) await zeroOut(off, n);
          else {
            // Like qemu-img's -S 4k: zero runs inside the data stay holes.
            let at = 0;
            for (const [s, e] of nonZeroRuns(data, sparse)) {
              if (s > at) await zeroOut(off + at, s - at);
              await dst.pwrite(dstOffset + off + s, data.subarray(s, e));
              at = e;
            }
            if (at < n) await zeroOut(off + at, n - at);
          }
        }
        off += n;
        done += n;
        opts.progress?.(done);
      }
    }
  };
  const workers = [];
  for (let i = 0; i < Math.max(1, opts.parallel ?? 1); i++) workers.push(one(new Uint8Array(chunk)));
  await Promise.all(workers);
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      format: { type: "string", short: "f" },
      "output-format": { type: "string", short: "O" },
      options: { type: "string", short: "o", multiple: true },
      compress: { type: "boolean", short: "c" },
      progress: { type: "boolean", short: "p" },
      "no-create": { type: "boolean", short: "n" },
      "backing": { type: "string", short: "B" },
      "backing-format": { type: "string", short: "F" },
      "out-of-order": { type: "boolean", short: "W" },
      cache: { type: "string", short: "t" },
      "src-cache": { type: "string", short: "T" },
      sparse: { type: "string", short: "S" },
      coroutines: { type: "string", short: "m" },
      quiet: { type: "boolean", short: "q" },
      "image-opts": { type: "boolean" },
      "target-image-opts": { type: "boolean" },
      "force-share": { type: "boolean", short: "U" },
      object: { type: "string", multiple: true },
      trace: { type: "string" },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 2, Infinity, "at least one source and a target filename");
  const srcNames = p.positionals.slice(0, -1);
  const dstName = p.positionals[p.positionals.length - 1];
  const outFmt = flagString(p.values, "output-format") ?? "raw";
  const backing = flagString(p.values, "backing");
  const options = parseCreateOptions(flagList(p.values, "options"));
  if (backing !== undefined) options.backing_file = backing;
  const backingFmt = flagString(p.values, "backing-format");
  if (backingFmt !== undefined) options.backing_fmt = backingFmt;
  const srcs: BlockNode[] = [];
  let dst: BlockNode | undefined;
  const traces: Trace[] = [];
  try {
    for (const s of srcNames) {
      srcs.push(
        await openImage(s, {
          format: flagString(p.values, "format"),
          imageOpts: p.values["image-opts"] === true,
          readOnly: true,
          cache: flagString(p.values, "src-cache"),
        }),
      );
    }
    const total = srcs.reduce((a, s) => a + formatNode(s).length, 0);
    const existing = p.values["no-create"] === true;
    if (!existing) {
      try {
        await createImage(dstName, outFmt, total, { options });
      } catch (e) {
        throw new CliError(`${dstName}: error while converting ${outFmt}: ${(e as Error).message}`);
      }
    }
    dst = await openImage(dstName, {
      format: p.values["target-image-opts"] === true ? undefined : outFmt,
      imageOpts: p.values["target-image-opts"] === true,
      cache: flagString(p.values, "cache"),
    });
    const target = traceTarget(flagString(p.values, "trace"));
    if (target !== undefined) { for (const n of [...srcs, dst]) traces.push(startTrace(n, target === true ? true : `${target}`, io)); }
    if (existing && formatNode(dst).length < total) {
      throw new CliError(`The target '${dstName}' (${formatNode(dst).length} bytes) is smaller than the sources (${total} bytes)`);
    }
    const sText = flagString(p.values, "sparse");
    const sparse = sText === undefined ? SPARSE : sizeArg(sText, "sparse size");
    if (sparse % 512 !== 0) throw new CliError(`Invalid sparse size '${sText}': it must be a multiple of 512`);
    const mText = flagString(p.values, "coroutines");
    const coroutines = mText === undefined ? 8 : intArg(mText, "number of coroutines");
    if (coroutines < 1 || coroutines > 16) throw new CliError(`Invalid number of coroutines '${mText}': it must be between 1 and 16`);
    const showProgress = p.values.progress === true && p.values.quiet !== true;
    let lastShown = -1;
    const progress = (done: number) => {
      const pct = total ? Math.floor((done / total) * 10000) / 100 : 100;
      if (pct - lastShown >= 1 || (pct === 100 && lastShown !== 100)) {
        lastShown = pct;
        io.stdout(`    (${pct.toFixed(2)}/100%)\r`);
      }
    };
    if (showProgress) progress(0);
    let base = 0;
    for (const s of srcs) {
      const node = formatNode(s);
      const offset = base;
      await copyImage(node, formatNode(dst), offset, {
        compress: p.values.compress === true,
        existingTarget: existing,
        topOnly: backing !== undefined,
        parallel: p.values["out-of-order"] === true ? coroutines : 1,
        sparse,
        progress: showProgress ? (d) => progress(offset + d) : undefined,
      });
      base += node.length;
    }
    await dst.flush();
    if (showProgress) io.stdout(`    (100.00/100%)\r\n`);
  } finally {
    for (const t of traces) t.stop();
    for (const s of srcs) await s.close().catch(() => {});
    await dst?.close();
  }
  return 0;
}

/** The `convert` verb. */
export const convertVerb: Verb = { name: "convert", summary: "convert (copy) images", run };
