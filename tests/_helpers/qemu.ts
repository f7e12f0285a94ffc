/**
 * Helpers for tests that use QEMU's tools as the oracle. Tests that need a
 * tool call `skipUnless(tool)` and are skipped with a visible message when it
 * is absent; CI installs the tools so they run there.
 *
 * @module
 */

const found = new Map<string, boolean>();

/** Tells whether a command is on PATH. */
export function hasTool(tool: string): boolean {
  let ok = found.get(tool);
  if (ok === undefined) {
    try {
      ok = new Deno.Command("sh", { args: ["-c", `command -v ${tool}`], stdout: "null", stderr: "null" }).outputSync().success;
    } catch {
      ok = false;
    }
    found.set(tool, ok);
    if (!ok) console.warn(`SKIP: '${tool}' is not installed; tests that need it are skipped (CI installs it)`);
  }
  return ok;
}

/** `ignore` value for Deno.test: true (skip) when a tool is missing. */
export function skipUnless(...tools: string[]): boolean {
  return !tools.every(hasTool);
}

/** Result of running a tool. */
export interface RunResult {
  /** Exit code. */
  code: number;
  /** Standard output as text. */
  stdout: string;
  /** Standard error as text. */
  stderr: string;
}

/**
 * Runs a command and returns its exit code and output (never throws on a non-zero exit). QEMU's tools time a
 * PBKDF run to pick LUKS iteration counts, and on a loaded machine that can fail ("Unable to get accurate CPU
 * usage"): such a run of qemu-img or qemu-io is tried again, up to five times.
 */
export async function run(cmd: string, args: string[], opts: { stdin?: string; cwd?: string } = {}): Promise<RunResult> {
  let r = await runOnce(cmd, args, opts);
  for (let i = 0; i < 5 && /^qemu-/.test(cmd) && r.code !== 0 && r.stderr.includes("Unable to get accurate CPU usage"); i++) {
    r = await runOnce(cmd, args, opts);
  }
  return r;
}

async function runOnce(cmd: string, args: string[], opts: { stdin?: string; cwd?: string }): Promise<RunResult> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: opts.cwd,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs a command and throws with its output when it fails. */
export async function runOk(cmd: string, args: string[], opts: { stdin?: string; cwd?: string } = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r;
}

/** `qemu-img check --output=json` result (exit code and parsed JSON). */
export async function qemuCheck(path: string): Promise<{ code: number; json: Record<string, unknown> }> {
  const r = await run("qemu-img", ["check", "--output=json", path]);
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(r.stdout);
  } catch {
    json = { error: r.stderr };
  }
  return { code: r.code, json };
}

/** Makes a temporary directory and returns it with a disposer that removes it. */
export async function tempDir(prefix = "blkgraph-test-"): Promise<{ path: string; [Symbol.asyncDispose](): Promise<void> }> {
  const path = await Deno.makeTempDir({ prefix });
  return {
    path,
    async [Symbol.asyncDispose]() {
      await Deno.remove(path, { recursive: true }).catch(() => {});
    },
  };
}

/** Fills a buffer with one byte, as qemu-io's `-P pattern`. */
export function pattern(length: number, byte: number): Uint8Array {
  return new Uint8Array(length).fill(byte);
}
