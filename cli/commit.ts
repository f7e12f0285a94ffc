/**
 * `blkgraph commit`: qemu-img commit into the direct backing file. Copies
 * every range the overlay allocates itself into its backing file, then
 * empties the overlay (qcow2's make-empty: every cluster is dropped, so it
 * reads through to the backing file) unless `-d` is given.
 *
 * @module
 */

import type { BlockNode } from "../core/node.ts";
import { open } from "../core/open.ts";
import { CliError, type CliIO, flagString, IMAGE_FLAGS, isZero, needPositionals, openImage, parseVerbArgs, type Verb } from "./_common.ts";

const USAGE = `Usage: blkgraph commit [-q] [-f fmt] [-t cache] [-d] [-p] filename

Commits the changes recorded in an overlay image into its backing file,
then empties the overlay (-d keeps its clusters).
`;

const CHUNK = 2 << 20;

/** Copies what `top` allocates itself into `base`; returns the bytes copied. */
export async function commitInto(top: BlockNode, base: BlockNode, progress?: (done: number) => void): Promise<number> {
  const length = top.length;
  const buf = new Uint8Array(CHUNK);
  let copied = 0;
  for (let off = 0; off < length;) {
    const st = await top.blockStatus(off, Math.min(CHUNK, length - off));
    if (st.allocated) {
      // qemu-img commit (a mirror job) unmaps what reads as zeros (BDRV_REQ_MAY_UNMAP).
      if (st.zero) await base.pwriteZeroes(off, st.length, { mayUnmap: true });
      else {
        const data = buf.subarray(0, st.length);
        await top.pread(off, data);
        if (isZero(data)) await base.pwriteZeroes(off, st.length, { mayUnmap: true });
        else await base.pwrite(off, data);
      }
      copied += st.length;
    }
    off += st.length;
    progress?.(off);
  }
  await base.flush();
  return copied;
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      ...IMAGE_FLAGS,
      "keep": { type: "boolean", short: "d" },
      progress: { type: "boolean", short: "p" },
      base: { type: "string", short: "b" },
      "rate-limit": { type: "string", short: "r" },
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 1, 1, "filename");
  if (flagString(p.values, "base") !== undefined) {
    throw new CliError("'commit -b' (committing into a deeper backing file) is not supported yet");
  }
  const filename = p.positionals[0];
  const format = flagString(p.values, "format");
  // Look at the overlay without its backing file first, to find it and its format.
  const probe = await openImage(filename, { format, readOnly: true });
  const info = await probe.info();
  const fmt = probe.driver.name;
  const backingName = info["backing-filename"];
  const backingFmt = info["backing-filename-format"];
  await probe.close();
  if (typeof backingName !== "string") throw new CliError("Image does not have a backing file");
  const dir = filename.includes("/") ? filename.slice(0, filename.lastIndexOf("/") + 1) : "";
  const backingPath = backingName.startsWith("/") ? backingName : dir + backingName;
  const base = await openImage(backingPath, {
    format: typeof backingFmt === "string" ? backingFmt : undefined,
    cache: flagString(p.values, "cache"),
  });
  let top: BlockNode | undefined;
  try {
    top = await open({ driver: fmt, file: { driver: "file", filename }, backing: base }, { readOnly: true });
    if (base.length < top.length) {
      throw new CliError(
        `Cannot commit '${filename}' (${top.length} bytes) into its smaller backing file '${backingPath}' (${base.length} bytes)`,
      );
    }
    await commitInto(top, base);
  } finally {
    if (top) await top.close();
    else await base.close();
  }
  if (p.values.keep !== true) await emptyOverlay(filename, fmt);
  if (p.values.quiet !== true) io.stdout("Image committed.\n");
  return 0;
}

/** Drops every cluster of the overlay so it reads through to its backing file. */
async function emptyOverlay(filename: string, format: string): Promise<void> {
  const overlay = await open({ driver: format, file: { driver: "file", filename }, backing: null });
  try {
    await overlay.makeEmpty();
  } finally {
    await overlay.close();
  }
}

/** The `commit` verb. */
export const commitVerb: Verb = { name: "commit", summary: "commit an overlay into its backing file", run };
