/**
 * `blkgraph bench`: qemu-img bench: `count` requests of `size` bytes,
 * `depth` in flight (a promise pool), offsets advancing by `step` and
 * wrapping at the image size; optional flushes every N writes.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import type { BlockNode } from "../core/node.ts";
import {
  CliError,
  type CliIO,
  flagString,
  IMAGE_FLAGS,
  imageArgs,
  intArg,
  needPositionals,
  openImage,
  parseVerbArgs,
  sizeArg,
  type Verb,
} from "./_common.ts";
import { startTrace, TRACE_FLAGS, traceFlags } from "./_trace.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";
import { ioBuffer } from "../core/_io_buffer.ts";

const USAGE = `Usage: blkgraph bench [-c count] [-d depth] [-f fmt] [--flush-interval=n] [--no-drain] [-o offset]
                      [--pattern=byte] [-q] [-s size] [-S step] [-t cache] [-w] [-U] [--trace[=FILE]] [--trace-format=text|json|chrome] filename

Runs a simple I/O benchmark (defaults as qemu-img bench: 75000 requests
of 4096 bytes, 64 in parallel, step = size). -w writes instead of reading.
`;

/** Parameters of one benchmark run. */
export interface BenchParams {
  /** Number of requests. */
  count: number;
  /** Requests in flight. */
  depth: number;
  /** Bytes per request. */
  size: number;
  /** Offset increment between requests. */
  step: number;
  /** First offset. */
  offset: number;
  /** Write instead of read. */
  write: boolean;
  /** Fill byte for writes. */
  pattern: number;
  /** Flush after this many writes (0 = never). */
  flushInterval: number;
  /** Wait for requests in flight before each flush. */
  drain: boolean;
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    {
      ...IMAGE_FLAGS,
      count: { type: "string", short: "c" },
      depth: { type: "string", short: "d" },
      size: { type: "string", short: "s" },
      step: { type: "string", short: "S" },
      offset: { type: "string", short: "o" },
      write: { type: "boolean", short: "w" },
      pattern: { type: "string" },
      "flush-interval": { type: "string" },
      "no-drain": { type: "boolean" },
      native: { type: "boolean", short: "n" },
      aio: { type: "string", short: "i" },
      ...TRACE_FLAGS,
    },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 1, 1, "filename");
  const num = (name: string, def: number, min: number) => {
    const t = flagString(p.values, name);
    const n = t === undefined ? def : name === "count" || name === "depth" ? intArg(t, name) : sizeArg(t, name);
    if (n < min) throw new CliError(`Invalid ${name} '${t}': must be at least ${min}`);
    return n;
  };
  const size = num("size", 4096, 1);
  const params: BenchParams = {
    count: num("count", 75000, 1),
    depth: num("depth", 64, 1),
    size,
    step: num("step", size, 0),
    offset: num("offset", 0, 0),
    write: p.values.write === true,
    pattern: num("pattern", 0, 0) & 0xff,
    flushInterval: num("flush-interval", 0, 0),
    drain: p.values["no-drain"] !== true,
  };
  if (params.flushInterval && !params.write) throw new CliError("--flush-interval is only available in write tests");
  const node = await openImage(p.positionals[0], imageArgs(p.values, !params.write));
  const target = traceFlags(p.values);
  const trace = target === undefined ? undefined : startTrace(node, { ...target, io });
  try {
    // qemu-img bench prints these lines even with -q; so do we.
    const kind = params.write ? "write" : "read";
    io.stdout(`Sending ${params.count} ${kind} requests, ${params.size} bytes each, ${params.depth} in parallel `);
    io.stdout(`(starting at offset ${params.offset}, step size ${params.step})\n`);
    if (params.flushInterval) io.stdout(`Sending flush every ${params.flushInterval} requests\n`);
    const flushes0 = node.flushCount;
    const t0 = performance.now();
    await runBench(node, params);
    const secs = (performance.now() - t0) / 1000;
    // Flushes that reached a driver anywhere in the graph (a format's metadata flushes included).
    io.stdout(`Run completed in ${secs.toFixed(3)} seconds.\nFlushes issued: ${node.flushCount - flushes0}\n`);
  } finally {
    trace?.stop();
    await node.close();
  }
  return 0;
}

/** Runs the benchmark's requests on `node` with `depth` of them in flight. */
export async function runBench(node: BlockNode, b: BenchParams): Promise<void> {
  const imageSize = node.length;
  if (b.size > imageSize) {
    throw new BlockError("EINVAL", `Cannot run a benchmark with ${b.size}-byte requests on a ${imageSize}-byte image`);
  }
  let offset = b.offset;
  let issued = 0;
  let writesSinceFlush = 0;
  let failure: unknown;
  let inFlight = 0;
  const idle: (() => void)[] = [];
  let gate: Promise<void> | undefined;
  const drain = () => inFlight === 0 ? Promise.resolve() : new Promise<void>((r) => idle.push(r));
  const worker = async (buf: Uint8Array) => {
    while (issued < b.count && failure === undefined) {
      if (gate) await gate;
      if (issued >= b.count) break;
      const off = offset;
      issued++;
      offset += b.step;
      offset = imageSize <= b.size ? 0 : offset % (imageSize - b.size);
      inFlight++;
      try {
        if (b.write) await node.pwrite(off, buf);
        else await node.pread(off, buf);
      } catch (e) {
        failure ??= e;
      } finally {
        if (--inFlight === 0) { for (const r of idle.splice(0)) r(); }
      }
      if (b.write && b.flushInterval && ++writesSinceFlush >= b.flushInterval) {
        writesSinceFlush = 0;
        if (b.drain) {
          let open!: () => void;
          gate = new Promise<void>((r) => open = r);
          await drain();
          await node.flush().catch((e) => failure ??= e);
          gate = undefined;
          open();
        } else {
          await node.flush().catch((e) => failure ??= e);
        }
      }
    }
  };
  const workers: Promise<void>[] = [];
  for (let i = 0; i < Math.min(b.depth, b.count); i++) workers.push(worker(ioBuffer(b.size).fill(b.pattern)));
  await Promise.all(workers);
  if (failure !== undefined) throw failure;
}

/** The `bench` verb. */
export const benchVerb: Verb = { name: "bench", summary: VERB_SUMMARIES.bench, run };
