/**
 * Shared by the `file` driver tests: a temporary file of a given size, and
 * opening a `file` node on it.
 *
 * @module
 */
import { type BlockError, type BlockNode, open } from "../../mod.ts";
import { tempDir } from "../_helpers/qemu.ts";

/** One MiB. */
export const MiB = 1 << 20;

/** A predicate for `assert.rejects`: the error has this code. */
export const isCode = (code: string) => (e: BlockError): boolean => e.code === code;

/** Runs `fn` with the path of a fresh `size`-byte file in a temporary directory. */
export async function withFile(size: number, fn: (path: string) => Promise<void>): Promise<void> {
  await using dir = await tempDir();
  const path = `${dir.path}/disk.img`;
  const f = await Deno.open(path, { create: true, write: true });
  await f.truncate(size);
  f.close();
  await fn(path);
}

/** Opens a `file` node on `path` with extra options and a cache mode. */
export function openFile(path: string, extra: Record<string, unknown> = {}, cache?: string): Promise<BlockNode> {
  return open({ driver: "file", filename: path, ...extra }, { cache });
}

/** Bytes actually allocated on disk. */
export async function allocated(path: string): Promise<number> {
  return ((await Deno.stat(path)).blocks ?? 0) * 512;
}
