/**
 * `blkgraph convert`: qemu-img convert. Copies one or more sources (end to
 * end) into a new image, skipping ranges that read as zeros (block status
 * first, then a zero check of the data), optionally writing compressed
 * clusters (`-c`) and printing qemu's progress line (`-p`).
 *
 * @module
 */

import { copyImage } from "../core/copy.ts";
import type { BlockNode } from "../core/node.ts";
import { createImage, parseCacheMode } from "../core/open.ts";
import {
  CliError,
  type CliIO,
  flagList,
  flagString,
  intArg,
  needPositionals,
  OpenError,
  openImage,
  parseVerbArgs,
  progName,
  sizeArg,
  type Verb,
} from "./_common.ts";
import { canCreate, createOptionHelp, parseCreateOptions, wantsOptionHelp } from "./create.ts";
import { startTrace, type Trace, TRACE_FLAGS, traceFlags } from "./_trace.ts";
import { progressPrinter } from "./_progress.ts";
import { resolveSnapshot, snapshotArg } from "./_snapshot_view.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph convert [-C] [-c] [-p] [-q] [-n] [-W] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt]
                        [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param]
                        [-S sparse_size] [-m num] [--salvage]
                        [--image-opts] [--target-image-opts] [-U] [--bitmaps [--skip-broken-bitmaps]] [--trace[=FILE]] [--trace-format=F] filename [filename2 [...]] output_filename

Converts (copies) images. Zero and unallocated ranges are skipped; -C
copies data by copy offloading (copy_file_range between the files, no zero
detection), -c writes compressed clusters (qcow2), -p shows progress, -n
writes into an existing target, -B makes the target an overlay of
backing_file and copies only what the sources allocate themselves.
--salvage copies what it can of a damaged source (sectors that cannot be
read become zeros, with a warning each). --bitmaps copies the persistent
dirty bitmaps of the source (--skip-broken-bitmaps leaves inconsistent ones
out). -l snapshot.id=ID[,snapshot.name=NAME] (or -l ID_OR_NAME) copies an
internal snapshot instead of the current state.
`;

/** qemu-img convert's default `-S`: zero runs of at least 4 KiB stay holes. */
const SPARSE = 4096;

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      format: { type: "string", short: "f" },
      "output-format": { type: "string", short: "O" },
      options: { type: "string", short: "o", multiple: true },
      compress: { type: "boolean", short: "c" },
      "copy-range-offloading": { type: "boolean", short: "C" },
      salvage: { type: "boolean" },
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
      bitmaps: { type: "boolean" },
      "skip-broken-bitmaps": { type: "boolean" },
      "snapshot-param": { type: "string", short: "l" },
      ...TRACE_FLAGS,
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  const lists = flagList(p.values, "options");
  if (wantsOptionHelp(lists)) {
    io.stdout(createOptionHelp(flagString(p.values, "output-format") ?? "raw", p.positionals.length ? p.positionals.at(-1) : undefined));
    return 0;
  }
  needPositionals(p.positionals, 2, Infinity, "at least one source and a target filename");
  const target = traceFlags(p.values);
  const srcNames = p.positionals.slice(0, -1);
  const dstName = p.positionals[p.positionals.length - 1];
  const outFmt = flagString(p.values, "output-format") ?? "raw";
  const backingFlag = flagString(p.values, "backing");
  const options = parseCreateOptions(lists);
  if (backingFlag !== undefined) options.backing_file = backingFlag;
  // -B or -o backing_file: the target is an overlay (qemu-img's target_has_backing).
  const backing = options.backing_file;
  if (backing !== undefined && p.positionals.length > 2) {
    throw new CliError("Having a backing file for the target makes no sense when concatenating multiple input images");
  }
  const backingFmt = flagString(p.values, "backing-format");
  if (backingFmt !== undefined) options.backing_fmt = backingFmt;
  // Only a target that is created needs its backing format (qemu-img checks its creation options; -n has none).
  if (p.values["no-create"] !== true && backing !== undefined && options.backing_fmt === undefined) {
    throw new CliError("Use of backing file requires explicit backing format");
  }
  // The target format is checked before any source is opened, as qemu-img does.
  if (p.values["no-create"] !== true && !canCreate(outFmt)) throw new CliError(`Format driver '${outFmt}' does not support image creation`);
  const bitmaps = p.values.bitmaps === true;
  const skipBroken = p.values["skip-broken-bitmaps"] === true;
  if (skipBroken && !bitmaps) throw new CliError("Use of --skip-broken-bitmaps requires --bitmaps");
  // qemu-img's checks of -C, in its order: offloading copies data as it is, so it cannot compress or look for zeros.
  const copyRange = p.values["copy-range-offloading"] === true;
  if (copyRange && p.values.compress === true) throw new CliError("Cannot enable copy offloading when -c is used");
  if (copyRange && flagString(p.values, "sparse") !== undefined) throw new CliError("Cannot enable copy offloading when -S is used");
  const salvage = p.values.salvage === true;
  if (copyRange && salvage) throw new CliError("Cannot use copy offloading in salvaging mode");
  // qemu-img's next checks, in its order: -o options are creation options, which -n skips.
  if (p.values["target-image-opts"] === true && p.values["no-create"] !== true) {
    throw new CliError("--target-image-opts requires use of -n flag");
  }
  if (p.values["no-create"] === true && lists.length) throw new CliError("-o has no effect when skipping image creation");
  const snapshot = snapshotArg(flagString(p.values, "snapshot-param"), io);
  if (snapshot?.idOrName !== undefined && srcNames.length > 1) throw new CliError("No support for concatenating multiple snapshot");
  // The sources' files are read on worker threads (QEMU's default aio=threads), so the chunks read ahead (-m) while
  // the target writes: two cores copy, as qemu-img's thread pool does. Not when compressing (one cluster at a time, in
  // order, where a thread hop per cluster would cost more than it overlaps) nor with -T none/directsync, whose O_DIRECT
  // reads go through io_uring.
  const srcCache = flagString(p.values, "src-cache");
  let srcDirect = false;
  try {
    srcDirect = srcCache !== undefined && parseCacheMode(srcCache).direct;
  } catch {
    throw new CliError(`Invalid source cache option: ${srcCache}`);
  }
  const srcAio = p.values.compress === true || srcDirect ? undefined : "threads";
  // As qemu-img, a bad -t fails before the target is created.
  const dstCache = flagString(p.values, "cache") ?? "unsafe";
  try {
    parseCacheMode(dstCache);
  } catch {
    throw new CliError(`Invalid cache option: ${dstCache}`);
  }
  const srcs: BlockNode[] = [];
  let dst: BlockNode | undefined;
  const traces: Trace[] = [];
  try {
    for (const s of srcNames) {
      const args = {
        format: flagString(p.values, "format"),
        imageOpts: p.values["image-opts"] === true,
        readOnly: true,
        cache: srcCache,
        aio: srcAio,
      };
      const src = await openImage(s, args);
      if (!snapshot) {
        srcs.push(src);
        continue;
      }
      // A read-only view of the snapshot (qemu-img's bdrv_snapshot_load_tmp): reopened with snapshot.id/snapshot.name.
      let view: Record<string, string>;
      try {
        view = await resolveSnapshot(src, snapshot);
      } finally {
        await src.close();
      }
      // The view opens only if the snapshot's tables can be used: otherwise qemu-img's bdrv_snapshot_load_tmp failed.
      srcs.push(
        await openImage(s, { ...args, formatOptions: view }).catch((e) => {
          if (!(e instanceof OpenError)) throw e;
          throw new CliError(`Failed to load snapshot: ${e.reason}`, 1, `Failed to load snapshot: ${e.qemuReason}`);
        }),
      );
    }
    if (bitmaps) await checkBitmaps(srcs, skipBroken);
    const total = srcs.reduce((a, s) => a + s.length, 0);
    const existing = p.values["no-create"] === true;
    if (!existing) {
      try {
        await createImage(dstName, outFmt, total, { options });
      } catch (e) {
        throw new CliError(`${dstName}: error while converting ${outFmt}: ${(e as Error).message}`);
      }
    }
    // Like qemu-img convert, the target opens with the key secrets it was created with.
    const keySecrets = Object.fromEntries(Object.entries(options).filter(([k]) => k === "key-secret" || k.endsWith(".key-secret")));
    dst = await openImage(dstName, {
      format: p.values["target-image-opts"] === true ? undefined : outFmt,
      imageOpts: p.values["target-image-opts"] === true,
      // qemu-img convert writes its target with cache=unsafe unless told otherwise (its -t default).
      cache: dstCache,
      extra: Object.keys(keySecrets).length && p.values["target-image-opts"] !== true ? keySecrets : undefined,
    });
    if (bitmaps && !dst.bitmaps.persistent) throw new CliError(`Format driver '${dst.formatName}' does not support bitmaps`);
    if (target !== undefined) traces.push(startTrace([...srcs, dst], { ...target, io }));
    if (existing && dst.length < total) {
      throw new CliError(`The target '${dstName}' (${dst.length} bytes) is smaller than the sources (${total} bytes)`);
    }
    const sText = flagString(p.values, "sparse");
    const sparse = sText === undefined ? SPARSE : sizeArg(sText, "sparse size");
    if (sparse % 512 !== 0) throw new CliError(`Invalid sparse size '${sText}': it must be a multiple of 512`);
    const mText = flagString(p.values, "coroutines");
    const coroutines = mText === undefined ? 8 : intArg(mText, "number of coroutines");
    if (coroutines < 1 || coroutines > 16) throw new CliError(`Invalid number of coroutines '${mText}': it must be between 1 and 16`);
    const showProgress = p.values.progress === true && p.values.quiet !== true;
    // Like qemu-img, progress counts the data to copy: what block status says
    // holds data (with a backing file for the target, only the sources' top layers).
    let dataTotal = 0;
    if (showProgress) {
      for (const s of srcs) {
        for (let off = 0; off < s.length;) {
          const st = await s.blockStatus(off, s.length - off);
          const present = st.present ?? st.allocated;
          if (present && !st.zero && !(backing !== undefined && (st.depth ?? 0) > 0)) dataTotal += st.length;
          off += st.length;
        }
      }
    }
    let dataDone = 0;
    const show = progressPrinter(io, showProgress, 1);
    show(0);
    if (p.values.compress === true && !dst.supportsCompressedWrites) {
      throw new CliError("Compression not supported for this file format");
    }
    // The sources end to end, as one stream (qemu-img's): a target cluster may hold the end of one and the start of the next.
    {
      await copyImage(srcs, dst, {
        compress: p.values.compress === true,
        copyRange,
        salvage,
        onWarning: p.values.quiet === true ? undefined : (m) => io.stderr(`${progName(io)}: warning: ${m}\n`),
        // A target with a backing file must get zeros where the source reads zeros (issue 9.6).
        zeroTarget: existing || backing !== undefined,
        topOnly: backing !== undefined,
        // qemu-img's -m coroutines: chunks read ahead, written in order unless -W.
        parallel: coroutines,
        inOrder: p.values["out-of-order"] !== true,
        sparse,
        onData: showProgress ? (n) => show(dataTotal ? (100 * (dataDone += n)) / dataTotal : 100) : undefined,
      });
    }
    if (bitmaps) await copyBitmaps(srcs[0], dst, skipBroken, io);
    await dst.flush();
    show(100);
    show.end();
  } finally {
    for (const t of traces) t.stop();
    for (const s of srcs) await s.close().catch(() => {});
    await dst?.close();
  }
  return 0;
}

/** qemu-img's convert_check_bitmaps: one source that can have bitmaps, none of them inconsistent unless skipped. */
async function checkBitmaps(srcs: BlockNode[], skipBroken: boolean): Promise<void> {
  if (srcs.length > 1) throw new CliError("Copying bitmaps only possible with single source");
  if (!srcs[0].bitmaps.persistent) throw new CliError("Source lacks bitmap support");
  for (const b of inQemuOrder(await srcs[0].bitmaps.list())) {
    if (b.persistent && b.inconsistent && !skipBroken) {
      throw new CliError(
        `Cannot copy inconsistent bitmap '${b.name}'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it`,
      );
    }
  }
}

/**
 * The order qemu-img convert names inconsistent bitmaps in: its node's list, where each loaded bitmap was inserted at
 * the head (bdrv_create_dirty_bitmap), so the reverse of the image's bitmap directory, which `list()` follows.
 */
function inQemuOrder<T>(bitmaps: T[]): T[] {
  return [...bitmaps].reverse();
}

/** qemu-img's convert_copy_bitmaps: each persistent bitmap added to the target with its granularity and state, then filled. */
async function copyBitmaps(src: BlockNode, dst: BlockNode, skipBroken: boolean, io: CliIO): Promise<void> {
  const list = await src.bitmaps.list();
  for (const b of inQemuOrder(list)) {
    if (b.persistent && skipBroken && b.inconsistent) io.stderr(`${progName(io)}: warning: Skipping inconsistent bitmap '${b.name}'\n`);
  }
  // Added in directory order: the target's directory then lists them as qemu-img's does.
  for (const b of list) {
    if (!b.persistent || (skipBroken && b.inconsistent)) continue;
    try {
      await dst.bitmaps.add(b.name, { granularity: b.granularity, disabled: !b.recording });
    } catch (e) {
      throw new CliError(`Failed to create bitmap ${b.name}: ${(e as Error).message}`);
    }
    try {
      await dst.bitmaps.merge(b.name, { name: b.name, node: src });
    } catch (e) {
      await dst.bitmaps.remove(b.name).catch(() => {});
      throw new CliError(`Failed to populate bitmap ${b.name}: ${(e as Error).message}`);
    }
  }
}

/** The `convert` verb. */
export const convertVerb: Verb = { name: "convert", summary: VERB_SUMMARIES.convert, run };
