/**
 * qcow2's image operations behind the qemu-img verbs that change an image
 * in place: `amend` (format options), changing the backing file (`rebase
 * -u`) and `check` on the open node. Each runs under the metadata lock with
 * the caches written back first, so the header and tables on disk are
 * current before they are rewritten or checked.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { AmendOptions, CheckOptions, CheckResult, FormatOptions } from "../../core/types.ts";
import { checkQcow2 } from "./check.ts";
import { amendLocked } from "./_amend.ts";
import { writeSnapshotTable } from "./_snapshot.ts";
import type { Qcow2State } from "./_state.ts";
import { rewriteHeader, writeback } from "./_writeback.ts";

/** qemu-img amend: every qcow2 option qemu-img 7.2 accepts (`_amend.ts`). */
export function amendQcow2(st: Qcow2State, options: FormatOptions, opts: AmendOptions): Promise<void> {
  return st.change(() => amendLocked(st, options, opts));
}

/** Records a new backing file name (and format) in the header, as QEMU's qcow2_change_backing_file. */
export function changeBackingFileQcow2(st: Qcow2State, name: string | undefined, format: string | undefined): Promise<void> {
  if (name !== undefined && new TextEncoder().encode(name).length > 1023) {
    throw new BlockError("EINVAL", `Backing file name too long: ${name.length} bytes (at most 1023)`, { node: st.node.name });
  }
  if (format !== undefined && name === undefined) {
    throw new BlockError("EINVAL", `Cannot set backing format '${format}' without a backing file`, { node: st.node.name });
  }
  return st.change(() =>
    rewriteHeader(st, (h) => {
      h.backingFile = name;
      h.backingFormat = name === undefined ? undefined : format;
    })
  );
}

/**
 * Checks the image through the node's own file child (so filters below the
 * qcow2 node see the I/O). A repair rewrites tables on disk; the state then
 * reloads the header, L1 and refcount tables and drops its caches. A
 * repaired snapshot table is written through the state (it needs new
 * clusters).
 */
export function checkQcow2Node(st: Qcow2State, opts: CheckOptions, reload: () => Promise<void>): Promise<CheckResult> {
  return st.lock.run(async () => {
    await writeback(st, undefined);
    await st.flushFiles(undefined);
    const result = await checkQcow2(st.file, {
      ...opts,
      // QEMU's qcow2_check_fix_snapshot_table: with the refcounts repaired, a new table is allocated and written.
      rewriteSnapshots: async (entries, oldBytes) => {
        await reload();
        for (const e of entries) e.diskSize ??= st.header.size;
        await writeSnapshotTable(st, entries, undefined, oldBytes);
        await writeback(st, undefined);
        await st.flushFiles(undefined);
      },
    });
    if (opts.repair) await reload();
    return result;
  });
}
