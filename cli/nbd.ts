/**
 * `blkgraph nbd`: qemu-nbd on blkgraph — serves an image (any graph,
 * filters included) over NBD on a Unix socket or TCP, with qemu-nbd's
 * flags. Runs until the last client leaves (or, with `-t`, until SIGINT or
 * SIGTERM), then flushes and closes the image.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import { open } from "../core/open.ts";
import type { BlockNode } from "../core/node.ts";
import { serveNbd } from "../drivers/nbd/server.ts";
import { defineTlsCreds } from "../drivers/nbd/_tls.ts";
import {
  CliError,
  type CliIO,
  flagList,
  flagString,
  handleTermination,
  type ImageArgs,
  intArg,
  openImage,
  parseVerbArgs,
  type Verb,
  verbObjectType,
} from "./_common.ts";
import { startTrace, TRACE_FLAGS, traceFlags } from "./_trace.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph nbd [OPTIONS] FILE

Serves FILE over NBD, as qemu-nbd does.

  -p, --port=PORT           port to listen on (default 10809)
  -b, --bind=IFACE          interface to bind to (default 0.0.0.0)
  -k, --socket=PATH         listen on a Unix socket instead
  -e, --shared=NUM          serve NUM clients at once (default 1; 0 = no limit)
  -t, --persistent          don't exit on the last connection
  -x, --export-name=NAME    export name (default empty)
  -D, --description=TEXT    export description
  -o, --offset=OFFSET       export the image from OFFSET on
  -A, --allocation-depth    expose qemu:allocation-depth
  -B, --bitmap=NAME         expose a persistent dirty bitmap
  -r, --read-only           export read-only
  -f, --format=FORMAT       image format (probed when absent)
      --image-opts          FILE is a set of image options
  -n, --nocache             same as --cache=none
      --cache=MODE          none, writeback (default), writethrough, directsync, unsafe
      --aio=MODE            threads: reads and writes of a file on worker threads; native, io_uring: accepted
      --discard=MODE        ignore (default) or unmap
      --detect-zeroes=MODE  off (default), on or unmap
      --object TYPE,id=ID,...  secret or tls-creds-x509 (dir=DIR,endpoint=server[,verify-peer=on|off])
      --tls-creds=ID        require TLS with these credentials
      --handshake-limit=N   seconds a client may take to negotiate (default 10)
      --pid-file=PATH       write the server's process ID to PATH
      --fork                run the server in the background once it listens
      --trace[=FILE]        trace every request, BLKDBG event and flush of the graph
      --trace-format=F      text, json or chrome (Chrome/Perfetto trace-event JSON)
`;

const FLAGS = {
  port: { type: "string", short: "p" },
  bind: { type: "string", short: "b" },
  socket: { type: "string", short: "k" },
  shared: { type: "string", short: "e" },
  persistent: { type: "boolean", short: "t" },
  "export-name": { type: "string", short: "x" },
  description: { type: "string", short: "D" },
  offset: { type: "string", short: "o" },
  "allocation-depth": { type: "boolean", short: "A" },
  bitmap: { type: "string", short: "B", multiple: true },
  "read-only": { type: "boolean", short: "r" },
  format: { type: "string", short: "f" },
  "image-opts": { type: "boolean" },
  nocache: { type: "boolean", short: "n" },
  cache: { type: "string" },
  aio: { type: "string" },
  discard: { type: "string" },
  "detect-zeroes": { type: "string" },
  object: { type: "string", multiple: true },
  "tls-creds": { type: "string" },
  "tls-authz": { type: "string" },
  "handshake-limit": { type: "string" },
  "pid-file": { type: "string" },
  fork: { type: "boolean" },
  verbose: { type: "boolean", short: "v" },
  connect: { type: "string", short: "c" },
  disconnect: { type: "boolean", short: "d" },
  list: { type: "boolean", short: "L" },
  snapshot: { type: "boolean", short: "s" },
  "load-snapshot": { type: "string", short: "l" },
  ...TRACE_FLAGS,
} as const;

verbObjectType("tls-creds-x509");

/** `--object tls-creds-x509,id=ID,dir=DIR,endpoint=server,verify-peer=on` (secrets are defined by the common `--object` handling). */
function defineCliObject(arg: string): void {
  const parts = arg.split(/,(?!,)/).map((p) => p.replaceAll(",,", ","));
  if (parts[0] !== "tls-creds-x509" && !arg.includes("qom-type=tls-creds-x509")) return;
  const props = new Map<string, string>();
  for (const p of parts.slice(1)) {
    const eq = p.indexOf("=");
    if (eq < 0) throw new CliError(`Invalid object parameter '${p}': expected key=value`);
    props.set(p.slice(0, eq), p.slice(eq + 1));
  }
  const id = props.get("id");
  const dir = props.get("dir");
  if (!id) throw new CliError("Invalid object 'tls-creds-x509': parameter 'id' is missing");
  if (!dir) throw new CliError(`Invalid object '${id}': parameter 'dir' is missing`);
  const vp = props.get("verify-peer") ?? "on";
  if (!["on", "off", "yes", "no", "true", "false"].includes(vp)) {
    throw new CliError(`Invalid value '${vp}' for 'verify-peer': expected on or off`);
  }
  defineTlsCreds(id, {
    dir,
    endpoint: (props.get("endpoint") ?? "client") as "server" | "client",
    verifyPeer: ["on", "yes", "true"].includes(vp),
  });
}

function choice<T extends string>(v: string | undefined, what: string, choices: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (!(choices as readonly string[]).includes(v)) throw new CliError(`Invalid ${what} '${v}': expected ${choices.join(", ")}`);
  return v as T;
}

async function forkServer(args: string[], io: CliIO): Promise<number> {
  const main = new URL("./main.ts", import.meta.url).pathname;
  // Like qemu-nbd --fork: the parent returns once the child listens; the child then keeps no standard streams.
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, "nbd", ...args.filter((a) => a !== "--fork")],
    env: { BLKGRAPH_NBD_FORKED: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const errText = new Response(child.stderr).text();
  const reader = child.stdout.getReader();
  const first = await reader.read();
  reader.releaseLock();
  if (first.done || !new TextDecoder().decode(first.value).startsWith("ready")) {
    const st = await child.status;
    io.stderr(await errText);
    return st.code || 1;
  }
  await child.stdout.cancel().catch(() => {});
  await child.stderr.cancel().catch(() => {});
  child.unref();
  return 0;
}

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(args, FLAGS, USAGE, io);
  if (!p) return 0;
  const v = p.values;
  for (const f of ["connect", "disconnect"]) {
    if (v[f] !== undefined) {
      throw new CliError(`--${f} needs the kernel NBD client, which blkgraph does not drive; use nbdfuse or open nbd:// URLs instead`);
    }
  }
  if (v.list) throw new CliError("-L/--list is not supported; use 'nbdinfo --list URI'");
  if (v.snapshot || v["load-snapshot"] !== undefined) throw new CliError("-s/-l (snapshots) are not supported by blkgraph nbd yet");
  if (v["tls-authz"] !== undefined) throw new CliError("--tls-authz is not supported");
  if (p.positionals.length !== 1) throw new CliError(`Expecting one image file name\nTry '--help' for more information.`);
  if (v.fork && Deno.env.get("BLKGRAPH_NBD_FORKED") !== "1") return await forkServer(args, io);

  for (const o of flagList(v, "object")) {
    try {
      defineCliObject(o);
    } catch (e) {
      throw new CliError((e as Error).message);
    }
  }
  const socket = flagString(v, "socket");
  const portText = flagString(v, "port");
  const port = portText === undefined ? 10809 : intArg(portText, "port");
  if (port < 0 || port > 65535) throw new CliError(`Invalid port '${portText}'`);
  const sharedText = flagString(v, "shared");
  const shared = sharedText === undefined ? 1 : intArg(sharedText, "shared device number");
  if (shared < 0) throw new CliError(`Invalid shared device number '${sharedText}'`);
  const discard = choice(flagString(v, "discard"), "discard mode", ["ignore", "unmap"] as const, "ignore");
  const detectZeroes = choice(flagString(v, "detect-zeroes"), "detect-zeroes mode", ["off", "on", "unmap"] as const, "off");
  if (detectZeroes === "unmap" && discard !== "unmap") {
    throw new CliError("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
  }
  const cache = v.nocache ? "none" : flagString(v, "cache") ?? "writeback";
  const limitText = flagString(v, "handshake-limit");
  const handshakeLimit = limitText === undefined ? 10 : intArg(limitText, "handshake limit");
  const readOnly = v["read-only"] === true;
  const offsetText = flagString(v, "offset");
  const traceTarget = traceFlags(v);

  let node: BlockNode = await openExport(p.positionals[0], {
    format: flagString(v, "format"),
    imageOpts: v["image-opts"] === true,
    readOnly,
    cache,
  }, flagString(v, "aio"));
  // The pid file exists before the socket does: whoever sees the socket can read the pid.
  const pidFile = flagString(v, "pid-file");
  let server;
  let trace;
  try {
    if (pidFile) await Deno.writeTextFile(pidFile, `${Deno.pid}\n`);
    if (offsetText !== undefined) {
      // qemu-nbd takes a plain byte count here ("Invalid offset '512k'").
      const offset = /^\d+$/.test(offsetText) ? Number(offsetText) : NaN;
      if (!Number.isSafeInteger(offset)) throw new CliError(`Invalid offset '${offsetText}'`);
      node = await open({ driver: "raw", offset, size: Math.max(0, node.length - offset), file: node }, { readOnly });
    }
    trace = traceTarget === undefined ? undefined : startTrace(node, { ...traceTarget, io });
    server = await serveNbd(node, {
      socket,
      hostname: flagString(v, "bind") ?? "0.0.0.0",
      port,
      name: flagString(v, "export-name") ?? "",
      description: flagString(v, "description"),
      readOnly,
      allocationDepth: v["allocation-depth"] === true,
      // qemu-nbd keeps its -B list in reverse (each one is prepended): the contexts come in that order.
      bitmaps: flagList(v, "bitmap").reverse(),
      maxConnections: shared,
      persistent: v.persistent === true,
      discard,
      detectZeroes,
      closeNode: true,
      tlsCreds: flagString(v, "tls-creds"),
      handshakeTimeout: handshakeLimit * 1000,
    });
  } catch (e) {
    trace?.stop();
    await node.close().catch(() => {});
    if (pidFile) await Deno.remove(pidFile).catch(() => {});
    if (e instanceof BlockError) throw new CliError(e.message);
    throw e;
  }
  if (v.verbose) io.stderr(`blkgraph nbd: serving ${server.uri}\n`);
  if (Deno.env.get("BLKGRAPH_NBD_FORKED") === "1") {
    await Deno.stdout.write(new TextEncoder().encode("ready\n"));
    // The parent stops reading both pipes now: nothing more may go to them.
    io = { stdout: () => {}, stderr: () => {} };
  }
  const stop = () => void server.close().catch(() => {});
  // SIGINT and SIGTERM through the CLI's handler (which would otherwise exit at once), SIGHUP here.
  const release = handleTermination(stop);
  Deno.addSignalListener("SIGHUP", stop);
  try {
    await server.finished;
    await server.close();
  } finally {
    trace?.stop();
    release();
    Deno.removeSignalListener("SIGHUP", stop);
    if (pidFile) await Deno.remove(pidFile).catch(() => {});
  }
  return 0;
}

/** The `nbd` verb (qemu-nbd). */
export const nbdVerb: Verb = { name: "nbd", summary: VERB_SUMMARIES.nbd, run };

/**
 * Opens the export; `--aio=threads` on a plain filename opens its file node
 * with `aio=threads` (QEMU's meaning: I/O on worker threads), in the format
 * given by `-f` or probed by a first, read-only open.
 */
async function openExport(filename: string, opts: ImageArgs, aio: string | undefined): Promise<BlockNode> {
  const plain = !opts.imageOpts && !filename.startsWith("json:") && !filename.includes(":") && !filename.includes("=");
  if (aio !== "threads" || !plain) return await openImage(filename, opts);
  let format = opts.format;
  if (format === undefined) {
    const probe = await openImage(filename, { readOnly: true, forceShare: true });
    format = probe.formatName;
    await probe.close();
  }
  try {
    return await open({ file: { driver: "file", filename, aio } }, { format, readOnly: opts.readOnly, cache: opts.cache });
  } catch (e) {
    throw new CliError(`Could not open '${filename}': ${(e as Error).message}`);
  }
}
