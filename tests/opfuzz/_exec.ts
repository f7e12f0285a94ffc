/**
 * Runs one operation-fuzzer case on two images: the reference made and changed by QEMU's own qemu-img and qemu-io, and blkgraph's
 * made and changed by the drop-ins (`cli/qemu-img.ts`, `cli/qemu-io.ts`, in a worker: `_ours.ts`). Each step must succeed or fail on
 * both sides alike; at the end real qemu-img must see the same virtual size, the same guest bytes, the same snapshots with the same
 * bytes and (after a commit) the same backing file on both sides, must find blkgraph's image free of corruption and no leakier than
 * QEMU's, and blkgraph must read both images as QEMU reads them. Only the drop-ins' time counts towards a hang: a QEMU tool that runs
 * too long, or a reference image that QEMU itself left corrupt, makes the case skipped.
 *
 * @module
 */

import type { RunResult } from "../_helpers/qemu.ts";
import type { OpCase, Step } from "./_gen.ts";
import { HANG, OursRunner, THREW } from "./_ours.ts";

/** What went wrong, one class per kind of failure (see README.md). */
export type FindingClass = "status" | "size" | "data" | "read" | "corrupt" | "leak" | "check" | "snapshot" | "base" | "exception" | "hang";

/** The outcome of a case. */
export interface Outcome {
  /** Finding classes, empty when the case is clean. */
  classes: FindingClass[];
  /** What each finding saw, and the steps' output differences (not findings: messages may be worded differently). */
  notes: string[];
  /** Set when the case says nothing about blkgraph: a QEMU tool did not finish in time, or QEMU's own image is corrupt. */
  skipped?: string;
}

/** How long one run of a QEMU tool may take (qemu-img amend to a narrow refcount width can spin for minutes). */
export const QEMU_LIMIT_MS = 60_000;
/** How long one run of a drop-in may take before the case is a `hang` finding. */
export const OURS_LIMIT_MS = 120_000;

/** How `runCase` runs the tools (tests give fakes). */
export interface RunOptions {
  /** The qemu-img command (default `qemu-img`). */
  qemuImg?: string;
  /** The qemu-io command (default `qemu-io`). */
  qemuIo?: string;
  /** Time limit of one QEMU tool run (default `QEMU_LIMIT_MS`); a run over it makes the case skipped. */
  qemuLimitMs?: number;
  /** Time limit of one drop-in run (default `OURS_LIMIT_MS`); a run over it is a `hang` finding. */
  oursLimitMs?: number;
  /** The runner of the drop-ins (default: one shared by every case of this process). */
  ours?: OursRunner;
}

let shared: OursRunner | undefined;

/** Stops the shared drop-in worker (a test calls it at its end; the next case starts another). */
export function closeShared(): void {
  shared?.close();
  shared = undefined;
}

/** Runs one of QEMU's tools; `timedOut` when it took longer than `limitMs` and was killed. */
async function run(cmd: string, args: string[], limitMs: number): Promise<RunResult & { timedOut?: boolean }> {
  const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, limitMs);
  try {
    const out = await child.output();
    const dec = new TextDecoder();
    if (timedOut) return { code: 124, stdout: "", stderr: `${cmd} timed out after ${limitMs} ms`, timedOut };
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } finally {
    clearTimeout(timer);
  }
}

function stepArgs(step: Step, image: string): string[] {
  if (step.kind === "io") return ["-f", "qcow2", ...step.commands.flatMap((c) => ["-c", c]), image];
  return step.args.map((a) => (a === "IMG" ? image : a));
}

function describe(step: Step): string {
  return step.kind === "io" ? `qemu-io ${step.commands.map((c) => `-c '${c}'`).join(" ")}` : `qemu-img ${step.args.join(" ")}`;
}

/** The lines that matter: timing lines and the program name left out. */
function gist(r: RunResult): string {
  return (r.stdout + r.stderr).split("\n").filter((l) => l && !l.includes(" ops; ")).map((l) => l.replace(/^qemu-(img|io): /, ""))
    .join("\n");
}

async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** Thrown inside `runCase` to end it: a skip (QEMU's side) or a finding that stops the case. */
class Stop {
  constructor(readonly skipped?: string) {}
}

/** Runs the case in `dir` (which it fills); never throws for what the case finds. */
export async function runCase(c: OpCase, dir: string, opts: RunOptions = {}): Promise<Outcome> {
  const classes = new Set<FindingClass>();
  const notes: string[] = [];
  const find = (k: FindingClass, note: string) => {
    classes.add(k);
    notes.push(`${k}: ${note}`);
  };
  const runner = opts.ours ?? (shared ??= new OursRunner());
  const qemu = async (tool: "img" | "io", args: string[], what: string) => {
    const r = await run(tool === "img" ? opts.qemuImg ?? "qemu-img" : opts.qemuIo ?? "qemu-io", args, opts.qemuLimitMs ?? QEMU_LIMIT_MS);
    if (r.timedOut) throw new Stop(`${what}: ${r.stderr}`);
    return r;
  };
  const ours = async (tool: "img" | "io", args: string[], what: string) => {
    const r = await runner.run(tool, args, opts.oursLimitMs ?? OURS_LIMIT_MS);
    if (r.code === HANG) find("hang", `${what}: blkgraph's qemu-${tool} ${args.join(" ")}: ${r.stderr}`);
    if (r.code === THREW) find("exception", `${what}: ${r.stderr}`);
    if (r.code === HANG || r.code === THREW) throw new Stop();
    return r;
  };
  try {
    await steps(c, dir, qemu, ours, find, notes);
    await compare(c, dir, qemu, ours, find);
  } catch (e) {
    if (!(e instanceof Stop)) throw e;
    if (e.skipped) return { classes: [], notes, skipped: e.skipped };
  }
  return { classes: [...classes], notes };
}

type Tool = (tool: "img" | "io", args: string[], what: string) => Promise<RunResult>;
type Find = (k: FindingClass, note: string) => void;

/** Makes both images and runs the steps on them; a step whose exit status differs ends the case. */
async function steps(c: OpCase, dir: string, qemu: Tool, ours: Tool, find: Find, notes: string[]): Promise<void> {
  const ref = `${dir}/ref.qcow2`;
  const our = `${dir}/our.qcow2`;
  const create = (path: string) => {
    const args = ["create", "-q", "-f", "qcow2", "-o", c.image.options.join(",")];
    if (c.image.backing) args.push("-b", `${path}.base`, "-F", c.image.backing.format);
    return [...args, path, String(c.image.size)];
  };
  if (c.image.backing) {
    const b = c.image.backing;
    for (const p of [ref, our]) {
      await qemu("img", ["create", "-q", "-f", b.format, `${p}.base`, String(b.size)], "backing file");
      if (b.writes.length) await qemu("io", ["-f", b.format, ...b.writes.flatMap((w) => ["-c", w]), `${p}.base`], "backing file");
    }
  }
  const all: [string, string[], string[]][] = [["qemu-img create", create(ref), create(our)]];
  for (const s of c.steps) all.push([describe(s), stepArgs(s, ref), stepArgs(s, our)]);
  for (let i = 0; i < all.length; i++) {
    const [what, refArgs, ourArgs] = all[i];
    const tool = i === 0 || c.steps[i - 1].kind === "img" ? "img" : "io";
    const r = await qemu(tool, refArgs, `step ${i} (${what})`);
    const o = await ours(tool, ourArgs, `step ${i} (${what})`);
    if ((r.code === 0) !== (o.code === 0)) {
      find("status", `step ${i} (${what}): qemu exit ${r.code}, ours ${o.code}\n--- qemu\n${gist(r)}\n--- ours\n${gist(o)}`);
      throw new Stop();
    }
    // QEMU 7.2 can corrupt its own image (a compressed write into a cluster freed and reused: opfuzz case 561); what follows says
    // nothing about blkgraph then. The check runs after every step because later steps can hide the corruption from qemu-img check.
    const rc = await qemu("img", ["check", "--output=json", "-f", "qcow2", ref], "qemu-img check");
    if (/"corruptions": [1-9]/.test(rc.stdout)) throw new Stop(`QEMU's own image fails qemu-img check after step ${i} (${what})`);
    if (gist(r) !== gist(o)) notes.push(`output of step ${i} (${what}) differs\n--- qemu\n${gist(r)}\n--- ours\n${gist(o)}`);
  }
}

/** Compares the two images once the steps are done. */
async function compare(c: OpCase, dir: string, qemu: Tool, ours: Tool, find: Find): Promise<void> {
  const ref = `${dir}/ref.qcow2`;
  const our = `${dir}/our.qcow2`;
  const check = async (p: string) => {
    const r = await qemu("img", ["check", "--output=json", "-f", "qcow2", p], "qemu-img check");
    try {
      return { code: r.code, json: JSON.parse(r.stdout) as Record<string, number> };
    } catch {
      return { code: r.code, json: { "check-errors": 1 } as Record<string, number>, text: gist(r) };
    }
  };
  const [rc, oc] = [await check(ref), await check(our)];
  if ((rc.json.corruptions ?? 0) > 0 || (rc.json["check-errors"] ?? 0) > 0) {
    throw new Stop(`QEMU's own image fails qemu-img check: ${JSON.stringify(rc.json)}`);
  }

  const info = async (p: string) =>
    JSON.parse((await qemu("img", ["info", "--output=json", "-f", "qcow2", p], "qemu-img info")).stdout || "{}");
  const [ri, oi] = [await info(ref), await info(our)];
  if (ri["virtual-size"] !== oi["virtual-size"]) find("size", `virtual size qemu ${ri["virtual-size"]}, ours ${oi["virtual-size"]}`);
  const cmp = await qemu("img", ["compare", "-f", "qcow2", "-F", "qcow2", ref, our], "qemu-img compare");
  if (cmp.code !== 0) find("data", `qemu-img compare ref ours: ${cmp.code} ${gist(cmp)}`);

  const raw = `${dir}/ref.raw`;
  await qemu("img", ["convert", "-f", "qcow2", "-O", "raw", ref, raw], "qemu-img convert");
  for (const [name, p] of [["ours", our], ["qemu's", ref]]) {
    if (name === "ours" && cmp.code !== 0) continue;
    const r = await ours("img", ["compare", "-f", "raw", "-F", "qcow2", raw, p], `blkgraph's compare of ${name} image`);
    if (r.code !== 0) find("read", `blkgraph's compare of ${name} image with qemu's reading: ${r.code} ${gist(r)}`);
  }

  if ((oc.json.corruptions ?? 0) > 0 || (oc.json["check-errors"] ?? 0) > 0) {
    find("corrupt", `qemu-img check of ours: ${JSON.stringify(oc.json)}`);
  }
  if ((oc.json.leaks ?? 0) > (rc.json.leaks ?? 0)) find("leak", `leaks ours ${oc.json.leaks}, qemu's ${rc.json.leaks ?? 0}`);
  const own = await ours("img", ["check", "-f", "qcow2", our], "blkgraph's check");
  if (own.code !== oc.code) find("check", `blkgraph's check of ours exits ${own.code}, qemu-img's ${oc.code}: ${gist(own)}`);

  const names = async (p: string) =>
    (await qemu("img", ["snapshot", "-l", p], "qemu-img snapshot -l")).stdout.split("\n").slice(2).map((l) => l.trim().split(/\s+/)[1])
      .filter(Boolean).sort();
  const [rs, os] = [await names(ref), await names(our)];
  if (rs.join() !== os.join()) find("snapshot", `snapshots qemu [${rs}], ours [${os}]`);
  else {
    for (const s of rs) {
      const a = `${dir}/ref.${s}.raw`;
      const b = `${dir}/our.${s}.raw`;
      await qemu("img", ["convert", "-f", "qcow2", "-O", "raw", "-l", `snapshot.name=${s}`, ref, a], "qemu-img convert -l");
      await qemu("img", ["convert", "-f", "qcow2", "-O", "raw", "-l", `snapshot.name=${s}`, our, b], "qemu-img convert -l");
      if (!(await sameBytes(a, b))) find("snapshot", `snapshot ${s} reads differently`);
    }
  }
  if (c.image.backing) {
    const f = c.image.backing.format;
    const r = await qemu("img", ["compare", "-f", f, "-F", f, `${ref}.base`, `${our}.base`], "qemu-img compare of the backing files");
    if (r.code !== 0) find("base", `backing files differ: ${gist(r)}`);
  }
}
