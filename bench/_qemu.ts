/**
 * Helpers to run `qemu-img bench` as the reference in benchmarks: build the
 * command, run it, parse "Run completed in X seconds.", and fall back from
 * io_uring to threads where io_uring is not available. Format benchmarks
 * (qcow2, ...) reuse these.
 *
 * @module
 */

/** Options for one `qemu-img bench` run. */
export interface QemuBenchOptions {
  /** Image format (`-f`), e.g. "raw" or "qcow2". */
  format: string;
  /** Number of requests (`-c`). */
  count: number;
  /** Request size in bytes (`-s`). */
  size: number;
  /** Queue depth (`-d`, default 16). */
  depth?: number;
  /** Cache mode (`-t`, default writeback). */
  cache?: string;
  /** AIO engine (`-i`); default io_uring, or threads where io_uring fails. */
  aio?: "io_uring" | "threads" | "native";
  /** Write instead of read (`-w`). */
  write?: boolean;
  /** Distance between request offsets (`-S`); default the request size. */
  step?: number;
  /** Extra arguments put before the filename. */
  extraArgs?: string[];
}

/** Result of one `qemu-img bench` run. */
export interface QemuBenchResult {
  /** Seconds reported by "Run completed in X seconds." */
  seconds: number;
  /** Requests per second. */
  iops: number;
  /** The AIO engine actually used. */
  aio: string;
  /** The command line, for the README. */
  command: string;
}

/**
 * Parses qemu-img bench's output.
 *
 * @example
 * ```ts
 * import { parseBenchOutput } from "./_qemu.ts";
 * console.log(parseBenchOutput("Run completed in 0.154 seconds.")); // 0.154
 * ```
 */
export function parseBenchOutput(text: string): number {
  const m = /Run completed in ([0-9.]+) seconds\./.exec(text);
  if (!m) throw new Error(`qemu-img bench: no "Run completed" line in its output:\n${text}`);
  return Number(m[1]);
}

/** Builds the qemu-img bench argument list. */
export function benchArgs(path: string, o: QemuBenchOptions, aio: string): string[] {
  const args = ["bench", "-f", o.format, "-t", o.cache ?? "writeback", "-i", aio, "-d", String(o.depth ?? 16), "-c", String(o.count)];
  args.push("-s", String(o.size));
  if (o.step !== undefined) args.push("-S", String(o.step));
  if (o.write) args.push("-w");
  args.push(...(o.extraArgs ?? []), path);
  return args;
}

let ioUring: boolean | undefined;

/** Tells whether qemu-img can use io_uring here (probed once with a tiny run). */
export async function ioUringWorks(path: string, format: string): Promise<boolean> {
  if (ioUring === undefined) {
    const out = await new Deno.Command("qemu-img", {
      args: benchArgs(path, { format, count: 1, size: 512, depth: 1 }, "io_uring"),
      stdout: "piped",
      stderr: "piped",
    }).output();
    ioUring = out.success;
  }
  return ioUring;
}

/** Runs qemu-img bench once on `path` (which must not be open elsewhere for writing). */
export async function qemuImgBench(path: string, o: QemuBenchOptions): Promise<QemuBenchResult> {
  const aio = o.aio ?? (await ioUringWorks(path, o.format) ? "io_uring" : "threads");
  const args = benchArgs(path, o, aio);
  const out = await new Deno.Command("qemu-img", { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`qemu-img ${args.join(" ")} failed:\n${text}`);
  const seconds = parseBenchOutput(text);
  return { seconds, iops: o.count / seconds, aio, command: `qemu-img ${args.join(" ")}` };
}

/** Tells whether qemu-img is installed. */
export function hasQemuImg(): boolean {
  try {
    return new Deno.Command("qemu-img", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}
