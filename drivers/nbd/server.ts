/**
 * The NBD server: {@linkcode serveNbd} exports any node of a graph (a
 * format, a filter chain, a protocol node) over TCP or a Unix socket, with
 * fixed newstyle negotiation, structured replies, metadata contexts
 * (`base:allocation`, `qemu:allocation-depth`, `qemu:dirty-bitmap:NAME`),
 * many clients at once, and a
 * graceful {@linkcode NbdServer.close}. `blkgraph nbd` (qemu-nbd's flags) is
 * built on it.
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * import { serveNbd } from "@blkgraph/blkgraph/drivers/nbd";
 * const disk = await open({ driver: "memory", size: 1 << 20 });
 * const server = await serveNbd(disk, { hostname: "127.0.0.1", port: 0, closeNode: true });
 * console.log(server.uri.startsWith("nbd://127.0.0.1:")); // true
 * await server.close();
 * ```
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { BlockNode } from "../../core/node.ts";
import type { ByteStream } from "./_io.ts";
import { allocationDepth, baseAllocation, dirtyBitmap, type MetaContextProvider } from "./_meta.ts";
import { encodeString, MAX_PAYLOAD, TF } from "./_protocol.ts";
import { type ExportConfig, negotiate } from "./_server_handshake.ts";
import { TransmissionSession } from "./_server_transmission.ts";
import { getTlsCreds, serverTls } from "./_tls.ts";

export type { MetaContextProvider, MetaExtent } from "./_meta.ts";

/** Options of {@linkcode serveNbd}. */
export interface NbdServeOptions {
  /** Unix socket path (qemu-nbd `-k`); when set, TCP options are ignored. */
  socket?: string;
  /** TCP address to bind (qemu-nbd `-b`); default `127.0.0.1`. */
  hostname?: string;
  /** TCP port (qemu-nbd `-p`); default 10809, 0 picks a free port. */
  port?: number;
  /** Export name (qemu-nbd `-x`); default `""`, the default export. */
  name?: string;
  /** Export description (qemu-nbd `-D`). */
  description?: string;
  /** Export read-only (qemu-nbd `-r`); default: read-only when the node is. */
  readOnly?: boolean;
  /** Offer `qemu:allocation-depth` (qemu-nbd `-A`). */
  allocationDepth?: boolean;
  /**
   * Dirty bitmaps of the node to export as `qemu:dirty-bitmap:NAME`
   * (qemu-nbd `-B`); a provider of that name in `metaContexts` takes
   * precedence. Each must exist and be consistent, and an enabled one cannot
   * be exported read-only from a writable node (it would change under the
   * client), as with qemu-nbd.
   */
  bitmaps?: string[];
  /** Extra metadata contexts to offer (providers for `qemu:dirty-bitmap:NAME` and the like). */
  metaContexts?: MetaContextProvider[];
  /** Most clients served at once (qemu-nbd `-e`); further connections wait. 0 (default) is no limit. */
  maxConnections?: number;
  /** Keep serving after the last client left (qemu-nbd `-t`); default true. When false the server closes itself. */
  persistent?: boolean;
  /** Advertise NBD_FLAG_CAN_MULTI_CONN; default: when more than one client may connect (as qemu-nbd). */
  multiConn?: boolean;
  /** `--discard`: `ignore` (default, as qemu-nbd) acknowledges trims without discarding; `unmap` passes them on. */
  discard?: "ignore" | "unmap";
  /** `--detect-zeroes`: writes of zeros become write-zeroes (`unmap` also unmaps, with `discard: "unmap"`). */
  detectZeroes?: "off" | "on" | "unmap";
  /** Close the node when the server closes (the server then owns the graph). */
  closeNode?: boolean;
  /** Id of `tls-creds-x509` credentials (endpoint=server): clients must STARTTLS first. */
  tlsCreds?: string;
  /** Milliseconds a client may take to finish the handshake before it is dropped; default 10000, 0 disables. */
  handshakeTimeout?: number;
}

/** Where a server listens. */
export type NbdAddress = { transport: "unix"; path: string } | { transport: "tcp"; hostname: string; port: number };

/** Counters of a running server. */
export interface NbdServerStats {
  /** Connections accepted so far. */
  accepted: number;
  /** Connections open now. */
  active: number;
  /** Connections that reached the transmission phase. */
  transmissions: number;
  /** Connections closed for breaking the protocol. */
  protocolErrors: number;
}

/** A running NBD server. */
export interface NbdServer {
  /** Where it listens. */
  readonly address: NbdAddress;
  /** The export's NBD URI (`nbd://host:port/name`, `nbd+unix:///name?socket=path`). */
  readonly uri: string;
  /** Counters. */
  readonly stats: Readonly<NbdServerStats>;
  /** Resolves when the server has stopped (after `close()`, or after the last client of a non-persistent server). */
  readonly finished: Promise<void>;
  /**
   * Stops accepting, lets requests in flight finish (new ones get
   * ESHUTDOWN), flushes the node, closes every connection and, with
   * `closeNode`, the graph.
   */
  close(): Promise<void>;
  /** Closes the server (`await using`). */
  [Symbol.asyncDispose](): Promise<void>;
}

async function exportConfig(node: BlockNode, opts: NbdServeOptions): Promise<ExportConfig> {
  const readOnly = opts.readOnly ?? node.readOnly;
  if (!readOnly && node.readOnly) {
    throw new BlockError("EROFS", `Cannot export node '${node.name}' writable: the node is read-only`, { node: node.name });
  }
  const extra = opts.metaContexts ?? [];
  const contexts: MetaContextProvider[] = [baseAllocation(node)];
  if (opts.allocationDepth) contexts.push(allocationDepth(node));
  const known = opts.bitmaps?.length ? await node.bitmaps.list() : [];
  for (const b of opts.bitmaps ?? []) {
    const given = extra.find((c) => c.name === `qemu:dirty-bitmap:${b}`);
    if (given) {
      contexts.push(given);
      continue;
    }
    const info = known.find((k) => k.name === b);
    if (!info) throw new BlockError("ENOENT", `Bitmap '${b}' is not found`, { node: node.name });
    if (info.inconsistent) {
      throw new BlockError("EINVAL", `Bitmap '${b}' is inconsistent and cannot be used`, { node: node.name });
    }
    if (readOnly && !node.readOnly && info.recording) {
      throw new BlockError("EINVAL", `Enabled bitmap '${b}' incompatible with readonly export`, { node: node.name });
    }
    if (!contexts.some((c) => c.name === `qemu:dirty-bitmap:${b}`)) contexts.push(dirtyBitmap(node, b));
  }
  for (const c of extra) if (!c.name.startsWith("qemu:dirty-bitmap:")) contexts.push(c);
  const max = opts.maxConnections ?? 0;
  if (!Number.isSafeInteger(max) || max < 0) {
    throw new BlockError("EINVAL", `Invalid maxConnections ${max}: expected a non-negative integer`);
  }
  const multiConn = opts.multiConn ?? max !== 1;
  const discard = opts.discard ?? "ignore";
  if (discard !== "ignore" && discard !== "unmap") {
    throw new BlockError("EINVAL", `Invalid discard mode '${discard}': expected ignore or unmap`);
  }
  const detectZeroes = opts.detectZeroes ?? "off";
  if (!["off", "on", "unmap"].includes(detectZeroes)) {
    throw new BlockError("EINVAL", `Invalid detect-zeroes mode '${detectZeroes}': expected off, on or unmap`);
  }
  if (detectZeroes === "unmap" && discard !== "unmap") {
    throw new BlockError("EINVAL", "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
  }
  let flags = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_CACHE;
  flags |= readOnly ? TF.READ_ONLY : TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO;
  if (multiConn) flags |= TF.CAN_MULTI_CONN;
  const minBlock = node.limits.requestAlignment;
  return {
    name: opts.name ?? "",
    nameBytes: encodeString(opts.name ?? "", "export name"),
    description: encodeString(opts.description ?? "", "export description"),
    node,
    size: node.length,
    flags,
    minBlock,
    preferredBlock: Math.max(4096, minBlock),
    maxPayload: MAX_PAYLOAD,
    contexts,
    readOnly,
    unmap: discard === "unmap",
    detectZeroes,
  };
}

async function listen(opts: NbdServeOptions): Promise<Deno.Listener> {
  if (opts.socket !== undefined) {
    // Like QEMU, a stale socket file from an earlier server is replaced.
    try {
      if (Deno.lstatSync(opts.socket).isSocket) await Deno.remove(opts.socket);
    } catch { /* not there */ }
    try {
      return Deno.listen({ transport: "unix", path: opts.socket });
    } catch (e) {
      throw new BlockError("EIO", `Cannot listen on Unix socket '${opts.socket}': ${(e as Error).message}`, { cause: e });
    }
  }
  const hostname = opts.hostname ?? "127.0.0.1";
  const port = opts.port ?? 10809;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new BlockError("EINVAL", `Invalid port ${port}: expected 0 to 65535`);
  try {
    return Deno.listen({ transport: "tcp", hostname, port });
  } catch (e) {
    throw new BlockError("EIO", `Cannot listen on ${hostname}:${port}: ${(e as Error).message}`, { cause: e });
  }
}

function uriOf(addr: NbdAddress, name: string): string {
  const n = encodeURIComponent(name).replaceAll("%2F", "/");
  if (addr.transport === "unix") return `nbd+unix:///${n}?socket=${encodeURIComponent(addr.path).replaceAll("%2F", "/")}`;
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  // Like QEMU's canonical names: no trailing slash for the default export.
  return `nbd://${host}:${addr.port}${n ? "/" + n : ""}`;
}

/**
 * Serves `node` over NBD until {@linkcode NbdServer.close} (or, when not
 * persistent, until the last client leaves).
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * import { serveNbd } from "@blkgraph/blkgraph/drivers/nbd";
 * const dir = await Deno.makeTempDir();
 * const disk = await open({ driver: "memory", size: 1 << 20 });
 * const server = await serveNbd(disk, { socket: `${dir}/disk.sock`, name: "disk", allocationDepth: true, closeNode: true });
 * console.log(server.uri); // nbd+unix:///disk?socket=/tmp/.../disk.sock
 * await server.close();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function serveNbd(node: BlockNode, opts: NbdServeOptions = {}): Promise<NbdServer> {
  const exp = await exportConfig(node, opts);
  const tls = opts.tlsCreds !== undefined ? getTlsCreds(opts.tlsCreds, "server") : undefined;
  const listener = await listen(opts);
  const la = listener.addr;
  const address: NbdAddress = la.transport === "unix"
    ? { transport: "unix", path: (la as Deno.UnixAddr).path }
    : { transport: "tcp", hostname: (la as Deno.NetAddr).hostname, port: (la as Deno.NetAddr).port };
  const max = opts.maxConnections ?? 0;
  const persistent = opts.persistent ?? true;
  const handshakeTimeout = opts.handshakeTimeout ?? 10_000;
  const stats: NbdServerStats = { accepted: 0, active: 0, transmissions: 0, protocolErrors: 0 };
  const conns = new Set<ByteStream>();
  const sessions = new Set<TransmissionSession>();
  const handlers = new Set<Promise<void>>();
  let closing = false;
  let slotFree: (() => void) | null = null;
  let resolveFinished!: () => void;
  const finished = new Promise<void>((r) => (resolveFinished = r));
  let closed: Promise<void> | undefined;

  const hooks = {
    shuttingDown: () => closing,
    startTls: tls ? (c: ByteStream) => serverTls(c, tls) : undefined,
  };

  async function handle(conn: Deno.Conn): Promise<void> {
    let stream: ByteStream = conn;
    conns.add(stream);
    let session: TransmissionSession | undefined;
    try {
      const timer = handshakeTimeout > 0 ? setTimeout(() => stream.close(), handshakeTimeout) : undefined;
      const neg = await negotiate(conn, exp, hooks).catch((e) => {
        if (e?.name === "NbdProtocolError") stats.protocolErrors++;
        return null;
      }).finally(() => clearTimeout(timer));
      if (!neg) return;
      if (neg.conn !== stream) {
        conns.delete(stream);
        stream = neg.conn;
        conns.add(stream);
      }
      if (closing) return;
      stats.transmissions++;
      session = new TransmissionSession(exp, neg);
      sessions.add(session);
      const end = await session.run();
      if (end === "protocol-error") stats.protocolErrors++;
    } finally {
      if (session) sessions.delete(session);
      conns.delete(stream);
      try {
        stream.close();
      } catch { /* already closed */ }
      stats.active--;
      const w = slotFree;
      slotFree = null;
      w?.();
      if (!persistent && stats.active === 0 && !closing) void server.close();
    }
  }

  async function acceptLoop(): Promise<void> {
    while (!closing) {
      if (max > 0 && stats.active >= max) {
        await new Promise<void>((r) => (slotFree = r));
        continue;
      }
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch {
        if (closing) return;
        continue;
      }
      if (closing) {
        conn.close();
        return;
      }
      if (address.transport === "tcp") (conn as Deno.TcpConn).setNoDelay(true);
      stats.accepted++;
      stats.active++;
      const h = handle(conn).catch(() => {});
      handlers.add(h);
      void h.finally(() => handlers.delete(h));
    }
  }

  async function shutdown(): Promise<void> {
    closing = true;
    try {
      listener.close();
    } catch { /* closed */ }
    const w = slotFree;
    slotFree = null;
    w?.();
    // Sessions finish what is in flight (new requests get ESHUTDOWN); then every connection is closed.
    await Promise.all([...sessions].map(async (s) => {
      s.shutdown();
      await s.quiesce();
    }));
    for (const c of conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await Promise.all([...handlers]);
    let error: unknown;
    if (!exp.readOnly && !node.closed) await node.flush().catch((e) => (error = e));
    if (opts.closeNode && !node.closed) await node.close().catch((e) => (error ??= e));
    if (address.transport === "unix") await Deno.remove(address.path).catch(() => {});
    resolveFinished();
    if (error) throw error;
  }

  const server: NbdServer = {
    address,
    uri: uriOf(address, exp.name),
    stats,
    finished,
    close: () => (closed ??= shutdown()),
    [Symbol.asyncDispose]: () => server.close(),
  };
  void acceptLoop();
  return server;
}
