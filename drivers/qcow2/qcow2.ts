/**
 * The qcow2 format driver: opening (header validation, backing and data file
 * children, cache sizing, dirty-image repair, autoclear bits; `_open.ts`)
 * and its registration. The request callbacks are {@linkcode Qcow2Instance}
 * (`_instance.ts`).
 *
 * Options (QEMU names): `l2-cache-size`, `l2-cache-entry-size`, `refcount-cache-size`,
 * `cache-size`, `lazy-refcounts`, `metadata-mode` (`ordered` default, or
 * `metadata-sync`), `bitmap-store` (`close` default, as QEMU, or `flush`:
 * persistent bitmaps are stored at every flush too; see `_bitmaps.ts`),
 * `overlap-check` (`none`, `constant`, `cached` default,
 * `all`, or an object with `template` and per-structure booleans: see
 * `_overlap.ts`), `x-wrong-order` (tests only), `encrypt.key-secret` and
 * `encrypt.format` (encrypted images, see `_crypto.ts`), `snapshot.id` /
 * `snapshot.name` (a read-only view of an internal snapshot, as qemu-img
 * convert -l opens it); children `file`, `backing` (null disables it),
 * `data-file`.
 *
 * @module
 */

import { optEnum } from "../../core/options.ts";
import { registerDriver } from "../../core/registry.ts";
import type { BlockDriver, DriverInstance, OpenContext } from "../../core/node.ts";
import { checkQcow2Create, createQcow2 } from "./create.ts";
import { QCOW2_AMEND_HELP, QCOW2_CREATE_HELP } from "./_image_options.ts";
import { measureQcow2 } from "./measure.ts";
import { QCOW2_MAGIC } from "./header.ts";
import { openQcow2State, QCOW2_OPTIONS } from "./_open.ts";
import { Qcow2Bitmaps } from "./_bitmaps.ts";
import { Qcow2Instance } from "./_instance.ts";

export { Qcow2Instance } from "./_instance.ts";

async function openQcow2(ctx: OpenContext): Promise<DriverInstance> {
  const st = await openQcow2State(ctx);
  // Bitmaps are loaded (and marked in use when writable); autoclear bits
  // blkgraph cannot maintain (raw data file, unknown ones) are cleared then.
  const store = optEnum(ctx.options, "bitmap-store", "qcow2", ["close", "flush"] as const) ?? "close";
  try {
    const bitmaps = await Qcow2Bitmaps.open(st, { writable: !ctx.readOnly, check: ctx.check ?? false, storeOnFlush: store === "flush" });
    return new Qcow2Instance(st, bitmaps);
  } catch (e) {
    await st.crypto?.close();
    throw e;
  }
}

/** The qcow2 format driver. */
export const qcow2Driver: BlockDriver = {
  name: "qcow2",
  kind: "format",
  options: QCOW2_OPTIONS,
  strongOptions: ["encrypt.key-secret"],
  probe(head: Uint8Array): number {
    if (head.length < 8) return 0;
    const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
    return v.getUint32(0) === QCOW2_MAGIC && v.getUint32(4) >= 2 ? 100 : 0;
  },
  open: openQcow2,
  create: createQcow2,
  checkCreate: (ctx) => void checkQcow2Create(ctx),
  createOptions: QCOW2_CREATE_HELP,
  // What amend changes (`_amend.ts`, every option qemu-img 7.2 amends): the common ones and the encryption key slots.
  amendOptions: QCOW2_AMEND_HELP,
  measure: measureQcow2,
};

registerDriver(qcow2Driver);
