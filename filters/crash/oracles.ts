/**
 * Oracles judge a crash state. Each is a plain object with a `check`
 * function returning a failure message (or undefined when the state is
 * fine), so any format plugs in: structure (is the image consistent?),
 * recovery (can it be written to and stay consistent?) and durability (is
 * every byte the guest flushed still there?) and bitmaps (does a dirty
 * bitmap that claims to be consistent cover every write?).
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import { open } from "../../core/open.ts";
import type { RecordedOp } from "../recorder.ts";
import { capturedBytes, stateNode } from "./_capture.ts";
import { WorkImage } from "./_image.ts";
import { classify, type CrashRecipe } from "./explorer.ts";
import { headerField, INCOMPAT_DIRTY } from "../../drivers/qcow2/header.ts";

/** Judges one crash state. */
export interface CrashOracle {
  /** Name used in reports. */
  readonly name: string;
  /** Returns why `bytes` (the state's image) is wrong, or undefined when it is fine. */
  check(bytes: Uint8Array, state: CrashRecipe): Promise<string | undefined> | string | undefined;
  /** Check only every n-th state (slow oracles; default 1 = all). */
  readonly every?: number;
}

/** How to open a format over a state's bytes: driver name plus driver options. */
export interface FormatSpec {
  /** Format driver (`"qcow2"`, `"raw"`). */
  driver: string;
  /** Extra options for the format node (`{ "lazy-refcounts": "on" }`). */
  options?: Record<string, unknown>;
}

/** Opens `format` over a fresh memory node holding `bytes`. */
export async function openState(bytes: Uint8Array, format: FormatSpec, readOnly = false): Promise<{ node: BlockNode; file: BlockNode }> {
  const file = await stateNode(bytes);
  try {
    const node = await open({ ...format.options, driver: format.driver, file }, { readOnly });
    return { node, file };
  } catch (e) {
    await file.close();
    throw e;
  }
}

/** Reads everything the guest sees in the state (the format's whole virtual disk). */
export async function readGuest(bytes: Uint8Array, format: FormatSpec): Promise<Uint8Array> {
  const { node } = await openState(bytes, format, true);
  try {
    const out = new Uint8Array(node.length);
    await node.pread(0, out);
    return out;
  } finally {
    await node.close();
  }
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Recovery oracle: opens the state read-write, writes one sector into every
 * allocated `granularity`-sized chunk (and into the first unallocated one, so
 * a new allocation is made too), closes, and runs `check` on the result.
 */
export function recoveryOracle(
  format: FormatSpec,
  check: (bytes: Uint8Array) => Promise<string | undefined>,
  granularity = 65536,
): CrashOracle {
  return {
    name: "recovery",
    async check(bytes) {
      let after: Uint8Array | undefined;
      let step = "open";
      try {
        const { node, file } = await openState(bytes, format);
        try {
          step = "write";
          const sector = new Uint8Array(512).fill(0xc3);
          let wroteFree = false;
          for (let off = 0; off < node.length; off += granularity) {
            const st = await node.blockStatus(off, Math.min(granularity, node.length - off));
            const n = Math.min(512, node.length - off);
            if (st.allocated && st.depth === 0) await node.pwrite(off, sector.subarray(0, n));
            else if (!wroteFree) {
              await node.pwrite(off, sector.subarray(0, n));
              wroteFree = true;
            }
          }
          step = "flush";
          await node.flush();
        } finally {
          step = "close";
          await node.close();
        }
        after = capturedBytes(file);
      } catch (e) {
        return `recovery failed at ${step}: ${describe(e)}`;
      }
      if (!after) return "recovery: image content was not captured";
      const msg = await check(after);
      return msg === undefined ? undefined : `after recovery writes: ${msg}`;
    },
  };
}

/** Options for {@linkcode durabilityOracle}. */
export interface DurabilityOptions {
  /** The guest-level log (a recorder above the format), same clock as the host log. */
  guestLog: readonly RecordedOp[];
  /** What the guest saw before the log started (zeros for a fresh image; the backing content for an overlay). */
  guestBase: Uint8Array;
  /** Reads what the guest sees in a state. */
  read: (bytes: Uint8Array) => Promise<Uint8Array>;
  /** Strict: a byte touched by an in-flight write must hold its old value or a value written to it (default true). */
  strict?: boolean;
  /**
   * Check only bytes a guest write or write-zeroes in the log covers and no
   * discard touches (formats whose unwritten or discarded sectors read as
   * noise, such as luks: what was never written has no expected value).
   */
  writtenOnly?: boolean;
}

/**
 * Durability oracle: after a crash at clock T, every byte holds its value as
 * of the last guest flush completed by T (FUA writes count when they
 * complete), or a value written to it by a guest request not yet durable at
 * T. A guest discard allows zeros and the pre-log value. Non-strict mode
 * allows anything where a non-durable request wrote.
 */
export function durabilityOracle(opts: DurabilityOptions): CrashOracle {
  const strict = opts.strict ?? true;
  const checked = opts.writtenOnly ? writtenBytes(opts.guestLog) : undefined;
  const cache = new Map<number, { durable: Uint8Array; pending: RecordedOp[] }>();
  const expected = (t: number) => {
    let e = cache.get(t);
    if (!e) {
      const { durable, pending } = classify(opts.guestLog, t);
      const img = new WorkImage(opts.guestBase);
      for (const i of durable) img.apply(opts.guestLog[i]);
      e = { durable: img.bytes.slice(), pending: pending.map((i) => opts.guestLog[i]) };
      if (cache.size > 256) cache.clear();
      cache.set(t, e);
    }
    return e;
  };
  return {
    name: "durability",
    async check(bytes, state) {
      let guest: Uint8Array;
      try {
        guest = await opts.read(bytes);
      } catch (e) {
        return `cannot read the guest disk: ${describe(e)}`;
      }
      const { durable, pending } = expected(state.crashPoint);
      const n = Math.min(guest.length, durable.length);
      for (let i = 0; i < n; i++) {
        const v = guest[i];
        if (v === durable[i] || (checked && !checked[i])) continue;
        let ok = false;
        for (const op of pending) {
          if (op.op === "truncate" || i < op.offset || i >= op.offset + op.length) continue;
          if (!strict) ok = true;
          else if (op.op === "write") ok = op.data![i - op.offset] === v;
          else if (op.op === "write-zeroes") ok = v === 0;
          else ok = v === 0 || v === (opts.guestBase[i] ?? 0);
          if (ok) break;
        }
        if (!ok) {
          const sector = Math.floor(i / 512);
          return `guest byte ${i} (sector ${sector}) is 0x${v.toString(16)}, expected 0x${
            durable[i].toString(16)
          } (value as of the last completed guest flush) or a value written after it`;
        }
      }
      return undefined;
    },
  };
}

/** Marks the bytes written (or zeroed) by some request of `log` and discarded by none. */
function writtenBytes(log: readonly RecordedOp[]): Uint8Array {
  const end = log.reduce((m, op) => (op.op === "truncate" ? m : Math.max(m, op.offset + op.length)), 0);
  const mask = new Uint8Array(end);
  for (const op of log) if (op.op === "write" || op.op === "write-zeroes") mask.fill(1, op.offset, op.offset + op.length);
  for (const op of log) if (op.op === "discard") mask.fill(0, op.offset, op.offset + op.length);
  return mask;
}

/** Runs `qemu-img check` on a state written to a temp file; returns the exit code and parsed output. */
export async function qemuImgCheck(bytes: Uint8Array, format: string, dir: string, repair = false): Promise<{ code: number; out: string }> {
  const path = `${dir}/state-${crypto.randomUUID()}.${format}`;
  await Deno.writeFile(path, bytes);
  try {
    const args = ["check", "-f", format, "--output=json", ...(repair ? ["-r", "all"] : []), path];
    const r = await new Deno.Command("qemu-img", { args, stdout: "piped", stderr: "piped" }).output();
    const dec = new TextDecoder();
    return { code: r.code, out: (dec.decode(r.stdout) + dec.decode(r.stderr)).trim() };
  } finally {
    await Deno.remove(path).catch(() => {});
  }
}

/** Whether a qcow2 image has the dirty bit set (version 3 header, incompatible feature bit 0). */
export function qcow2Dirty(bytes: Uint8Array): boolean {
  if (bytes.length < 80) return false;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = v.getUint32(headerField("version").offset);
  // The low half of the 64-bit incompatible feature word holds the dirty bit.
  return version >= 3 && (v.getUint32(headerField("incompatibleFeatures").offset + 4) & INCOMPAT_DIRTY) !== 0;
}

/**
 * Structure check with `qemu-img check` (exit 0 clean, 3 leaks only: both
 * fine). A dirty image (lazy refcounts) is repaired with `-r all` on a copy
 * and must then be clean. Returns a failure message or undefined.
 */
export async function qemuImgStructure(bytes: Uint8Array, dir: string): Promise<string | undefined> {
  if (qcow2Dirty(bytes)) {
    const path = `${dir}/dirty-${crypto.randomUUID()}.qcow2`;
    await Deno.writeFile(path, bytes);
    try {
      const run = async (args: string[]) => {
        const r = await new Deno.Command("qemu-img", { args, stdout: "piped", stderr: "piped" }).output();
        const dec = new TextDecoder();
        return { code: r.code, out: (dec.decode(r.stdout) + dec.decode(r.stderr)).trim() };
      };
      const fix = await run(["check", "-f", "qcow2", "-r", "all", path]);
      if (fix.code !== 0 && fix.code !== 3) return `qemu-img check -r all on the dirty image exited ${fix.code}: ${fix.out}`;
      const again = await run(["check", "-f", "qcow2", path]);
      if (again.code !== 0) return `dirty image did not repair to clean: qemu-img check exited ${again.code}: ${again.out}`;
      return undefined;
    } finally {
      await Deno.remove(path).catch(() => {});
    }
  }
  const r = await qemuImgCheck(bytes, "qcow2", dir);
  if (r.code === 0 || r.code === 3) return undefined;
  return `qemu-img check exited ${r.code}: ${r.out}`;
}

/** Structure oracle from a check function (sampled every `every` states). */
export function structureOracle(
  name: string,
  check: (bytes: Uint8Array) => Promise<string | undefined> | string | undefined,
  every = 1,
): CrashOracle {
  if (!Number.isInteger(every) || every < 1) {
    throw new BlockError("EINVAL", `Invalid oracle sampling interval ${every}: it must be a positive integer`);
  }
  return { name, every, check: (bytes) => check(bytes) };
}

/** Options for {@linkcode bitmapOracle}. */
export interface BitmapOracleOptions {
  /** How to open a state. */
  format: FormatSpec;
  /** The guest-level log (same clock as the host log). */
  guestLog: readonly RecordedOp[];
  /** The host image before the log (what `unchanged` bitmaps are compared with). */
  base: Uint8Array;
  /** What the guest saw before the log. */
  guestBase: Uint8Array;
  /**
   * Bitmaps recording from the start of the log: a consistent one is dirty
   * wherever the state's guest content differs from `guestBase` (what an
   * incremental backup needs from it).
   */
  covering?: readonly string[];
  /** Disabled bitmaps: a consistent one holds exactly what it held before the log. */
  unchanged?: readonly string[];
  /** Bitmaps removed during the log: once the guest has begun, they may remain only as inconsistent (in use). */
  neverConsistent?: readonly string[];
}

/**
 * Bitmap oracle: opens the state read-only and asks its dirty bitmaps. A
 * bitmap that is consistent (not in use) must not miss a change: every
 * guest byte whose content differs from what it was before the log lies in
 * a dirty chunk of each `covering` bitmap, so an incremental backup from it
 * restores the state. A bitmap may be lost only with all the others (an
 * extension left stale), never alone.
 */
export function bitmapOracle(opts: BitmapOracleOptions): CrashOracle {
  let baseRanges: Map<string, string> | undefined;
  const ranges = async (node: BlockNode, name: string) => {
    const out: string[] = [];
    for await (const e of node.bitmaps.dirtyRanges(name)) out.push(`${e.offset}+${e.length}`);
    return out.join(",");
  };
  return {
    name: "bitmaps",
    async check(bytes, state) {
      if (!baseRanges) {
        baseRanges = new Map();
        const { node } = await openState(opts.base, opts.format, true);
        try {
          for (const n of opts.unchanged ?? []) baseRanges.set(n, await ranges(node, n));
        } finally {
          await node.close();
        }
      }
      let opened;
      try {
        opened = await openState(bytes, opts.format, true);
      } catch (e) {
        return `cannot open the state: ${describe(e)}`;
      }
      const node = opened.node;
      try {
        const list = await node.bitmaps.list();
        const find = (n: string) => list.find((b) => b.name === n);
        for (const n of [...(opts.covering ?? []), ...(opts.unchanged ?? [])]) {
          if (!find(n) && list.length) return `bitmap '${n}' is missing while others remain`;
        }
        // Before the first guest request the image may still be as it was (the open had not marked anything in use).
        const begun = opts.guestLog.some((op) => op.submit <= state.crashPoint);
        for (const n of opts.neverConsistent ?? []) {
          if (begun && find(n) && !find(n)!.inconsistent) return `bitmap '${n}' was removed, yet appears consistent`;
        }
        for (const n of opts.unchanged ?? []) {
          if (!find(n) || find(n)!.inconsistent) continue;
          const now = await ranges(node, n);
          if (now !== baseRanges.get(n)) return `disabled bitmap '${n}' changed: ${now} instead of ${baseRanges.get(n)}`;
        }
        const covering = (opts.covering ?? []).filter((n) => find(n) && !find(n)!.inconsistent);
        if (covering.length) {
          const guest = new Uint8Array(node.length);
          await node.pread(0, guest);
          for (const n of covering) {
            for (let i = 0; i < guest.length; i++) {
              if (guest[i] === (opts.guestBase[i] ?? 0)) continue;
              const e = await node.bitmaps.extent(n, i, 1);
              if (!e.dirty) return `bitmap '${n}' is consistent but clean at byte ${i}, which changed (0x${guest[i].toString(16)})`;
              // Skip to the end of the dirty run.
              i += (await node.bitmaps.extent(n, i, guest.length - i)).length - 1;
            }
          }
        }
        return undefined;
      } catch (e) {
        return `reading the bitmaps failed: ${describe(e)}`;
      } finally {
        await node.close();
      }
    },
  };
}
