/**
 * One fuzz case from start to verdict: the mutated image is written next to
 * copies of its seed's companion files; QEMU converts it to raw (the
 * reference reading); blkgraph reads, writes, checks and repairs copies of it
 * in the child process; qemu-io does the same writes on another copy; QEMU
 * reads what blkgraph wrote; the outcome is classified.
 *
 * Classes (the first that applies wins): `wrong-readback` (a write reported
 * success and reads back wrong, through blkgraph or through QEMU, on an
 * image check finds consistent), `corrupted-by-write` (`qemu-img check`
 * finds corruption or leaks after blkgraph's writes to such an image),
 * `bad-repair` (blkgraph's repair says the image is consistent and
 * `qemu-img check` finds corruption), `differs` (both accepted the image and
 * read it differently), `exception` (anything but a BlockError), `hang`,
 * `memory`, `readback-on-corrupt` (a write reads back wrong on an image
 * whose refcounts check finds inconsistent: QEMU allocates the same in-use
 * clusters, see tests/fuzz/README.md), `blockerror` (blkgraph refused with a
 * BlockError), `clean`.
 *
 * @module
 */

import { gzipSync } from "node:zlib";
import { applyMutations, mutate, type Mutation, Rng } from "./_mutate.ts";
import { type Runner, type RunResult, runTool } from "./_proc.ts";
import type { CaseRequest, CaseWrite, Outcome } from "./_runner.ts";
import { qemuImage, type Seed } from "./_seeds.ts";

/** The comparison window (bytes from guest offset 0). */
export const WINDOW = 8 << 20;

/** Everything needed to replay a case. */
export interface CaseSpec {
  /** Case number. */
  id: number;
  /** Seed family. */
  family: string;
  /** Mutations applied to the seed image. */
  mutations: Mutation[];
  /** Writes (guest offset, length, pattern). */
  writes: CaseWrite[];
  /** Run blkgraph's check on the image. */
  check: boolean;
  /** Run blkgraph's `check -r all` on a copy (then `qemu-img check`). */
  repair: boolean;
}

/** The verdict on one case. */
export interface Verdict {
  /** The case. */
  spec: CaseSpec;
  /** Outcome class. */
  cls: string;
  /** What happened, for grouping (class and normalised message). */
  signature: string;
  /** Detail lines. */
  detail: string[];
  /** QEMU accepted the image (its conversion worked). */
  qemuAccepted: boolean;
  /** blkgraph accepted the image (open and read worked). */
  oursAccepted: boolean;
  /** qemu-io's writes: ok, failed, or not run. */
  qemuWrites: "ok" | "failed" | "skipped";
  /** Ran with the QEMU differential. */
  deep?: boolean;
  /** Wall time, ms. */
  ms: number;
  /** CPU time of blkgraph's side, ms. */
  cpuMs: number;
  /** Peak resident memory of blkgraph's side, bytes. */
  rssPeak: number;
  /** BlockError messages blkgraph gave (normalised). */
  errors: string[];
}

/** A 32-bit mix of the run seed and case number. */
export function caseSeed(seed: number, id: number): number {
  // Each half mixed on its own first: a plain XOR of seed and id made seeds
  // that differ in a few low bits run the same cases (seed 2025 case 281 was
  // seed 2026 case 282).
  return mix32((mix32(seed >>> 0) + mix32((id + 0x632be5ab) >>> 0)) >>> 0);
}

/** The murmur3 finalizer: a bijection on 32-bit integers that spreads every input bit. */
function mix32(x: number): number {
  let h = x >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** Generates case `id` of a run. */
export function generateCase(
  seed: number,
  id: number,
  seeds: Seed[],
  images: Map<string, Uint8Array>,
): { spec: CaseSpec; image: Uint8Array } {
  const r = new Rng(caseSeed(seed, id));
  const s = r.pick(seeds);
  const base = images.get(s.family.name)!;
  const { image, mutations } = mutate(r, base);
  const size = Number(new DataView(base.buffer, base.byteOffset).getBigUint64(24));
  const cs = 2 ** new DataView(base.buffer, base.byteOffset).getUint32(20);
  const writes: CaseWrite[] = [];
  const n = 1 + r.int(3);
  for (let i = 0; i < n; i++) {
    const len = r.chance(0.5) ? Math.min(cs, 65536) : 1 + r.int(Math.min(2 * cs, 131072));
    const aligned = r.chance(0.6);
    const max = Math.max(1, size - len);
    let off = r.int(max);
    if (aligned) off = Math.min(max - 1, Math.floor(off / Math.min(cs, 65536)) * Math.min(cs, 65536));
    writes.push({ off: Math.max(0, off), len, byte: 1 + r.int(255) });
  }
  return { spec: { id, family: s.family.name, mutations, writes, check: true, repair: r.chance(0.25) }, image };
}

/** Rebuilds a case's image from its seed. */
export function caseImage(spec: CaseSpec, images: Map<string, Uint8Array>): Uint8Array {
  return applyMutations(images.get(spec.family)!, spec.mutations);
}

/** Per-worker directories. */
export interface WorkDirs {
  /** Root of this worker's directories. */
  root: string;
}

async function populate(dir: string, seed: Seed, image: Uint8Array): Promise<void> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeFile(`${dir}/img.qcow2`, image);
  for (const c of seed.companions) await Deno.copyFile(`${seed.dir}/${c}`, `${dir}/${c}`);
}

function norm(message: string): string {
  return message.replace(/0x[0-9a-f]+/gi, "N").replace(/\d+/g, "N").replace(/'[^']*'/g, "'…'").slice(0, 160);
}

function blockErrors(o: (Outcome | undefined)[]): string[] {
  return o.filter((x) => x?.error && x.error.code).map((x) => `${x!.error!.code}: ${norm(x!.error!.message)}`);
}

function exceptions(o: (Outcome | undefined)[]): string[] {
  return o.filter((x) => x?.error && !x.error.code).map((x) => `${x!.error!.name}: ${norm(x!.error!.message)}`);
}

/**
 * What QEMU reads in the window (`qemu-img dd` of the first WINDOW bytes, which
 * stops at the virtual size): a raw file, or why QEMU refused the image.
 */
async function qemuRead(dir: string, nice: number, enc: boolean | undefined): Promise<{ raw?: string; why?: string }> {
  const raw = `${dir}/out.raw`;
  const img = qemuImage("img.qcow2", enc);
  const args = ["dd", "-U", ...img.pre, ...fmt(enc), "-O", "raw", "bs=65536", `count=${WINDOW / 65536}`, `if=${img.name}`, "of=out.raw"];
  const r = await runTool("qemu-img", args, { seconds: 30, asMb: 4096, cwd: dir, nice });
  if (r.code !== 0) return { why: r.timedOut ? "qemu-img dd timed out" : r.stderr.trim().split("\n")[0] };
  return { raw };
}

/** qemu-img check's corruption and leak counts (JSON output), or undefined when it could not check. */
async function qemuCheckCounts(
  dir: string,
  name: string,
  nice: number,
  enc: boolean | undefined,
): Promise<{ corruptions: number; leaks: number } | undefined> {
  const img = qemuImage(name, enc);
  const c = await runTool("qemu-img", ["check", "-U", ...img.pre, "--output=json", ...fmt(enc), img.name], {
    seconds: 30,
    asMb: 4096,
    cwd: dir,
    nice,
  });
  try {
    const j = JSON.parse(c.stdout);
    return { corruptions: j.corruptions ?? 0, leaks: j.leaks ?? 0 };
  } catch {
    return undefined;
  }
}

/** The counts of the original image (in `dir`) extended to `length` with its autoclear bits cleared. */
async function referenceCounts(
  dir: string,
  length: number,
  nice: number,
  enc: boolean | undefined,
): Promise<{ corruptions: number; leaks: number } | undefined> {
  const img = await Deno.readFile(`${dir}/img.qcow2`);
  const out = new Uint8Array(Math.max(length, img.length));
  out.set(img);
  const v = new DataView(out.buffer);
  if (v.getUint32(4) >= 3 && out.length >= 96) v.setBigUint64(88, 0n);
  await Deno.writeFile(`${dir}/ref.qcow2`, out);
  return await qemuCheckCounts(dir, "ref.qcow2", nice, enc);
}

/** `-f qcow2`, but not with a `json:` name (it names the driver). */
function fmt(enc: boolean | undefined): string[] {
  return enc ? [] : ["-f", "qcow2"];
}

function ioCommands(writes: CaseWrite[]): string[] {
  return writes.flatMap((w) => ["-c", `write -P ${w.byte} ${w.off} ${w.len}`, "-c", `read -P ${w.byte} ${w.off} ${w.len}`]);
}

/** Bytes of `raw` at the successful writes that are not the written pattern (first offset), or undefined. */
async function wrongInRaw(raw: string, writes: CaseWrite[], ok: boolean[]): Promise<number | undefined> {
  const data = await Deno.readFile(raw);
  const exp = new Map<number, number>();
  writes.forEach((w, i) => {
    for (let o = w.off; o < w.off + w.len; o++) {
      if (ok[i]) exp.set(o, w.byte);
      else exp.delete(o);
    }
  });
  for (const [o, b] of exp) if (o < data.length && data[o] !== b) return o;
  return undefined;
}

/** A verdict under construction; `set` raises its class when `cls` ranks higher. */
function newVerdict(spec: CaseSpec, res: Pick<RunResult, "cpuMs" | "rssPeak">, qemuAccepted: boolean): Verdict & {
  set(cls: string, sig: string, line: string): void;
} {
  const v = {
    spec,
    cls: "clean",
    signature: "clean",
    detail: [] as string[],
    qemuAccepted,
    oursAccepted: false,
    qemuWrites: "skipped" as Verdict["qemuWrites"],
    ms: 0,
    cpuMs: res.cpuMs ?? 0,
    rssPeak: res.rssPeak,
    errors: [] as string[],
    set(cls: string, sig: string, line: string) {
      if (RANK.indexOf(cls) < RANK.indexOf(v.cls)) {
        v.cls = cls;
        v.signature = `${cls}: ${sig}`;
      }
      v.detail.push(line);
    },
  };
  return v;
}

const RANK = [
  "wrong-readback",
  "corrupted-by-write",
  "bad-repair",
  "differs",
  "exception",
  "hang",
  "memory",
  "readback-on-corrupt",
  "blockerror",
  "clean",
];

/** Judges what blkgraph did (the reply, or why there is none): every class but the QEMU-side ones. */
export function judge(spec: CaseSpec, res: RunResult, qemuAccepted: boolean, detail: string[] = []): Verdict & {
  set(cls: string, sig: string, line: string): void;
} {
  const v = newVerdict(spec, res, qemuAccepted);
  v.detail.push(...detail);
  const rep = res.reply;
  if (!rep) {
    const why = res.killed ?? "crash";
    v.set(
      why === "crash" ? "exception" : why,
      why,
      `${why} after ${Math.round(res.ms)} ms (wall), rss ${res.rssPeak >> 20} MiB; ${res.stderr ?? ""}`,
    );
    return v;
  }
  v.oursAccepted = rep.open.ok && !!rep.read?.ok;
  const outcomes = [rep.open, rep.read, rep.rwOpen, ...(rep.writes ?? []), rep.close, rep.reopen, rep.check, rep.repair];
  v.errors = blockErrors(outcomes);
  for (const e of exceptions(outcomes)) v.set("exception", e, e);
  for (const e of v.errors) v.set("blockerror", e, e);
  if (rep.diffAt !== undefined && rep.diffAt >= 0) {
    v.set("differs", "read differs from qemu-img convert", `read differs from QEMU at guest offset ${rep.diffAt}`);
  }
  // An image whose refcounts already say that clusters in use are free
  // (check finds corruptions) can get those clusters allocated again, by
  // QEMU as by blkgraph: a write there may land on other guest data. That
  // is told apart from a write going wrong on a consistent image.
  const inconsistent = (rep.check?.corruptions ?? 0) > 0 || (rep.check?.checkErrors ?? 0) > 0;
  const wrong = inconsistent ? "readback-on-corrupt" : "wrong-readback";
  if (rep.readbackWrong !== undefined) {
    v.set(wrong, "write reads back wrong (same open)", `readback wrong at ${rep.readbackWrong}`);
  }
  if (rep.reopenWrong !== undefined) {
    v.set(wrong, "write reads back wrong after reopen", `reopen readback wrong at ${rep.reopenWrong}`);
  }
  return v;
}

/** Writes the case's files into a fresh `dirs.root/A`, `B` and (for a repair) `D`; returns blkgraph's request. */
export async function prepareCase(spec: CaseSpec, image: Uint8Array, seed: Seed, root: string, qemuRaw?: string): Promise<CaseRequest> {
  const A = `${root}/A`, B = `${root}/B`, D = `${root}/D`;
  if (qemuRaw === undefined) await populate(A, seed, image); // else A holds the image and QEMU's reading of it already
  await populate(B, seed, image);
  if (spec.repair) await populate(D, seed, image);
  return {
    id: spec.id,
    ro: `${A}/img.qcow2`,
    window: WINDOW,
    qemuRaw,
    rw: `${B}/img.qcow2`,
    writes: spec.writes,
    check: `${A}/img.qcow2`,
    repair: spec.repair ? `${D}/img.qcow2` : undefined,
    encrypted: seed.family.encrypted,
  };
}

/** Runs one case end to end, with QEMU as the reference when `opts.qemu`. */
export async function runOneCase(
  spec: CaseSpec,
  image: Uint8Array,
  seed: Seed,
  runner: Runner,
  dirs: WorkDirs,
  opts: { qemu: boolean; budgetMs: number; budgetMb: number; nice: number },
): Promise<Verdict> {
  const t0 = performance.now();
  const A = `${dirs.root}/A`, B = `${dirs.root}/B`, C = `${dirs.root}/C`, D = `${dirs.root}/D`;
  await populate(A, seed, image);
  const enc = seed.family.encrypted;
  const cImg = qemuImage("img.qcow2", enc);
  const detail: string[] = [];
  let q: { raw?: string; why?: string } = {};
  if (opts.qemu) {
    q = await qemuRead(A, opts.nice, enc);
    if (q.why) detail.push(`qemu: ${q.why}`);
  }
  const req = await prepareCase(spec, image, seed, dirs.root, q.raw);
  const res: RunResult = await runner.run(req, opts.budgetMs, opts.budgetMb);
  const v = judge(spec, res, q.raw !== undefined, detail);
  v.deep = opts.qemu;
  const rep = res.reply;
  if (!rep || !opts.qemu) {
    v.ms = performance.now() - t0;
    return v;
  }
  const writes = rep.writesUsed ?? spec.writes;
  const okWrites = (rep.writes ?? []).map((w) => w.ok);
  if (okWrites.some(Boolean) && rep.close?.ok) {
    // An image check found consistent stays consistent through blkgraph's writes (qemu-img check says so).
    const consistent = rep.check?.ok && rep.check.corruptions === 0 && rep.check.leaks === 0 && rep.check.checkErrors === 0;
    if (consistent) {
      const after = await qemuCheckCounts(B, "img.qcow2", opts.nice, enc);
      if (after && (after.corruptions > 0 || after.leaks > 0)) {
        // What was there before the writes, as QEMU sees it once the file is as long and the autoclear
        // bits are cleared (blkgraph's read-write open clears them: QEMU then ignores the bitmaps, whose
        // clusters it counts as leaked) — refcounts past the old end of the file count from then on.
        const before = await referenceCounts(A, (await Deno.stat(`${B}/img.qcow2`)).size, opts.nice, enc);
        if (!before || after.corruptions > before.corruptions || after.leaks > before.leaks) {
          const what = after.corruptions > (before?.corruptions ?? 0) ? "corruption" : "leaks";
          v.set(
            "corrupted-by-write",
            `qemu-img check finds ${what} after blkgraph's writes`,
            `after writes: ${JSON.stringify(after)}, before: ${JSON.stringify(before)}`,
          );
        }
      }
    }
    // What QEMU reads where blkgraph wrote.
    const qb = await qemuRead(B, opts.nice, enc);
    if (qb.raw) {
      const wrong = await wrongInRaw(qb.raw, writes, okWrites);
      const inconsistent = (rep.check?.corruptions ?? 0) > 0 || (rep.check?.checkErrors ?? 0) > 0;
      if (wrong !== undefined) {
        v.set(
          inconsistent ? "readback-on-corrupt" : "wrong-readback",
          "QEMU reads blkgraph's write wrong",
          `QEMU reads blkgraph's write wrong at ${wrong}`,
        );
      }
    } else if (q.raw) v.detail.push(`QEMU no longer opens the image after blkgraph wrote: ${qb.why}`);
  }
  if (q.raw && writes.length) {
    await populate(C, seed, image);
    const r = await runTool("qemu-io", [...cImg.pre, ...ioCommands(writes), cImg.name], {
      seconds: 30,
      asMb: 4096,
      cwd: C,
      nice: opts.nice,
    });
    const failed = r.code !== 0 || /failed|verification/.test(r.stdout);
    v.qemuWrites = failed ? "failed" : "ok";
    if (!failed && (v.cls === "wrong-readback" || v.cls === "readback-on-corrupt")) {
      // Does QEMU lose a write on this image too? Read back, after all the writes, those no later write overlaps.
      const last = writes.filter((w, i) => !writes.slice(i + 1).some((x) => x.off < w.off + w.len && w.off < x.off + x.len));
      const again = await runTool("qemu-io", [
        "-r",
        ...cImg.pre,
        ...last.flatMap((w) => ["-c", `read -P ${w.byte} ${w.off} ${w.len}`]),
        cImg.name,
      ], {
        seconds: 30,
        asMb: 4096,
        cwd: C,
        nice: opts.nice,
      });
      v.detail.push(/verification failed/.test(again.stdout) ? "QEMU loses a write on this image too" : "QEMU reads every write back");
    }
    if (failed) {
      v.detail.push(`qemu-io: ${(r.stdout + r.stderr).split("\n").filter((l) => /fail|corrupt|verification/i.test(l))[0] ?? r.code}`);
    }
  }
  if (spec.repair && rep.repair?.ok && rep.repair.corruptions === 0 && rep.repair.checkErrors === 0) {
    const r = await runTool("qemu-img", ["check", "-U", ...cImg.pre, ...fmt(enc), cImg.name], {
      seconds: 30,
      asMb: 4096,
      cwd: D,
      nice: opts.nice,
    });
    if (r.code === 2) {
      v.set("bad-repair", "qemu-img check finds corruption after blkgraph's repair", `after repair: ${r.stdout.split("\n")[0]}`);
    }
  }
  v.ms = performance.now() - t0;
  return v;
}

/** The mutated image, gzip-compressed (what a finding keeps). */
export function packImage(image: Uint8Array): Uint8Array {
  return gzipSync(image);
}
