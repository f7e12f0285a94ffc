/**
 * The last-chance write-back when the process exits through `Deno.exit()`
 * with a qcow2 node still open (the `unload` event runs no async code): the
 * cached metadata is written synchronously, in the same dependency order as
 * the normal write-back, straight to a `file` node's synchronous I/O.
 *
 * It runs only when that is safe: no metadata operation holds the lock
 * (completed writes are whole in the caches), and the image file (and data
 * file) is a `file` node without filters. Clusters waiting to be freed stay
 * allocated (a leak `check -r leaks` removes, never a corruption). Otherwise
 * the metadata is lost as in a crash, and the image stays consistent.
 *
 * @module
 */

import type { Qcow2State } from "./_state.ts";
import { dirtyL1Chunks, dirtyReftableChunks } from "./_metadata_write.ts";

/** What the exit write-back did. */
export type ExitWriteback = "clean" | "written" | "not-safe";

/** Writes the dirty metadata of `st` synchronously (see the module doc). */
export function exitWriteback(st: Qcow2State): ExitWriteback {
  if (!st.hasDirtyMetadata || st.node.readOnly || st.corrupt || st.broken) return "clean";
  const io = st.file.syncIo;
  const dataIo = st.externalData ? st.data.syncIo : io;
  if (st.lock.held || !io || !dataIo || st.wrongOrder !== "none") return "not-safe";
  const writeEntries = (cache: typeof st.l2Cache): boolean => {
    const dirty = cache.dirtyEntries();
    for (const e of dirty) {
      io.pwrite(e.offset, e.buf);
      cache.markClean(e);
    }
    return dirty.length > 0;
  };
  const flushAll = () => {
    if (dataIo !== io) dataIo.flush();
    io.flush();
  };
  const lazy = st.mode === "lazy";
  if (!lazy) {
    // Refcount blocks, durable with the guest data before the table entries and L2 tables that depend on them.
    if (writeEntries(st.rbCache)) flushAll();
    const reftable = dirtyReftableChunks(st);
    for (const [off, buf] of reftable) io.pwrite(off, buf);
    if (reftable.length) io.flush();
  } else {
    flushAll(); // guest data before the L2 entries exposing it
  }
  const newTables = st.l2Cache.dirtyEntries().some((e) => e.isNew);
  writeEntries(st.l2Cache);
  const l1 = dirtyL1Chunks(st);
  if (l1.length && newTables) io.flush();
  for (const [off, buf] of l1) io.pwrite(off, buf);
  if (lazy) {
    writeEntries(st.rbCache);
    for (const [off, buf] of dirtyReftableChunks(st)) io.pwrite(off, buf);
  }
  flushAll();
  return "written";
}
