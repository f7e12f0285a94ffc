/**
 * Patches one metadata field of a qcow2 image in place, for
 * tests/testdata/make.sh (the damaged fixtures): each command names the
 * structure it edits, found from the header as a reader would, so the
 * recipe in make.sh says what was damaged rather than a raw offset.
 *
 * ```sh
 * deno run -A tests/_helpers/fixture_patch.ts refcount16 img.qcow2 3 2
 * ```
 *
 * Commands (16-bit refcounts, the first refcount block; L2 = the table of L1 entry 0):
 * - `refcount16 IMG CLUSTER VALUE`: sets the refcount of host cluster CLUSTER
 * - `refcount16-l2 IMG DELTA VALUE`: the same for the cluster DELTA after the first L2 table
 * - `refcount16-data IMG VALUE`: the same for the data cluster of L2 entry 0
 * - `l2-set IMG INDEX VALUE`: sets L2 entry INDEX (hex or decimal)
 * - `l2-copy IMG FROM TO`: copies L2 entry FROM over entry TO
 * - `reftable-add IMG INDEX ADD`: adds ADD to refcount table entry INDEX
 * - `snaptable IMG OFFSET HEXBYTES`: writes bytes at OFFSET in the snapshot table
 * - `header-bit IMG OFFSET BIT set|clear`: sets or clears bit BIT of the u64 header field at OFFSET
 * - `damage IN SEED OUT`: writes IN with the check differential's seeded damage to OUT
 *
 * @module
 */

import { damage } from "../drivers/qcow2/_damage.ts";

const L2_MASK = 0x00fffffffffffe00n;

function u64(v: DataView, at: number): number {
  return Number(v.getBigUint64(at));
}

function firstL2(v: DataView): number {
  return Number(v.getBigUint64(u64(v, 40)) & L2_MASK);
}

function setRefcount16(v: DataView, cluster: number, value: number): void {
  const block = u64(v, u64(v, 48)) & ~0x1ff;
  v.setUint16(block + cluster * 2, value);
}

/** Applies one patch command to the image bytes in `v`. */
export function applyPatch(v: DataView, cmd: string, args: string[]): void {
  const cs = 2 ** v.getUint32(20);
  const n = (i: number) => Number(args[i]);
  switch (cmd) {
    case "refcount16":
      return setRefcount16(v, n(0), n(1));
    case "refcount16-l2":
      return setRefcount16(v, firstL2(v) / cs + n(0), n(1));
    case "refcount16-data":
      return setRefcount16(v, Number(v.getBigUint64(firstL2(v)) & L2_MASK) / cs, n(0));
    case "l2-set":
      return v.setBigUint64(firstL2(v) + n(0) * 8, BigInt(args[1]));
    case "l2-copy":
      return v.setBigUint64(firstL2(v) + n(1) * 8, v.getBigUint64(firstL2(v) + n(0) * 8));
    case "reftable-add": {
      const at = u64(v, 48) + n(0) * 8;
      return v.setBigUint64(at, v.getBigUint64(at) + BigInt(args[1]));
    }
    case "snaptable": {
      const at = u64(v, 64) + n(0);
      const hex = args[1];
      for (let i = 0; i < hex.length / 2; i++) v.setUint8(at + i, parseInt(hex.slice(2 * i, 2 * i + 2), 16));
      return;
    }
    case "header-bit": {
      const bit = 1n << BigInt(args[1]);
      const old = v.getBigUint64(n(0));
      return v.setBigUint64(n(0), args[2] === "set" ? old | bit : old & ~bit);
    }
  }
  throw new Error(`fixture_patch: unknown command '${cmd}'`);
}

if (import.meta.main) {
  const [cmd, path, ...args] = Deno.args;
  const bytes = await Deno.readFile(path);
  if (cmd === "damage") {
    damage(bytes, Number(args[0]));
    await Deno.writeFile(args[1], bytes);
  } else {
    applyPatch(new DataView(bytes.buffer), cmd, args);
    await Deno.writeFile(path, bytes);
  }
}
