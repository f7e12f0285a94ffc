/**
 * The qcow2 node's children besides its file: the backing file named in the
 * header (resolved next to the image, probed unless its format is recorded;
 * an empty name is no backing file; a chain that comes back to an image
 * being opened is refused at once with qemu-img's message, iotest 043) and
 * the external data file.
 *
 * @module
 */

import { AsyncLocalStorage } from "node:async_hooks";
import { BlockError } from "../../core/errors.ts";
import { isPlainObject, parseJsonFilename } from "../../core/spec.ts";
import { absoluteFilename } from "../../core/_filename.ts";
import type { BlockNode, OpenContext } from "../../core/node.ts";
import { INCOMPAT_DATA_FILE, type Qcow2Header } from "./header.ts";

function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

/** The host filename under a node (through filters such as a recorder), if any. */
function filenameOf(node: BlockNode): string | undefined {
  for (let n: BlockNode | undefined = node; n; n = n.primaryChild) {
    if (typeof n.options.filename === "string") return n.options.filename;
  }
  return undefined;
}

function resolvePath(base: string | undefined, name: string): string {
  if (name.startsWith("/") || base === undefined || /^[a-z][a-z0-9+.-]*:/i.test(name)) return name;
  return `${dirOf(base)}/${name}`;
}

/** The images whose backing chains are being opened in this async context (file identities), to find loops. */
const openingChain = new AsyncLocalStorage<readonly string[]>();

/** What makes a host file the same file (device and inode), or undefined for other protocols and missing files. */
async function fileIdentity(path: string | undefined): Promise<string | undefined> {
  if (path === undefined) return undefined;
  try {
    const s = await Deno.stat(path);
    return s.dev !== null && s.ino !== null ? `${s.dev}:${s.ino}` : await Deno.realPath(path);
  } catch {
    return undefined;
  }
}

/** Opens the backing child (given in the options, or named by the header). */
export async function openBacking(ctx: OpenContext, h: Qcow2Header, file: BlockNode): Promise<BlockNode | undefined> {
  const given = ctx.childSpec?.("backing");
  if (given === null) return undefined;
  // Options for the backing file without a file of their own (backing.driver=qcow2) apply to the recorded one (QEMU's bdrv_open_backing_file).
  const tweaks = isPlainObject(given) && given.filename === undefined && given.file === undefined && !!h.backingFile;
  if (given !== undefined && !tweaks) return await ctx.openChild("backing", undefined, { readOnly: true });
  // An empty name is no backing file (QEMU's bdrv_open_backing_file).
  if (h.backingFile === undefined || h.backingFile === "") return undefined;
  // Relative to the image's directory (QEMU's bdrv_get_full_backing_filename; none over quorum: EINVAL).
  const filename = absoluteFilename(file, h.backingFile);
  // A chain that comes back to an image already being opened would open
  // forever: refuse it, with qemu-img's words (iotest 043).
  const self = await fileIdentity(filenameOf(file));
  const chain = [...(openingChain.getStore() ?? []), ...(self ? [self] : [])];
  const target = await fileIdentity(filename);
  if (target !== undefined && chain.includes(target)) {
    throw new BlockError("EINVAL", `Backing file '${h.backingFile}' creates an infinite loop.`, { node: ctx.node.name });
  }
  // A json: name is options (its own driver wins over the recorded format, as
  // in QEMU); a protocol name (nbd://, file:) is resolved by the file child.
  let spec: Record<string, unknown>;
  if (filename.startsWith("json:")) spec = { ...(h.backingFormat ? { driver: h.backingFormat } : {}), ...parseJsonFilename(filename) };
  else spec = h.backingFormat ? { driver: h.backingFormat, file: { filename } } : { filename };
  if (tweaks) spec = { ...spec, ...(given as Record<string, unknown>) };
  try {
    return await openingChain.run(chain, () => ctx.openChild("backing", spec, { readOnly: true, probe: true }));
  } catch (e) {
    if (!(e instanceof BlockError)) throw e;
    // QEMU's text; the reason names the file.
    throw new BlockError(e.code, `Could not open backing file: ${e.message}`, { node: ctx.node.name, cause: e });
  }
}

/** Opens the external data file child, when the image has one; else the image file serves as data. */
export async function openDataFile(ctx: OpenContext, h: Qcow2Header, file: BlockNode): Promise<BlockNode> {
  const given = ctx.childSpec?.("data-file");
  if (!(h.incompatibleFeatures & INCOMPAT_DATA_FILE)) {
    if (given !== undefined && given !== null) {
      throw new BlockError("EINVAL", "Invalid option 'data-file' of driver 'qcow2': the image does not use an external data file");
    }
    return file;
  }
  if (given !== undefined && given !== null) return (await ctx.openChild("data-file"))!;
  if (h.dataFile === undefined) {
    throw new BlockError("EINVAL", "Could not open data file: the image needs an external data file but names none; give 'data-file'");
  }
  const filename = resolvePath(filenameOf(file), h.dataFile);
  return (await ctx.openChild("data-file", { driver: "file", filename }))!;
}
