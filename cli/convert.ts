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
import { createImage } from "../core/open.ts";
import {
  CliError,
  type CliIO,
  flagList,
  flagString,
  formatNode,
  intArg,
  needPositionals,
  openImage,
  parseVerbArgs,
  sizeArg,
  type Verb,
} from "./_common.ts";
import { parseCreateOptions } from "./create.ts";
import { startTrace, type Trace, TRACE_FLAGS, traceFlags } from "./_trace.ts";

const USAGE = `Usage: blkgraph convert [-c] [-p] [-q] [-n] [-W] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt]
                        [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param]
                        [-S sparse_size] [-m num]
                        [--image-opts] [--target-image-opts] [-U] [--trace[=FILE]] [--trace-format=F] filename [filename2 [...]] output_filename

Converts (copies) images. Zero and unallocated ranges are skipped; -c
writes compressed clusters (qcow2), -p shows progress, -n writes into an
existing target, -B makes the target an overlay of backing_file and copies
only what the sources allocate themselves. -l snapshot.id=ID[,snapshot.name=NAME]
(or -l ID_OR_NAME) copies an internal snapshot instead of the current state.
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
      "snapshot-param": { type: "string", short: "l" },
      ...TRACE_FLAGS,
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 2, Infinity, "at least one source and a target filename");
  const target = traceFlags(p.values);
  const srcNames = p.positionals.slice(0, -1);
  const dstName = p.positionals[p.positionals.length - 1];
  const outFmt = flagString(p.values, "output-format") ?? "raw";
  const backing = flagString(p.values, "backing");
  const options = parseCreateOptions(flagList(p.values, "options"));
  if (backing !== undefined) options.backing_file = backing;
  const backingFmt = flagString(p.values, "backing-format");
  if (backingFmt !== undefined) options.backing_fmt = backingFmt;
  const snapshot = snapshotArg(flagString(p.values, "snapshot-param"), io);
  if (snapshot?.idOrName !== undefined && srcNames.length > 1) throw new CliError("No support for concatenating multiple snapshot");
  const srcs: BlockNode[] = [];
  let dst: BlockNode | undefined;
  const traces: Trace[] = [];
  try {
    for (const s of srcNames) {
      const args = {
        format: flagString(p.values, "format"),
        imageOpts: p.values["image-opts"] === true,
        readOnly: true,
        cache: flagString(p.values, "src-cache"),
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
      srcs.push(await openImage(s, { ...args, formatOptions: view }));
    }
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
      cache: flagString(p.values, "cache") ?? "unsafe",
      extra: Object.keys(keySecrets).length && p.values["target-image-opts"] !== true ? keySecrets : undefined,
    });
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
    let lastShown = -1;
    const progress = (done: number) => {
      const pct = total ? Math.floor((done / total) * 10000) / 100 : 100;
      if (pct - lastShown >= 1 || (pct === 100 && lastShown !== 100)) {
        lastShown = pct;
        io.stdout(`    (${pct.toFixed(2)}/100%)\r`);
      }
    };
    if (showProgress) progress(0);
    if (p.values.compress === true && !dst.supportsCompressedWrites) {
      throw new CliError("Compression not supported for this file format");
    }
    let base = 0;
    for (const s of srcs) {
      const offset = base;
      await copyImage(s, dst, {
        dstOffset: offset,
        compress: p.values.compress === true,
        zeroTarget: existing,
        topOnly: backing !== undefined,
        parallel: p.values["out-of-order"] === true ? coroutines : 1,
        sparse,
        progress: showProgress ? (d) => progress(offset + d) : undefined,
      });
      base += s.length;
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

/**
 * `-l snapshot.id=ID,snapshot.name=NAME` or `-l ID_OR_NAME`, as qemu-img 7.2
 * convert takes them (its old `-s` is gone).
 */
function snapshotArg(l: string | undefined, io: CliIO): { id?: string; name?: string; idOrName?: string } | undefined {
  if (l?.startsWith("snapshot.")) {
    const out: { id?: string; name?: string } = {};
    for (const part of l.split(",")) {
      const m = /^(snapshot\.[^=]*)(?:=(.*))?$/.exec(part);
      const key = m?.[1].slice("snapshot.".length);
      if (!m || (key !== "id" && key !== "name")) {
        io.stderr(`blkgraph: Invalid parameter '${m?.[1] ?? part}'\n`);
        throw new CliError(`Failed in parsing snapshot param '${l}'`);
      }
      out[key] = m[2] ?? "";
    }
    return out;
  }
  return l === undefined ? undefined : { idOrName: l };
}

/** The open options of the snapshot view: by ID and/or name, or a bare word tried as an ID, then as a name. */
async function resolveSnapshot(src: BlockNode, want: { id?: string; name?: string; idOrName?: string }): Promise<Record<string, string>> {
  const list = await formatNode(src).snapshotList();
  const found = want.idOrName !== undefined
    ? list.find((sn) => sn.id === want.idOrName) ?? list.find((sn) => sn.name === want.idOrName)
    : list.find((sn) => (want.id === undefined || sn.id === want.id) && (want.name === undefined || sn.name === want.name));
  if (!found) throw new CliError("Failed to load snapshot: Can't find snapshot");
  return want.idOrName !== undefined ? { "snapshot.id": found.id } : {
    ...(want.id !== undefined ? { "snapshot.id": want.id } : {}),
    ...(want.name !== undefined ? { "snapshot.name": want.name } : {}),
  };
}
