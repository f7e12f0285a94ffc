/**
 * Crash exploration for luks images: records a guest workload through
 * `recorder(guest) → luks → recorder(host) → memory`, then explores the
 * host log's crash states with three oracles:
 *
 * - header: the LUKS header still validates and the image's passphrase
 *   still unlocks it; a workload that never changes key slots must find the
 *   header area byte for byte as created. A passphrase added or erased by
 *   the workload must either unlock the same master key or be refused
 *   (EACCES), never anything else.
 * - durability: every sector the guest wrote decrypts to its value as of the
 *   last completed guest flush or to a value written after it (unwritten
 *   sectors decrypt to noise and have no expected value).
 * - recovery: the state opens read-write, takes a write in every 64 KiB and
 *   still passes the header oracle.
 *
 * @example
 * ```ts ignore
 * import { exploreLuks, LUKS_WORKLOADS } from "./luks.ts";
 * const r = await exploreLuks(LUKS_WORKLOADS[0], { explore: { maxStates: 50 } });
 * console.log(r.states, r.failures.length);
 * ```
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import { createImage, open } from "../../core/open.ts";
import { defineSecret, removeSecret } from "../../core/secrets.ts";
import "../../drivers/file.ts";
import "../../drivers/luks/mod.ts";
import "../../drivers/memory.ts";
import { getRecorder, type RecordedOp } from "../recorder.ts";
import { stateNode } from "./_capture.ts";
import { rng } from "./_image.ts";
import { type CrashOracle, durabilityOracle, type FormatSpec, readGuest, recoveryOracle } from "./oracles.ts";
import { runCrashExploration, type RunOptions, type RunResult } from "./run.ts";

/** A guest workload on a luks image. */
export interface LuksCrashWorkload {
  /** Name in reports. */
  name: string;
  /** Virtual size in bytes. */
  size: number;
  /** luks creation options besides the secret (`cipher-alg`, `cipher-mode`, ...). */
  create?: Record<string, string | number>;
  /** The workload adds or erases key slots (the header area may change). */
  changesKeyslots?: boolean;
  /**
   * Issues the guest requests. `ctx.main` and `ctx.other` are the secret ids
   * of the image's passphrase and a second one. Marks tell the header oracle
   * what the second passphrase must do from then on: `changing` before a
   * key slot change (anything allowed while it runs), `other-active` or
   * `other-erased` after it completed.
   */
  run(guest: BlockNode, rand: () => number, ctx: LuksWorkloadContext): Promise<void>;
}

/** What a workload's `run` gets besides the guest node. */
export interface LuksWorkloadContext {
  /** Secret id of the image's passphrase. */
  main: string;
  /** Secret id of a second passphrase. */
  other: string;
  /** Adds a mark to the guest log. */
  mark(label: "changing" | "other-active" | "other-erased"): void;
}

/** A recorded luks workload, ready to explore. */
export interface RecordedLuks {
  /** Host image bytes before the workload. */
  base: Uint8Array;
  /** Requests luks sent to its file. */
  hostLog: RecordedOp[];
  /** Requests the guest sent to luks. */
  guestLog: RecordedOp[];
  /** What the guest read before the workload (unwritten sectors: decrypted zeros). */
  guestBase: Uint8Array;
  /** How to open a state with the image's passphrase. */
  format: FormatSpec;
  /** The same with the workload's second passphrase. */
  otherFormat: FormatSpec;
  /** Payload offset: the header area is `base[0, payloadOffset)`. */
  payloadOffset: number;
}

async function allBytes(node: BlockNode): Promise<Uint8Array> {
  const out = new Uint8Array(node.length);
  if (out.length) await node.pread(0, out);
  return out;
}

/**
 * Runs `workload` on a fresh luks image (PBKDF2 at its 1000-iteration
 * minimum, so thousands of states stay cheap to unlock) and returns both
 * logs. `secrets` are ids defined for the exploration.
 */
export async function recordLuks(
  workload: LuksCrashWorkload,
  secrets: { main: string; other: string },
  opts: { seed?: number; unsafeHost?: boolean } = {},
): Promise<RecordedLuks> {
  const host = await open({ driver: "recorder", ...(opts.unsafeHost ? { cache: { "no-flush": true } } : {}), file: { driver: "memory" } });
  let guest: BlockNode | undefined;
  try {
    await createImage(`${workload.name}.luks`, "luks", workload.size, {
      options: { "key-secret": secrets.main, "iter-time": 1, ...workload.create },
      file: host,
    });
    const base = await allBytes(host);
    const format: FormatSpec = { driver: "luks", options: { "key-secret": secrets.main } };
    const guestBase = await readGuest(base, format);
    const hostRec = getRecorder(host);
    hostRec.clear();
    guest = await open({ driver: "recorder", file: { driver: "luks", "key-secret": secrets.main, file: host } });
    const luks = guest.primaryChild!;
    const payloadOffset = luks.primaryChild!.length - luks.length;
    const rec = getRecorder(guest);
    await workload.run(guest, rng(opts.seed ?? 1), { ...secrets, mark: (label) => void rec.mark(label) });
    return {
      base,
      hostLog: [...hostRec.log],
      guestLog: [...getRecorder(guest).log],
      guestBase,
      format,
      otherFormat: { driver: "luks", options: { "key-secret": secrets.other } },
      payloadOffset,
    };
  } finally {
    if (guest) await guest.close();
    else await host.close();
  }
}

async function guestOf(bytes: Uint8Array, format: FormatSpec): Promise<Uint8Array> {
  const file = await stateNode(bytes);
  try {
    await using node = await open({ ...format.options, driver: "luks", file }, { readOnly: true });
    return await allBytes(node);
  } finally {
    if (!file.closed) await file.close();
  }
}

/** What the second passphrase must do at a crash point: the last completed mark says (undefined: either). */
function otherExpected(rec: RecordedLuks, crashPoint: number): "other-active" | "other-erased" | undefined {
  let label: string | undefined;
  for (const op of rec.guestLog) if (op.op === "mark" && op.complete !== undefined && op.complete <= crashPoint) label = op.label;
  return label === "other-active" || label === "other-erased" ? label : undefined;
}

/**
 * The header oracle's check on one state's bytes: the header area unchanged
 * (unless key slots change), the image's passphrase opens it, and the second
 * passphrase opens the same master key or is refused — as the last mark
 * before `crashPoint` requires, when there is one.
 */
export async function luksHeaderCheck(
  bytes: Uint8Array,
  rec: RecordedLuks,
  keyslotsChange: boolean,
  crashPoint = -1,
): Promise<string | undefined> {
  if (!keyslotsChange) {
    for (let i = 0; i < rec.payloadOffset; i++) {
      if (bytes[i] !== rec.base[i]) return `header area byte ${i} changed (0x${rec.base[i].toString(16)} → 0x${bytes[i].toString(16)})`;
    }
  }
  let main: Uint8Array;
  try {
    main = await guestOf(bytes, rec.format);
  } catch (e) {
    return `the image's passphrase no longer opens it: ${e instanceof Error ? e.message : String(e)}`;
  }
  if (!keyslotsChange) return undefined;
  const want = otherExpected(rec, crashPoint);
  try {
    const other = await guestOf(bytes, rec.otherFormat);
    for (let i = 0; i < main.length; i++) {
      if (other[i] !== main[i]) return `the second passphrase unlocks a different master key (guest byte ${i} differs)`;
    }
    if (want === "other-erased") return "the second passphrase still opens the image after its key slot was erased";
  } catch (e) {
    if (!(e instanceof BlockError && e.code === "EACCES")) {
      return `the second passphrase fails with something else than EACCES: ${e instanceof Error ? e.message : String(e)}`;
    }
    if (want === "other-active") return "the second passphrase does not open the image although adding its key slot completed";
  }
  return undefined;
}

/** The oracles for a recorded luks workload. */
export function luksOracles(rec: RecordedLuks, workload: LuksCrashWorkload, opts: { recoveryEvery?: number } = {}): CrashOracle[] {
  const changes = workload.changesKeyslots ?? false;
  return [
    { name: "header", check: (bytes, state) => luksHeaderCheck(bytes, rec, changes, state.crashPoint) },
    durabilityOracle({ guestLog: rec.guestLog, guestBase: rec.guestBase, read: (b) => readGuest(b, rec.format), writtenOnly: true }),
    { ...recoveryOracle(rec.format, (b) => luksHeaderCheck(b, rec, true)), every: opts.recoveryEvery ?? 4 },
  ];
}

/** Options for {@linkcode exploreLuks}. */
export interface LuksExploreOptions {
  /** Workload seed (default 1). */
  seed?: number;
  /** Drop every flush below luks, to show the oracles catch it. */
  unsafeHost?: boolean;
  /** Run the recovery oracle on every n-th state (default 4). */
  recoveryEvery?: number;
  /** Exploration options. */
  explore?: RunOptions;
}

/** What {@linkcode exploreLuks} found, with the recording it explored. */
export interface LuksExploreResult extends RunResult {
  /** The recorded workload. */
  recorded: RecordedLuks;
}

/** Records `workload` and explores its crash states with the luks oracles. */
export async function exploreLuks(workload: LuksCrashWorkload, opts: LuksExploreOptions = {}): Promise<LuksExploreResult> {
  const tag = crypto.randomUUID().slice(0, 8);
  const secrets = { main: `x-crash-luks-${tag}-a`, other: `x-crash-luks-${tag}-b` };
  defineSecret(secrets.main, { data: "crash-passphrase-1" });
  defineSecret(secrets.other, { data: "crash-passphrase-2" });
  try {
    const rec = await recordLuks(workload, secrets, opts);
    const extraPoints = rec.guestLog.filter((o) => o.op === "flush" && o.complete !== undefined).map((o) => o.complete!);
    const r = await runCrashExploration(rec.base, rec.hostLog, luksOracles(rec, workload, opts), { ...opts.explore, extraPoints });
    return { ...r, recorded: rec };
  } finally {
    removeSecret(secrets.main);
    removeSecret(secrets.other);
  }
}

function fill(n: number, byte: number): Uint8Array {
  return new Uint8Array(n).fill(byte);
}

/** The standard luks workloads. */
export const LUKS_WORKLOADS: readonly LuksCrashWorkload[] = [
  {
    name: "luks-random",
    size: 64 * 1024,
    create: { "cipher-alg": "aes-128" },
    async run(g, rand) {
      for (let i = 0; i < 10; i++) {
        const len = 1 + Math.floor(rand() * 3000);
        const off = Math.floor(rand() * (g.length - len));
        await g.pwrite(off, fill(len, 0x10 + i));
        if (i % 3 === 2) await g.flush();
      }
      await g.flush();
    },
  },
  {
    name: "luks-overwrite-fua",
    size: 64 * 1024,
    create: { "cipher-alg": "aes-128", "cipher-mode": "cbc", "ivgen-alg": "essiv" },
    async run(g) {
      await g.pwrite(0, fill(8192, 0x21));
      await g.flush();
      await g.pwrite(1000, fill(3000, 0x22));
      await g.pwrite(4096, fill(512, 0x23), { fua: true });
      await g.pwrite(0, fill(8192, 0x24));
      await g.flush();
      await g.pwrite(512, fill(1024, 0x25));
    },
  },
  {
    name: "luks-zeroes-grow",
    size: 32 * 1024,
    create: { "cipher-alg": "aes-128", "cipher-mode": "ctr" },
    async run(g) {
      await g.pwrite(0, fill(16384, 0x31));
      await g.flush();
      await g.pwriteZeroes(2048, 4096);
      await g.truncate(64 * 1024);
      await g.pwrite(40 * 1024, fill(6000, 0x32));
      await g.flush();
      await g.pwriteZeroes(0, 512);
    },
  },
  {
    name: "luks-keyslots",
    size: 16 * 1024,
    create: { "cipher-alg": "aes-128", "cipher-mode": "cbc" },
    changesKeyslots: true,
    async run(g, _rand, ctx) {
      await g.pwrite(0, fill(4096, 0x41));
      await g.flush();
      ctx.mark("changing");
      await g.amend({ state: "active", "new-secret": ctx.other, keyslot: 6, "iter-time": 1 });
      ctx.mark("other-active");
      await g.pwrite(4096, fill(2048, 0x42));
      await g.flush();
      ctx.mark("changing");
      await g.amend({ state: "inactive", keyslot: 6 });
      ctx.mark("other-erased");
      await g.pwrite(8192, fill(1024, 0x43));
      await g.flush();
    },
  },
];
