/**
 * NBD server and client benchmarks, side by side in one run:
 *
 * - servers: `blkgraph nbd`, `qemu-nbd` and `nbdkit file` serving the same
 *   page-cached 1 GiB raw file over a Unix socket, driven by
 *   `qemu-img bench -f raw -t none -n nbd+unix://…` (4 KiB and 64 KiB,
 *   read and write, depth 1 and 16) and `nbdcopy` both ways; the servers
 *   take turns within each run, so load changes hit all three alike;
 * - TCP 127.0.0.1: the same clients, one run, with a time limit (qemu-nbd
 *   stalls at depth 16 over TCP on this kind of machine);
 * - client: blkgraph's `nbd` node (`blkgraph bench`) against `qemu-img
 *   bench` on the same qemu-nbd URL.
 *
 * `deno run -A bench/run.ts --only nbd [--quick] [--runs N]`.
 *
 * @module
 */

import { median } from "./_table.ts";
import type { BenchOptions, BenchTable } from "./_table.ts";
import { parseBenchOutput } from "./_qemu.ts";

const CLI = new URL("../cli/main.ts", import.meta.url).pathname;

interface Case {
  size: number;
  depth: number;
  write: boolean;
}

const CASES: Case[] = [
  { size: 4096, depth: 1, write: false },
  { size: 4096, depth: 16, write: false },
  { size: 4096, depth: 1, write: true },
  { size: 4096, depth: 16, write: true },
  { size: 65536, depth: 1, write: false },
  { size: 65536, depth: 16, write: false },
  { size: 65536, depth: 1, write: true },
  { size: 65536, depth: 16, write: true },
];

const caseName = (c: Case) => `${c.write ? "write" : "read"} ${c.size >> 10} KiB QD${c.depth}`;

type ServerName = "blkgraph nbd" | "blkgraph nbd --aio=threads" | "qemu-nbd" | "nbdkit file";
const SERVERS: ServerName[] = ["blkgraph nbd", "qemu-nbd", "nbdkit file"];
/** Over the Unix socket also blkgraph with `--aio=threads` (qemu-nbd's option: reads and writes on worker threads). */
const UNIX_SERVERS: ServerName[] = ["blkgraph nbd", "blkgraph nbd --aio=threads", "qemu-nbd", "nbdkit file"];

interface Listen {
  unix?: string;
  port?: number;
}

function serverCommand(name: ServerName, file: string, at: Listen): [string, string[]] {
  const where = at.unix !== undefined;
  switch (name) {
    case "blkgraph nbd":
    case "blkgraph nbd --aio=threads":
      return [Deno.execPath(), [
        "run",
        "-A",
        CLI,
        "nbd",
        "-f",
        "raw",
        "-t",
        "-e",
        "8",
        ...(name === "blkgraph nbd" ? [] : ["--aio=threads"]),
        ...(where ? ["-k", at.unix!] : ["-b", "127.0.0.1", "-p", String(at.port)]),
        file,
      ]];
    case "qemu-nbd":
      return ["qemu-nbd", [
        "-f",
        "raw",
        "-t",
        "-e",
        "8",
        "--cache=writeback",
        "--aio=threads",
        ...(where ? ["-k", at.unix!] : ["-b", "127.0.0.1", "-p", String(at.port)]),
        file,
      ]];
    case "nbdkit file":
      return ["nbdkit", ["-f", ...(where ? ["-U", at.unix!] : ["-i", "127.0.0.1", "-p", String(at.port)]), "file", file]];
  }
}

function uriOf(at: Listen): string {
  return at.unix !== undefined ? `nbd+unix:///?socket=${at.unix}` : `nbd://127.0.0.1:${at.port}`;
}

async function ready(at: Listen, child: Deno.ChildProcess): Promise<void> {
  let exited = false;
  child.status.then(() => (exited = true));
  for (let i = 0; i < 500 && !exited; i++) {
    try {
      if (at.unix !== undefined) {
        if (Deno.statSync(at.unix).isSocket) return;
      } else {
        (await Deno.connect({ hostname: "127.0.0.1", port: at.port! })).close();
        return;
      }
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("NBD server did not start");
}

async function withServer<T>(name: ServerName, file: string, at: Listen, fn: (uri: string) => Promise<T>): Promise<T> {
  const [cmd, args] = serverCommand(name, file, at);
  const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "null" }).spawn();
  try {
    await ready(at, child);
    return await fn(uriOf(at));
  } finally {
    try {
      child.kill("SIGTERM");
    } catch { /* exited */ }
    await child.status;
    if (at.unix) await Deno.remove(at.unix).catch(() => {});
  }
}

/** Runs a command with a time limit; resolves to its output, or null when it had to be killed. */
async function timed(cmd: string, args: string[], limitMs: number): Promise<{ text: string; seconds: number } | null> {
  const t0 = performance.now();
  const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), limitMs);
  const out = await child.output();
  clearTimeout(timer);
  const seconds = (performance.now() - t0) / 1000;
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (out.signal === "SIGKILL") return null;
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed:\n${text}`);
  return { text, seconds };
}

function benchArgs(c: Case, count: number, uri: string): string[] {
  return [
    "bench",
    "-f",
    "raw",
    "-t",
    "none",
    "-n",
    "-c",
    String(count),
    "-s",
    String(c.size),
    "-d",
    String(c.depth),
    ...(c.write ? ["-w"] : []),
    uri,
  ];
}

/** Requests/s of one qemu-img (or blkgraph) bench run; NaN when it hit the time limit. */
async function benchOnce(tool: "qemu-img" | "blkgraph", c: Case, count: number, uri: string, limitMs: number): Promise<number> {
  const [cmd, pre] = tool === "qemu-img" ? ["qemu-img", []] : [Deno.execPath(), ["run", "-A", CLI]];
  const r = await timed(cmd, [...pre, ...benchArgs(c, count, uri)], limitMs);
  return r ? count / parseBenchOutput(r.text) : NaN;
}

/** MiB/s of one nbdcopy run; NaN when it hit the time limit. */
async function copyOnce(src: string, dst: string, bytes: number, limitMs: number): Promise<number> {
  const r = await timed("nbdcopy", [src, dst], limitMs);
  return r ? bytes / (1 << 20) / r.seconds : NaN;
}

async function makeFile(path: string, size: number): Promise<void> {
  const chunk = new Uint8Array(1 << 20);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 2654435761) >>> 24;
  using f = await Deno.open(path, { write: true, create: true, truncate: true });
  for (let done = 0; done < size; done += chunk.length) {
    chunk[0] = done >> 20;
    await f.write(chunk);
  }
  await f.sync();
}

const fmt = (n: number) => (Number.isNaN(n) ? "stalled" : String(Math.round(n)));
const ratio = (a: number, b: number) => (Number.isNaN(a) || Number.isNaN(b) || !b ? "—" : `${(a / b).toFixed(2)}×`);

/** Runs the NBD benchmarks and returns their tables. */
export async function run(opts: BenchOptions): Promise<BenchTable[]> {
  for (const tool of ["qemu-img", "qemu-nbd", "nbdkit", "nbdcopy"]) {
    try {
      await new Deno.Command(tool, { args: ["--version"], stdout: "null", stderr: "null" }).output();
    } catch {
      return [{ title: "NBD", columns: ["skipped"], rows: [[`${tool} is not installed`]] }];
    }
  }
  const size = opts.quick ? 64 << 20 : 1 << 30;
  const file = `${opts.dir}/disk.raw`;
  const src = `${opts.dir}/src.raw`;
  await makeFile(file, size);
  await makeFile(src, size);
  const count = (c: Case) => (opts.quick ? 2000 : c.size === 4096 ? (c.depth === 1 ? 20000 : 50000) : 10000);
  const limit = opts.quick ? 30_000 : 120_000;

  // ---- servers over a Unix socket, taking turns within each run ----------
  const results = new Map<string, number[]>();
  const push = (k: string, v: number) => (results.get(k) ?? results.set(k, []).get(k)!).push(v);
  for (let r = 0; r < opts.runs; r++) {
    for (const s of UNIX_SERVERS) {
      await withServer(s, file, { unix: `${opts.dir}/s.sock` }, async (uri) => {
        for (const c of CASES) push(`${s}|${caseName(c)}`, await benchOnce("qemu-img", c, count(c), uri, limit));
        push(`${s}|nbdcopy out`, await copyOnce(uri, "null:", size, limit));
        push(`${s}|nbdcopy in`, await copyOnce(src, uri, size, limit));
      });
    }
  }
  const med = (s: string, k: string) => median(results.get(`${s}|${k}`) ?? [NaN]);
  const rows: (string | number)[][] = [];
  for (const k of [...CASES.map(caseName), "nbdcopy out", "nbdcopy in"]) {
    const [b, t, q, n] = UNIX_SERVERS.map((s) => med(s, k));
    const best = Math.max(q || 0, n || 0);
    rows.push([k, fmt(b), fmt(t), fmt(q), fmt(n), ratio(b, best), ratio(t, best)]);
  }
  const tables: BenchTable[] = [{
    title: `NBD server over a Unix socket (${size >> 20} MiB raw file, page cache; median of ${opts.runs})`,
    columns: [
      "case",
      "blkgraph nbd",
      "blkgraph nbd --aio=threads",
      "qemu-nbd",
      "nbdkit file",
      "blkgraph / faster of the two",
      "--aio=threads / faster of the two",
    ],
    rows,
    notes: [
      "requests/s for qemu-img bench -f raw -t none -n -c N -s SIZE -d DEPTH [-w] nbd+unix:///?socket=SOCK; MiB/s for nbdcopy URI null: (out) and nbdcopy src.raw URI (in)",
      "servers: blkgraph nbd -f raw -t -e 8 [--aio=threads] -k SOCK; qemu-nbd -f raw -t -e 8 --cache=writeback --aio=threads -k SOCK; nbdkit -f -U SOCK file FILE",
      "the servers take turns within each run; the machine is shared (2 cores), so read ratios, not absolute figures",
    ],
  }];

  // ---- TCP loopback: one run, with a time limit ----------------------------
  const tcpCases = CASES.filter((c) => c.depth === 16 || c.size === 4096);
  const tcpRows: (string | number)[][] = [];
  const tcp = new Map<string, number>();
  for (const s of SERVERS) {
    const port = 20000 + Math.floor(Math.random() * 30000);
    await withServer(s, file, { port }, async (uri) => {
      for (const c of tcpCases) tcp.set(`${s}|${caseName(c)}`, await benchOnce("qemu-img", c, count(c), uri, opts.quick ? 20_000 : 40_000));
      tcp.set(`${s}|nbdcopy out`, await copyOnce(uri, "null:", size, opts.quick ? 20_000 : 40_000));
    });
  }
  for (const k of [...tcpCases.map(caseName), "nbdcopy out"]) {
    const [b, q, n] = SERVERS.map((s) => tcp.get(`${s}|${k}`) ?? NaN);
    tcpRows.push([k, fmt(b), fmt(q), fmt(n), ratio(b, Math.max(q || 0, n || 0))]);
  }
  tables.push({
    title: "NBD server over TCP 127.0.0.1 (one run)",
    columns: ["case", "blkgraph nbd", "qemu-nbd", "nbdkit file", "blkgraph / faster of the two"],
    rows: tcpRows,
    notes: ['same clients with nbd://127.0.0.1:PORT; "stalled" = killed at the time limit (40 s)'],
  });

  // ---- the client node against qemu-nbd --------------------------------------
  const cl = new Map<string, number[]>();
  const cpush = (k: string, v: number) => (cl.get(k) ?? cl.set(k, []).get(k)!).push(v);
  await withServer("qemu-nbd", file, { unix: `${opts.dir}/c.sock` }, async (uri) => {
    for (let r = 0; r < opts.runs; r++) {
      for (const c of CASES) {
        cpush(`b|${caseName(c)}`, await benchOnce("blkgraph", c, count(c), uri, limit));
        cpush(`q|${caseName(c)}`, await benchOnce("qemu-img", c, count(c), uri, limit));
      }
    }
  });
  tables.push({
    title: `NBD client: blkgraph's nbd node against qemu-img bench on the same qemu-nbd URL (median of ${opts.runs})`,
    columns: ["case", "blkgraph bench", "qemu-img bench", "ratio"],
    rows: CASES.map((c) => {
      const b = median(cl.get(`b|${caseName(c)}`)!), q = median(cl.get(`q|${caseName(c)}`)!);
      return [caseName(c), fmt(b), fmt(q), ratio(b, q)];
    }),
    notes: [
      "blkgraph bench -f raw -t none -n -c N -s SIZE -d DEPTH [-w] nbd+unix:///?socket=SOCK, alternating with qemu-img bench, same arguments",
    ],
  });
  return tables;
}

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-nbd-bench-" });
  try {
    const { toMarkdown } = await import("./_table.ts");
    for (const t of await run({ quick: Deno.args.includes("--quick"), runs: 5, dir })) console.log(toMarkdown(t));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
