/**
 * The fuzzer's child process. It reads JSON lines on standard input:
 *
 * - `{"case": CaseRequest}`: runs blkgraph's side of one case the parent
 *   prepared (`_runner.ts`) and answers `{"reply": CaseReply}`;
 * - `{"batch": BatchRequest}`: generates, prepares and runs a range of
 *   blkgraph-only cases itself (no QEMU, no per-case process round trip),
 *   writing `B <id>` before each case (the parent's budget for that case
 *   starts there), `{"verdict": ...}` after it, and `{"done": true}` at the
 *   end.
 *
 * The parent (`_proc.ts`) kills this process when a case runs out of time or
 * memory, and starts another for the next case.
 *
 * @module
 */

import { generateCase, judge, prepareCase } from "./_case.ts";
import { runCase } from "./_runner.ts";
import type { CaseReply, CaseRequest } from "./_runner.ts";
import type { Seed } from "./_seeds.ts";

/** A range of blkgraph-only cases to run in the child. */
export interface BatchRequest {
  /** Run seed. */
  seed: number;
  /** Case numbers to run. */
  ids: number[];
  /** The seeds (as the parent built them). */
  seeds: Seed[];
  /** Scratch directory of this child. */
  root: string;
}

const enc = new TextEncoder();

async function emit(line: string): Promise<void> {
  await Deno.stdout.write(enc.encode(line + "\n"));
}

const images = new Map<string, Uint8Array>();

/** runCase, with a failure of the harness itself reported as an exception of the case (never a dead child). */
async function safeRun(req: CaseRequest): Promise<CaseReply> {
  try {
    return await runCase(req);
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    return {
      id: req.id,
      open: { ok: false, error: { name: `harness ${err.name}`, message: err.message, stack: err.stack } },
      rss: Deno.memoryUsage().rss,
    };
  }
}

async function batch(b: BatchRequest): Promise<void> {
  for (const s of b.seeds) if (!images.has(s.family.name)) images.set(s.family.name, await Deno.readFile(`${s.dir}/img.qcow2`));
  for (const id of b.ids) {
    await emit(`B ${id}`);
    const { spec, image } = generateCase(b.seed, id, b.seeds, images);
    const seed = b.seeds.find((s) => s.family.name === spec.family)!;
    const req = await prepareCase(spec, image, seed, b.root);
    const t0 = performance.now();
    const reply = await safeRun(req);
    const v = judge(spec, { reply, ms: performance.now() - t0, rssPeak: reply.rss, cpuMs: 0 }, false);
    v.ms = performance.now() - t0;
    const { set: _set, ...plain } = v;
    await emit(JSON.stringify({ verdict: plain }));
  }
  await emit(JSON.stringify({ done: true }));
}

if (import.meta.main) {
  const dec = new TextDecoder();
  let pending = "";
  for await (const chunk of Deno.stdin.readable) {
    pending += dec.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (!line.trim()) continue;
      const msg = JSON.parse(line) as { case?: CaseRequest; batch?: BatchRequest };
      if (msg.case) await emit(JSON.stringify({ reply: await safeRun(msg.case) }));
      else if (msg.batch) await batch(msg.batch);
    }
  }
}
