/**
 * `blkgraph commit`: qemu-img commit. Copies everything the image and the
 * layers between it and the base allocate into the base (its direct backing
 * file, or the deeper one named with `-b`), growing the base when it is
 * smaller; then empties the image (qcow2's make-empty) unless `-d` or `-b`
 * is given (qemu-img's `-b` implies `-d`). The image is opened as the user
 * named it, filters included, so a blkdebug rule sees the commit's I/O.
 *
 * @module
 */

import type { BlockNode } from "../core/node.ts";
import { open } from "../core/open.ts";
import { isPlainObject, looksDotted, normaliseSpec, parseDotted, parseJsonFilename } from "../core/spec.ts";
import {
  CliError,
  type CliIO,
  flagString,
  formatNode,
  IMAGE_FLAGS,
  imageArgs,
  isZero,
  mergeSpecs,
  needPositionals,
  openImage,
  parseVerbArgs,
  protocolNode,
  resolveBackingPath,
  type Verb,
} from "./_common.ts";
import { strerror } from "./io_commands/_session.ts";
import { progressPrinter } from "./_progress.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";
import { ioBuffer } from "../core/_io_buffer.ts";

const USAGE = `Usage: blkgraph commit [-q] [-f fmt] [-t cache] [-b base] [-d] [-p] filename

Commits the changes recorded in an overlay image into its backing file (or
the deeper backing file given with -b), then empties the overlay (not with
-d or -b).
`;

const CHUNK = 2 << 20;

/** Whether `[offset, offset+bytes)` is allocated in `top` or a layer below it above `base` (base excluded). */
async function allocatedAbove(top: BlockNode, base: BlockNode, offset: number, bytes: number) {
  let n = bytes;
  for (let layer: BlockNode | undefined = top; layer && formatNode(layer) !== formatNode(base); layer = formatNode(layer).backing) {
    if (offset >= layer.length) continue;
    const st = await layer.blockStatus(offset, n);
    if (st.allocated) return { allocated: true, zero: st.zero, n: st.length };
    n = Math.min(n, st.length);
  }
  return { allocated: false, zero: false, n };
}

/**
 * Copies what `top` and the layers above `base` allocate into `base` (zero
 * ranges as write-zeroes that may unmap, as QEMU's commit job does); returns
 * the bytes copied.
 */
export async function commitInto(top: BlockNode, base: BlockNode, progress?: (done: number) => void): Promise<number> {
  const length = top.length;
  if (base.length < length) await base.truncate(length);
  const buf = ioBuffer(CHUNK);
  let copied = 0;
  for (let off = 0; off < length;) {
    const st = await allocatedAbove(top, base, off, Math.min(CHUNK, length - off));
    if (st.allocated) {
      // qemu-img commit (a mirror job) unmaps what reads as zeros (BDRV_REQ_MAY_UNMAP).
      if (st.zero) await base.pwriteZeroes(off, st.n, { mayUnmap: true });
      else {
        const data = buf.subarray(0, st.n);
        await top.pread(off, data);
        if (isZero(data)) await base.pwriteZeroes(off, st.n, { mayUnmap: true });
        else await base.pwrite(off, data);
      }
      copied += st.n;
    }
    off += st.n;
    progress?.(off);
  }
  await base.flush();
  return copied;
}

/** One image of a backing chain: where it is, its format, and the name the image above records for it. */
interface Layer {
  filename: string;
  format: string;
  recorded: string | undefined;
  /** File of the image above it (relative names are relative to its directory). */
  above: string;
}

/** The backing chain below the image `filename` names (top first, the image itself left out). */
async function backingChain(filename: string, args: Parameters<typeof openImage>[1]): Promise<Layer[]> {
  const top = await openImage(filename, { ...args, readOnly: true });
  try {
    const chain: Layer[] = [];
    let parent = formatNode(top);
    for (let n = parent.backing; n; n = formatNode(n).backing) {
      const f = protocolNode(n).options.filename;
      if (typeof f !== "string") throw new CliError(`Cannot commit: backing file '${n.name}' is not a host file`);
      const recorded = (await parent.info())["backing-filename"];
      const above = protocolNode(parent).options.filename;
      chain.push({
        filename: f,
        format: formatNode(n).driver.name,
        recorded: typeof recorded === "string" ? recorded : undefined,
        above: typeof above === "string" ? above : "",
      });
      parent = formatNode(n);
    }
    return chain;
  } finally {
    await top.close();
  }
}

/**
 * How to open a layer again: as the image above names it when that name is
 * a graph (a json: name with filters, which a commit must write through),
 * else its format over its file; with the options the user gave for that
 * layer (`backing.encrypt.key-secret=...` in an `--image-opts` name) laid
 * over it, as QEMU keeps them when it reopens the base read-write.
 */
function layerSpec(layer: Layer, given: Record<string, unknown> | undefined): Record<string, unknown> {
  const spec = layer.recorded?.startsWith("json:")
    ? { driver: layer.format, ...parseJsonFilename(layer.recorded) }
    : { driver: layer.format, file: { driver: "file", filename: layer.filename } };
  return given ? mergeSpecs(spec, given) : spec;
}

/** The options the user gave for each layer below the image (index 0: its backing file), from a dotted, `json:` or `--image-opts` name. */
function givenLayers(filename: string, imageOpts: boolean, depth: number): (Record<string, unknown> | undefined)[] {
  const out: (Record<string, unknown> | undefined)[] = [];
  if (!imageOpts && !looksDotted(filename) && !filename.startsWith("json:")) return out;
  let s: unknown = normaliseSpec(filename.startsWith("json:") ? filename : parseDotted(filename));
  for (let i = 0; i < depth; i++) {
    s = isPlainObject(s) ? s.backing : undefined;
    if (!isPlainObject(s)) break;
    const { backing: _below, ...own } = s;
    out.push(own);
  }
  return out;
}

/**
 * Whether `name` (as given to -b) names `layer`, as QEMU's
 * bdrv_find_backing_image decides: the name recorded in the image above, or
 * the same file once a relative name is taken relative to that image.
 */
function names(layer: Layer, name: string): boolean {
  if (layer.recorded === name) return true;
  const real = (p: string) => {
    try {
      return Deno.realPathSync(p);
    } catch {
      return undefined;
    }
  };
  const want = real(resolveBackingPath(layer.above, name));
  return want !== undefined && want === real(layer.filename);
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
  needPositionals(p.positionals, 1, 1, "one image file name");
  const filename = p.positionals[0];
  const baseName = flagString(p.values, "base");
  const drop = p.values.keep === true || baseName !== undefined;
  const how = imageArgs(p.values, false);
  const chain = await backingChain(filename, how);
  if (!chain.length) throw new CliError("Image does not have a backing file");
  const at = baseName === undefined ? 0 : chain.findIndex((l) => names(l, baseName));
  if (at < 0) throw new CliError(`Did not find '${baseName}' in the backing chain of '${filename}'`);
  // The base read-write; the layers above it read-only over it; the image as named over them.
  const layers: BlockNode[] = [];
  let top: BlockNode | undefined;
  try {
    const given = givenLayers(filename, how.imageOpts === true, at + 1);
    let below = await open(layerSpec(chain[at], given[at]), { cache: how.cache });
    layers.push(below);
    for (let i = at - 1; i >= 0; i--) {
      below = await open({ ...layerSpec(chain[i], given[i]), backing: below }, { readOnly: true });
      layers.push(below);
    }
    // The image over these layers, whatever form names it (formatOptions replace the backing of a dotted or json: spec too).
    top = await openImage(filename, { ...how, formatOptions: { backing: below } });
    const show = progressPrinter(io, p.values.progress === true && p.values.quiet !== true, 1);
    show(0);
    try {
      await commitInto(top, layers[0], (done) => show(top!.length ? (100 * done) / top!.length : 100));
    } catch (e) {
      throw new CliError(`Block job failed: ${strerror(e)}`);
    }
    if (!drop) {
      try {
        await top.makeEmpty();
      } catch (e) {
        // Formats that cannot be emptied keep their data, as in qemu-img.
        if (!(e instanceof Error && "code" in e && e.code === "ENOTSUP")) throw new CliError(`Failed to empty ${filename}: ${strerror(e)}`);
      }
    }
    show(100);
    show.end();
  } finally {
    // Closing the top closes the layers it holds; a failed open leaves them to close here.
    if (top) await top.close().catch(() => {});
    else for (const l of layers.reverse()) await l.close().catch(() => {});
  }
  if (p.values.quiet !== true) io.stdout("Image committed.\n");
  return 0;
}

/** The `commit` verb. */
export const commitVerb: Verb = { name: "commit", summary: VERB_SUMMARIES.commit, run };
