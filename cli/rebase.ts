/**
 * `blkgraph rebase`: qemu-img rebase. Safe mode (the default) keeps what
 * the image reads unchanged: every range the image does not allocate itself
 * and where the old and new backing files differ is copied from the old
 * backing file into the image first (zeros where the old one ends), then the
 * new backing file name and format are recorded. A new backing file that is
 * already in the image's chain is reused, and only ranges changed above it
 * are compared. A crash during the copy leaves an image that still reads the
 * same. Unsafe mode (`-u`) only rewrites the name.
 *
 * @module
 */

import type { BlockNode } from "../core/node.ts";
import { getDriver } from "../core/registry.ts";
import {
  CliError,
  type CliIO,
  flagString,
  formatNode,
  IMAGE_FLAGS,
  imageArgs,
  needPositionals,
  openImage,
  openReason,
  parseVerbArgs,
  protocolNode,
  resolveBackingPath,
  type Verb,
} from "./_common.ts";
import { strerror } from "./io_commands/_session.ts";
import { progressPrinter } from "./_progress.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";
import { ioBuffer } from "../core/_io_buffer.ts";

const USAGE = `Usage: blkgraph rebase [-f fmt] [-t cache] [-T src_cache] [-p] [-q] [-u] [-U] -b backing_file [-F backing_fmt] filename

Changes the backing file of an image. Without -u (safe mode) the data that
would change is copied into the image first, so it reads the same after;
-u only rewrites the name. -b "" removes the backing file.
`;

const IO_BUF = 2 << 20;

/** Allocated in `top` or any layer below it above `base` (QEMU's bdrv_is_allocated_above, base excluded). */
async function allocatedAbove(top: BlockNode, base: BlockNode | undefined, offset: number, bytes: number) {
  let n = bytes;
  for (let layer: BlockNode | undefined = top; layer && layer !== base; layer = formatNode(layer).backing) {
    if (offset >= layer.length) continue;
    const st = await layer.blockStatus(offset, n);
    if (st.allocated) return { allocated: true, n: st.length };
    n = Math.min(n, st.length);
  }
  return { allocated: false, n };
}

/** The node of `top`'s backing chain whose file is `path`, if any (QEMU's bdrv_find_backing_image). */
export function findInChain(top: BlockNode, path: string): BlockNode | undefined {
  const real = (p: string) => {
    try {
      return Deno.realPathSync(p);
    } catch {
      return p;
    }
  };
  const want = real(path);
  for (let n = formatNode(top).backing; n; n = formatNode(n).backing) {
    const f = protocolNode(n).options.filename;
    if (typeof f === "string" && real(f) === want) return n;
  }
  return undefined;
}

/** Copies into `image` what changes when its backing file goes from `oldBacking` to `newBacking` (qemu-img rebase's safe mode). */
async function copyDifferences(
  image: BlockNode,
  oldBacking: BlockNode | undefined,
  newBacking: BlockNode | undefined,
  prefix: BlockNode | undefined,
  progress: (done: number) => void,
): Promise<void> {
  const size = image.length;
  const oldSize = oldBacking?.length ?? 0;
  const newSize = newBacking?.length ?? 0;
  const bufOld = ioBuffer(IO_BUF);
  const bufNew = ioBuffer(IO_BUF);
  for (let offset = 0; offset < size;) {
    let n = Math.min(IO_BUF, size - offset);
    const own = await image.blockStatus(offset, n);
    n = own.length;
    if (own.allocated) {
      offset += n;
      continue;
    }
    if (prefix) {
      // Unchanged since the new backing file: nothing to do.
      const above = await allocatedAbove(formatNode(image).backing!, prefix, offset, n);
      n = above.n;
      if (!above.allocated) {
        offset += n;
        continue;
      }
    }
    const oldZero = offset >= oldSize;
    if (!oldZero && offset + n > oldSize) n = oldSize - offset;
    if (!oldZero) {
      try {
        await oldBacking!.pread(offset, bufOld.subarray(0, n));
      } catch {
        throw new CliError("error while reading from old backing file");
      }
    } else bufOld.fill(0, 0, n);
    if (newBacking && offset < newSize) {
      if (offset + n > newSize) n = newSize - offset;
      try {
        await newBacking.pread(offset, bufNew.subarray(0, n));
      } catch {
        throw new CliError("error while reading from new backing file");
      }
    } else bufNew.fill(0, 0, n);
    // Sector by sector, runs that differ are written (QEMU's compare_buffers).
    for (let at = 0; at < n;) {
      const differs = !same(bufOld, bufNew, at, Math.min(n, at + 512));
      let end = Math.min(n, at + 512);
      while (end < n && !same(bufOld, bufNew, end, Math.min(n, end + 512)) === differs) end = Math.min(n, end + 512);
      if (differs) {
        try {
          if (oldZero) await image.pwriteZeroes(offset + at, end - at);
          else await image.pwrite(offset + at, bufOld.slice(at, end));
        } catch (e) {
          throw new CliError(`Error while writing to COW image: ${strerror(e)}`);
        }
      }
      at = end;
    }
    offset += n;
    progress(offset);
  }
}

function same(a: Uint8Array, b: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (a[i] !== b[i]) return false;
  return true;
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      ...IMAGE_FLAGS,
      unsafe: { type: "boolean", short: "u" },
      backing: { type: "string", short: "b" },
      "backing-format": { type: "string", short: "F" },
      progress: { type: "boolean", short: "p" },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 1, 1, "one image file name");
  const unsafe = p.values.unsafe === true;
  const backing = flagString(p.values, "backing");
  if (backing === undefined && !unsafe) throw new CliError("Must specify backing file (-b) or use unsafe mode (-u)");
  if (backing === undefined) throw new CliError("Expecting a backing file name (-b)");
  const format = flagString(p.values, "backing-format");
  // Unsafe mode only records the name, so any format name QEMU knows will do.
  if (format !== undefined && !unsafe) {
    try {
      getDriver(format);
    } catch {
      throw new CliError(`Invalid format name: '${format}'`);
    }
  }
  // Refused before anything is copied (QEMU finds out after the copy).
  if (backing !== "" && format === undefined) {
    throw new CliError(`Could not change the backing file to '${backing}': backing format must be specified`);
  }
  const filename = p.positionals[0];
  const quiet = p.values.quiet === true;
  const node = await openImage(filename, { ...imageArgs(p.values, false), noBacking: unsafe });
  let newBacking: BlockNode | undefined;
  let ownsNew = false;
  try {
    if (!unsafe) {
      const image = formatNode(node);
      const oldBacking = image.backing;
      let prefix: BlockNode | undefined;
      if (backing !== "") {
        const own = protocolNode(image).options.filename;
        const path = resolveBackingPath(typeof own === "string" ? own : filename, backing);
        prefix = findInChain(image, path);
        if (prefix) newBacking = prefix;
        else {
          try {
            newBacking = await openImage(path, {
              format,
              readOnly: true,
              cache: flagString(p.values, "src-cache"),
              forceShare: p.values["force-share"] === true,
            });
          } catch (e) {
            throw new CliError(
              `Could not open new backing file '${backing}': ${openReason(e, io)}`,
            );
          }
          ownsNew = true;
        }
      }
      const show = progressPrinter(io, p.values.progress === true && !quiet, 2);
      await copyDifferences(image, oldBacking, newBacking, prefix, (done) => show(image.length ? (done / image.length) * 100 : 100));
      show(100);
      show.end();
    }
    try {
      await node.changeBackingFile(backing === "" ? undefined : backing, backing === "" ? undefined : format);
    } catch (e) {
      throw new CliError(`Could not change the backing file to '${backing}': ${(e as Error).message}`);
    }
  } finally {
    if (ownsNew) await newBacking?.close().catch(() => {});
    await node.close();
  }
  return 0;
}

/** The `rebase` verb. */
export const rebaseVerb: Verb = { name: "rebase", summary: VERB_SUMMARIES.rebase, run };
