/**
 * The fuzzer's budgets: blkgraph's side of a case runs in a child Deno
 * process (`_runner.ts`) whose resident memory is watched while the case
 * runs and which is killed when the case takes longer than its time budget
 * or grows past its memory budget; QEMU's tools run under `prlimit` and are
 * killed when their time is up. A killed child is replaced for the next case.
 *
 * @module
 */

import type { CaseReply, CaseRequest } from "./_runner.ts";

/** How a case ended in the child process. */
export interface RunResult {
  /** The child's answer (absent when it was killed or died). */
  reply?: CaseReply;
  /** Why there is no answer. */
  killed?: "hang" | "memory" | "crash";
  /** Last lines the child wrote to stderr when it died. */
  stderr?: string;
  /** Wall time of the case, ms. */
  ms: number;
  /** CPU time of blkgraph's side, ms. */
  cpuMs?: number;
  /** Peak resident memory seen, bytes. */
  rssPeak: number;
}

const CHILD = new URL("./_child.ts", import.meta.url).pathname;

/** CPU time (user + system) of a process so far, ms (0 when it is gone). */
function cpuMsOf(pid: number): number {
  try {
    const s = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // Fields after the command name (which is in parentheses and may hold spaces).
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return 0;
  }
}

function rssOf(pid: number): number {
  try {
    const s = Deno.readTextFileSync(`/proc/${pid}/status`);
    const m = /VmRSS:\s+(\d+) kB/.exec(s);
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** A child process running `_runner.ts`, one case at a time. */
export class Runner {
  #child?: Deno.ChildProcess;
  #lines?: ReadableStreamDefaultReader<string>;
  #stderr: string[] = [];
  readonly #heapMb: number;
  readonly #nice: number;

  /** A runner whose V8 heap is capped at `heapMb` (the RSS budget is checked separately). */
  constructor(opts: { heapMb: number; nice?: number }) {
    this.#heapMb = opts.heapMb;
    this.#nice = opts.nice ?? 0;
  }

  #start(): void {
    const args = ["run", "-A", "--quiet", `--v8-flags=--max-old-space-size=${this.#heapMb}`, CHILD];
    const cmd = this.#nice ? "nice" : Deno.execPath();
    const full = this.#nice ? ["-n", String(this.#nice), Deno.execPath(), ...args] : args;
    this.#child = new Deno.Command(cmd, { args: full, stdin: "piped", stdout: "piped", stderr: "piped" }).spawn();
    this.#lines = this.#child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(splitLines()).getReader();
    this.#stderr = [];
    const errs = this.#child.stderr.pipeThrough(new TextDecoderStream()).pipeThrough(splitLines()).getReader();
    (async () => {
      for (;;) {
        const { value, done } = await errs.read().catch(() => ({ value: undefined, done: true }));
        if (done) return;
        this.#stderr.push(value!);
        if (this.#stderr.length > 20) this.#stderr.shift();
      }
    })();
  }

  /** The child's process id (after the first case). */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Sends one JSON line to the child (starting it if needed). */
  async send(message: unknown): Promise<void> {
    if (!this.#child) this.#start();
    const w = this.#child!.stdin.getWriter();
    await w.write(new TextEncoder().encode(JSON.stringify(message) + "\n"));
    w.releaseLock();
  }

  /**
   * Waits for the child's next line within `budgetMs` of CPU time (the
   * machine may be shared: wall time is only capped at ten times that) and
   * `budgetMb` of resident memory; kills the child when either runs out.
   */
  async read(
    budgetMs: number,
    budgetMb: number,
  ): Promise<{ line?: string; killed?: RunResult["killed"]; stderr?: string; ms: number; cpuMs: number; rssPeak: number }> {
    const child = this.#child;
    if (!child) return { killed: "crash", stderr: "not running", ms: 0, cpuMs: 0, rssPeak: 0 };
    const t0 = performance.now();
    const cpu0 = cpuMsOf(child.pid);
    let rssPeak = rssOf(child.pid);
    let killed: RunResult["killed"];
    const kill = (why: "hang" | "memory") => {
      if (killed) return;
      killed = why;
      try {
        child.kill("SIGKILL");
      } catch { /* gone already */ }
    };
    const poll = setInterval(() => {
      const rss = rssOf(child.pid);
      if (rss > rssPeak) rssPeak = rss;
      if (rss > budgetMb * 1024 * 1024) kill("memory");
      if (cpuMsOf(child.pid) - cpu0 > budgetMs) kill("hang");
    }, 20);
    const timer = setTimeout(() => kill("hang"), budgetMs * 10);
    let line: string | undefined;
    try {
      const r = await this.#lines!.read();
      line = r.done ? undefined : r.value;
    } catch {
      line = undefined;
    } finally {
      clearInterval(poll);
      clearTimeout(timer);
    }
    const ms = performance.now() - t0;
    if (line !== undefined && !killed) return { line, ms, cpuMs: cpuMsOf(child.pid) - cpu0, rssPeak };
    await child.status.catch(() => {});
    const stderr = this.#stderr.join("\n");
    this.#child = undefined;
    if (!killed) killed = /heap limit|out of memory|Allocation failed/i.test(stderr) ? "memory" : "crash";
    return { killed, stderr, ms, cpuMs: budgetMs, rssPeak };
  }

  /** Runs one case (`_runner.ts` runCase in the child) within the budgets. */
  async run(req: CaseRequest, budgetMs: number, budgetMb: number): Promise<RunResult> {
    await this.send({ case: req });
    const r = await this.read(budgetMs, budgetMb);
    if (r.line === undefined) return { killed: r.killed, stderr: r.stderr, ms: r.ms, rssPeak: r.rssPeak };
    const reply = JSON.parse(r.line).reply as CaseReply;
    return { reply, ms: r.ms, rssPeak: Math.max(r.rssPeak, reply.rss), cpuMs: r.cpuMs };
  }

  /** Stops the child. */
  async stop(): Promise<void> {
    const c = this.#child;
    this.#child = undefined;
    if (!c) return;
    try {
      await c.stdin.close();
    } catch { /* closed */ }
    await c.status.catch(() => {});
  }
}

function splitLines(): TransformStream<string, string> {
  let buf = "";
  return new TransformStream({
    transform(chunk, ctl) {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        ctl.enqueue(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    },
    flush(ctl) {
      if (buf) ctl.enqueue(buf);
    },
  });
}

/** Result of a bounded QEMU tool run. */
export interface ToolResult {
  /** Exit code (124 or 137: killed by the time budget). */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
  /** The time budget ran out. */
  timedOut: boolean;
}

/** Runs a QEMU tool with a time budget (seconds; then SIGKILL) and an address-space limit (MiB, through prlimit). */
export async function runTool(
  cmd: string,
  args: string[],
  opts: { seconds: number; asMb: number; cwd?: string; nice?: number },
): Promise<ToolResult> {
  const full = ["prlimit", `--as=${opts.asMb * 1024 * 1024}`, "--", cmd, ...args];
  if (opts.nice) full.unshift("nice", "-n", String(opts.nice));
  const child = new Deno.Command(full[0], { args: full.slice(1), cwd: opts.cwd, stdout: "piped", stderr: "piped" }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
  }, opts.seconds * 1000);
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr), timedOut };
}
