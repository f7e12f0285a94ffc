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
import { COMPAT_LAZY_REFCOUNTS, INCOMPAT_DIRTY, type Qcow2Header } from "./header.ts";
import { serializeHeader } from "./_header_write.ts";
import type { Qcow2State } from "./_state.ts";
import { markClean, writeback } from "./_writeback.ts";
import { amendLuks } from "../_crypto/amend.ts";

/** Options qemu-img amend refuses for qcow2 because only creation can set them. */
const CREATION_ONLY = ["cluster_size", "preallocation", "extended_l2", "compression_type", "encryption", "encrypt.format"];

/** Writes the whole header cluster after `change` edited the in-memory header, then flushes (lock held). */
async function rewriteHeader(st: Qcow2State, change: (h: Qcow2Header) => void): Promise<void> {
  await writeback(st, undefined);
  const next = { ...st.header };
  change(next);
  const bytes = serializeHeader(next, st.cs); // validates before anything is written
  await st.file.pwrite(0, bytes);
  await st.file.flush();
  st.header = next;
}

/**
 * qemu-img amend for qcow2: `lazy_refcounts`, and the `encrypt.*` key slot
 * options of a luks-encrypted image; creation-only options are refused as
 * qemu-img does.
 */
export async function amendQcow2(st: Qcow2State, options: FormatOptions, opts: AmendOptions): Promise<void> {
  let lazy: boolean | undefined;
  const luks: Record<string, unknown> = {};
  for (const [k0, v] of Object.entries(options)) {
    // encrypt.state, encrypt.new-secret, ...: the LUKS key slots of a luks-encrypted image.
    if (k0.startsWith("encrypt.") && k0 !== "encrypt.format") {
      luks[k0.slice("encrypt.".length)] = v;
      continue;
    }
    const k = k0.replaceAll("-", "_");
    if (CREATION_ONLY.includes(k)) {
      throw new BlockError("EINVAL", `Invalid parameter '${k0}'\nThis option is only supported for image creation`, { node: st.node.name });
    }
    if (k !== "lazy_refcounts") {
      throw new BlockError("ENOTSUP", `Changing '${k0}' is not supported yet (only lazy_refcounts)`, { node: st.node.name });
    }
    const s = String(v);
    if (!["on", "off", "true", "false"].includes(s)) {
      throw new BlockError("EINVAL", `Invalid value '${s}' for option 'lazy_refcounts': expected on or off`, { node: st.node.name });
    }
    lazy = s === "on" || s === "true";
  }
  if (Object.keys(luks).length) {
    const volume = st.crypto?.volume;
    if (!volume) throw new BlockError("EINVAL", "Amending encryption options needs a luks-encrypted image", { node: st.node.name });
    await st.change(() => amendLuks(volume, luks, { unlockSecret: st.crypto!.secretId, force: opts.force, prefix: "encrypt." }));
  }
  if (lazy === undefined) return;
  await st.change(async () => {
    const h = st.header;
    if (lazy && h.version < 3) {
      throw new BlockError(
        "EINVAL",
        "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)",
        { node: st.node.name },
      );
    }
    const on = (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0;
    if (on === lazy) return;
    if (!lazy) {
      // QEMU's qcow2_mark_clean: refcounts written and the dirty bit cleared before the feature goes.
      await markClean(st, undefined);
      if (st.header.incompatibleFeatures & INCOMPAT_DIRTY) {
        throw new BlockError("EIO", "Cannot turn lazy refcounts off: the image is still dirty", { node: st.node.name });
      }
    }
    await rewriteHeader(st, (n) => {
      n.compatibleFeatures = lazy ? n.compatibleFeatures | COMPAT_LAZY_REFCOUNTS : n.compatibleFeatures & ~COMPAT_LAZY_REFCOUNTS;
    });
    if (lazy) st.mode = "lazy";
    else if (st.mode === "lazy") st.mode = "ordered";
  });
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
 * reloads the header, L1 and refcount tables and drops its caches.
 */
export function checkQcow2Node(st: Qcow2State, opts: CheckOptions, reload: () => Promise<void>): Promise<CheckResult> {
  return st.lock.run(async () => {
    await writeback(st, undefined);
    await st.flushFiles(undefined);
    const result = await checkQcow2(st.file, opts);
    if (opts.repair) await reload();
    return result;
  });
}
