/**
 * Runs one operation-fuzzer case on two images: the reference made and changed by QEMU's own qemu-img and qemu-io, and blkgraph's
 * made and changed by the drop-ins (`cli/qemu-img.ts`, `cli/qemu-io.ts`, in-process). Each step must succeed or fail on both sides
 * alike; at the end real qemu-img must see the same virtual size, the same guest bytes, the same snapshots with the same bytes and
 * (after a commit) the same backing file on both sides, must find blkgraph's image free of corruption and no leakier than QEMU's,
 * and blkgraph must read both images as QEMU reads them.
 *
 * @module
 */

import { qemuImg } from "../../cli/qemu-img.ts";
import { qemuIo } from "../../cli/qemu-io.ts";
import type { RunResult } from "../_helpers/qemu.ts";
import type { OpCase, Step } from "./_gen.ts";

/** What went wrong, one class per kind of failure (see README.md). */
export type FindingClass = "status" | "size" | "data" | "read" | "corrupt" | "leak" | "check" | "snapshot" | "base" | "exception" | "hang";

/** The outcome of a case. */
export interface Outcome {
  /** Finding classes, empty when the case is clean. */
  classes: FindingClass[];
  /** What each finding saw, and the steps' output differences (not findings: messages may be worded differently). */
  notes: string[];
  /** Set when QEMU's own tool did not finish in time: the case says nothing about blkgraph. */
  skipped?: string;
}

/** How long one run of a QEMU tool may take (qemu-img amend to a narrow refcount width can spin for minutes). */
export const QEMU_LIMIT_MS = 60_000;

/** Runs one of QEMU's tools; code 124 and a `timed out` line when it took longer than `QEMU_LIMIT_MS` and was killed. */
async function run(cmd: string, args: string[]): Promise<RunResult> {
  const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, QEMU_LIMIT_MS);
  try {
    const out = await child.output();
    const dec = new TextDecoder();
    if (timedOut) return { code: 124, stdout: "", stderr: `${cmd} timed out after ${QEMU_LIMIT_MS} ms` };
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } finally {
    clearTimeout(timer);
  }
}

async function ours(tool: "img" | "io", args: string[]): Promise<RunResult> {
  let stdout = "";
  let stderr = "";
  const io = { stdout: (s: string) => void (stdout += s), stderr: (s: string) => void (stderr += s) };
  try {
    const code = await (tool === "img" ? qemuImg(args, io) : qemuIo(args, io));
    return { code, stdout, stderr };
  } catch (e) {
    return { code: -1, stdout, stderr: `${stderr}\nthrown: ${e instanceof Error ? e.stack : String(e)}` };
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

async function snapshotNames(path: string): Promise<string[]> {
  const r = await run("qemu-img", ["snapshot", "-l", path]);
  return r.stdout.split("\n").slice(2).map((l) => l.trim().split(/\s+/)[1]).filter(Boolean).sort();
}

async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** Runs the case in `dir` (which it fills); never throws for what the case finds. */
export async function runCase(c: OpCase, dir: string): Promise<Outcome> {
  const classes = new Set<FindingClass>();
  const notes: string[] = [];
  const find = (k: FindingClass, note: string) => {
    classes.add(k);
    notes.push(`${k}: ${note}`);
  };
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
      await run("qemu-img", ["create", "-q", "-f", b.format, `${p}.base`, String(b.size)]);
      if (b.writes.length) await run("qemu-io", ["-f", b.format, ...b.writes.flatMap((w) => ["-c", w]), `${p}.base`]);
    }
  }
  const steps: [string, string[], string[]][] = [["qemu-img create", create(ref), create(our)]];
  for (const s of c.steps) steps.push([describe(s), stepArgs(s, ref), stepArgs(s, our)]);
  for (let i = 0; i < steps.length; i++) {
    const [what, refArgs, ourArgs] = steps[i];
    const tool = i === 0 || c.steps[i - 1].kind === "img" ? "img" : "io";
    const r = await run(tool === "img" ? "qemu-img" : "qemu-io", refArgs);
    if (r.code === 124) return { classes: [], notes, skipped: `step ${i} (${what}): ${r.stderr}` };
    const o = await ours(tool, ourArgs);
    if (o.code === -1) {
      find("exception", `step ${i} (${what}): ${o.stderr}`);
      return { classes: [...classes], notes };
    }
    if ((r.code === 0) !== (o.code === 0)) {
      find("status", `step ${i} (${what}): qemu exit ${r.code}, ours ${o.code}\n--- qemu\n${gist(r)}\n--- ours\n${gist(o)}`);
      return { classes: [...classes], notes };
    }
    if (gist(r) !== gist(o)) notes.push(`output of step ${i} (${what}) differs\n--- qemu\n${gist(r)}\n--- ours\n${gist(o)}`);
  }

  const info = async (p: string) => JSON.parse((await run("qemu-img", ["info", "--output=json", "-f", "qcow2", p])).stdout || "{}");
  const [ri, oi] = [await info(ref), await info(our)];
  if (ri["virtual-size"] !== oi["virtual-size"]) find("size", `virtual size qemu ${ri["virtual-size"]}, ours ${oi["virtual-size"]}`);
  const cmp = await run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", ref, our]);
  if (cmp.code !== 0) find("data", `qemu-img compare ref ours: ${cmp.code} ${gist(cmp)}`);

  const raw = `${dir}/ref.raw`;
  await run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", ref, raw]);
  for (const [name, p] of [["ours", our], ["qemu's", ref]]) {
    if (name === "ours" && classes.has("data")) continue;
    const r = await ours("img", ["compare", "-f", "raw", "-F", "qcow2", raw, p]);
    if (r.code !== 0) {
      find(r.code === -1 ? "exception" : "read", `blkgraph's compare of ${name} image with qemu's reading: ${r.code} ${gist(r)}`);
    }
  }

  const check = async (p: string) => {
    const r = await run("qemu-img", ["check", "--output=json", "-f", "qcow2", p]);
    try {
      return { code: r.code, json: JSON.parse(r.stdout) as Record<string, number> };
    } catch {
      return { code: r.code, json: { "check-errors": 1 } as Record<string, number>, text: gist(r) };
    }
  };
  const [rc, oc] = [await check(ref), await check(our)];
  if ((oc.json.corruptions ?? 0) > 0 || (oc.json["check-errors"] ?? 0) > 0) {
    find("corrupt", `qemu-img check of ours: ${JSON.stringify(oc.json)}`);
  }
  if ((oc.json.leaks ?? 0) > (rc.json.leaks ?? 0)) find("leak", `leaks ours ${oc.json.leaks}, qemu's ${rc.json.leaks ?? 0}`);
  const own = await ours("img", ["check", "-f", "qcow2", our]);
  if (own.code !== oc.code) find("check", `blkgraph's check of ours exits ${own.code}, qemu-img's ${oc.code}: ${gist(own)}`);

  const [rs, os] = [await snapshotNames(ref), await snapshotNames(our)];
  if (rs.join() !== os.join()) find("snapshot", `snapshots qemu [${rs}], ours [${os}]`);
  else {
    for (const s of rs) {
      const a = `${dir}/ref.${s}.raw`;
      const b = `${dir}/our.${s}.raw`;
      await run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", "-l", `snapshot.name=${s}`, ref, a]);
      await run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", "-l", `snapshot.name=${s}`, our, b]);
      if (!(await sameBytes(a, b))) find("snapshot", `snapshot ${s} reads differently`);
    }
  }
  if (c.image.backing) {
    const f = c.image.backing.format;
    const r = await run("qemu-img", ["compare", "-f", f, "-F", f, `${ref}.base`, `${our}.base`]);
    if (r.code !== 0) find("base", `backing files differ: ${gist(r)}`);
  }
  return { classes: [...classes], notes };
}
