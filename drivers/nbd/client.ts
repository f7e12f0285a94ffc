/**
 * The `nbd` protocol driver: a node backed by an export of an NBD server
 * (qemu-nbd, nbdkit, blkgraph's own {@linkcode serveNbd}). QEMU's options:
 *
 * - `server.type` = `inet` | `unix`, with `server.host` / `server.port`
 *   (default 10809) or `server.path`; `export` (default `""`);
 * - `tls-creds` (id of `tls-creds-x509` credentials, endpoint=client) and
 *   `tls-hostname`;
 * - `allocation-depth` = `on`: with a server offering
 *   `qemu:allocation-depth` (qemu-nbd `-A`), ranges no layer of the
 *   server's backing chain allocates report `allocated: false` (QEMU's
 *   `x-dirty-bitmap=qemu:allocation-depth` trick) and `depth` is the
 *   server's (the layer that allocates it); by default the node is
 *   allocated everywhere at depth 0 like any protocol node, as QEMU's
 *   client reports it;
 * - `x-dirty-bitmap` = `qemu:dirty-bitmap:NAME` (QEMU's option): the node
 *   asks for that context instead of `base:allocation`, so block status
 *   reports dirty ranges as holes that nothing allocates (what `qemu-img
 *   map` shows with it), and `bitmapExtent(NAME, ...)` /
 *   `bitmaps.dirtyRanges(NAME)` answer from the server's bitmap — the client
 *   side of an incremental backup;
 * - `reconnect-delay` (seconds, default 0): when the server goes away, a
 *   request waits that long for the node to connect again and is then sent
 *   again (QEMU's option); without it, requests fail with EIO naming the
 *   server;
 * - `open-timeout`, `cache.direct`, `cache.no-flush`: accepted and ignored.
 *
 * Filenames: `nbd://host[:port]/export`, `nbd+tcp://…`,
 * `nbd+unix:///export?socket=PATH`, and QEMU's legacy
 * `nbd:HOST:PORT[:exportname=NAME]`, `nbd:unix:PATH[:exportname=NAME]`.
 *
 * The node uses structured replies, keeps many requests in flight on one
 * connection, maps `base:allocation` onto `blockStatus`, passes flush, FUA,
 * trim and write-zeroes (NO_HOLE, FAST_ZERO) when the server advertises
 * them, and takes its block-size limits from the server.
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * import { serveNbd } from "@blkgraph/blkgraph/drivers/nbd";
 * const disk = await open({ driver: "memory", size: 1 << 20 });
 * const server = await serveNbd(disk, { hostname: "127.0.0.1", port: 0, closeNode: true });
 * await using remote = await open(server.uri);
 * await remote.pwrite(0, new Uint8Array(512).fill(7));
 * const back = new Uint8Array(512);
 * await remote.pread(0, back);
 * console.log(back[0], remote.length); // 7 1048576
 * await remote.close();
 * await server.close();
 * ```
 *
 * @module
 */

import { BlockError, toBlockError } from "../../core/errors.ts";
import { checkKnownOptions, checkPreallocation, optBool, optEnum, optInt, optString } from "../../core/options.ts";
import { registerDriver } from "../../core/registry.ts";
import type { BlockDriver, BlockStatus, DriverInstance } from "../../core/node.ts";
import { ReconnectingConnection } from "./_reconnect.ts";
import { ClientConnection } from "./_client_conn.ts";
import { clientNegotiate } from "./_client_handshake.ts";
import { CMD, CMD_FLAG, STATE_DIRTY, STATE_HOLE, STATE_ZERO, TF } from "./_protocol.ts";
import { clientTls, getTlsCreds } from "./_tls.ts";

const KNOWN = [
  "server.type",
  "server.host",
  "server.port",
  "server.path",
  "export",
  "tls-creds",
  "tls-hostname",
  "allocation-depth",
  "x-dirty-bitmap",
  "filename",
  "host",
  "port",
  "path",
  "reconnect-delay",
  "open-timeout",
  "backing",
  // Host-cache flags mean nothing for a socket (QEMU ignores them for nbd too).
  "cache.direct",
  "cache.no-flush",
];

/**
 * Parses an NBD filename into driver options (QEMU's `nbd_parse_uri` and
 * `nbd_parse_filename`).
 *
 * @example
 * ```ts
 * import { parseNbdFilename } from "@blkgraph/blkgraph/drivers/nbd";
 * console.log(parseNbdFilename("nbd+unix:///disk?socket=/tmp/s"));
 * // { "server.type": "unix", "server.path": "/tmp/s", export: "disk", filename: "nbd+unix:///disk?socket=/tmp/s" }
 * ```
 */
export function parseNbdFilename(filename: string): Record<string, unknown> {
  const { export: exp, ...o } = parseNbdUri(filename);
  // As QEMU's nbd_parse_uri and nbd_parse_filename: an empty export name is no export option.
  return { ...o, ...(exp ? { export: exp } : {}), filename: canonicalName({ ...o, export: exp }) };
}

/** QEMU's canonical name of an NBD node (what `qemu-img info` and `map` print). */
function canonicalName(o: Record<string, unknown>): string {
  const exp = String(o.export ?? "");
  const e = exp ? "/" + encodeURIComponent(exp).replaceAll("%2F", "/") : "";
  if (o["server.type"] === "unix") return `nbd+unix://${e}?socket=${o["server.path"]}`;
  const host = String(o["server.host"]);
  return `nbd://${host.includes(":") ? `[${host}]` : host}:${o["server.port"] ?? 10809}${e}`;
}

/**
 * QEMU's nbd_refresh_filename: `nbd+unix:///EXPORT?socket=PATH` or
 * `nbd://HOST:PORT/EXPORT` (without `/EXPORT` when no export is named),
 * from the options however they were given (`server.*`, a nested `server`,
 * the legacy `host`/`port`/`path`).
 */
function nbdRefreshFilename(o: Readonly<Record<string, unknown>>): string | undefined {
  const server = o.server !== null && typeof o.server === "object" ? o.server as Record<string, unknown> : {};
  const get = (k: string) => o[`server.${k}`] ?? server[k] ?? o[k];
  const path = get("path");
  const host = get("host");
  const type = get("type") ?? (path !== undefined ? "unix" : "inet");
  // An export given, even "", is named ("nbd://h:p/"); none given, no slash.
  const exp = o.export !== undefined ? `/${o.export}` : "";
  if (type === "unix" && path !== undefined) return exp ? `nbd+unix://${exp}?socket=${path}` : `nbd+unix://?socket=${path}`;
  if (type === "inet" && host !== undefined) return `nbd://${host}:${get("port") ?? 10809}${exp}`;
  return undefined;
}

function parseNbdUri(filename: string): Record<string, unknown> {
  const bad = (why: string): never => {
    throw new BlockError("EINVAL", `Invalid NBD filename '${filename}': ${why}`);
  };
  const legacy = /^nbd:(?!\/\/)(.*)$/.exec(filename);
  if (legacy) {
    let rest = legacy[1];
    let exp = "";
    const en = rest.indexOf(":exportname=");
    if (en >= 0) {
      exp = rest.slice(en + 12);
      rest = rest.slice(0, en);
    }
    if (rest.startsWith("unix:")) return { "server.type": "unix", "server.path": rest.slice(5), export: exp };
    const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(rest) ?? /^(\[[^\]]+\]|[^:]+)$/.exec(rest);
    if (!m) return bad("expected nbd:HOST:PORT[:exportname=NAME] or nbd:unix:PATH[:exportname=NAME]");
    return { "server.type": "inet", "server.host": m[1].replace(/^\[|\]$/g, ""), "server.port": m[2] ?? "10809", export: exp };
  }
  const m = /^(nbd|nbd\+tcp|nbd\+unix|nbds|nbds\+tcp|nbds\+unix):\/\/([^/?#]*)(\/[^?#]*)?(?:\?([^#]*))?$/.exec(filename);
  if (!m) return bad("expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH");
  const [, scheme, authority, path, query] = m;
  if (scheme.startsWith("nbds")) return bad("TLS URIs (nbds://) need tls-creds; give the options instead");
  let exp = "";
  try {
    exp = decodeURIComponent((path ?? "").replace(/^\//, ""));
  } catch {
    bad("the export name is not valid percent-encoding");
  }
  if (scheme === "nbd+unix") {
    if (authority) bad("a Unix socket URI has no host");
    const q = /^socket=(.+)$/.exec(query ?? "");
    if (!q) bad("nbd+unix needs ?socket=PATH");
    return { "server.type": "unix", "server.path": decodeURIComponent(q![1]), export: exp };
  }
  if (query) bad(`unexpected query '${query}'`);
  const hp = /^(\[[^\]]+\]|[^:]*)(?::(\d+))?$/.exec(authority);
  if (!hp || !hp[1]) bad("a host is required");
  return { "server.type": "inet", "server.host": hp![1].replace(/^\[|\]$/g, ""), "server.port": hp![2] ?? "10809", export: exp };
}

/**
 * The NBD client protocol driver (registered as `nbd`).
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * import { serveNbd } from "@blkgraph/blkgraph/drivers/nbd";
 * const dir = await Deno.makeTempDir();
 * const server = await serveNbd(await open({ driver: "memory", size: 65536 }), { socket: `${dir}/s.sock`, closeNode: true });
 * const node = await open({ driver: "nbd", server: { type: "unix", path: `${dir}/s.sock` } });
 * console.log(node.driver.name, node.length); // nbd 65536
 * await node.close();
 * await server.close();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export const nbdDriver: BlockDriver = {
  name: "nbd",
  kind: "protocol",
  protocolPrefix: "nbd",
  parseFilename: parseNbdFilename,
  options: KNOWN,
  // QEMU's nbd has no create of its own: bdrv_create_opts_simple's options, and its check (an export is only
  // opened and emptied: nothing to preallocate).
  createOptions: [
    { name: "preallocation", type: "str", help: "Preallocation mode (allowed values: off)" },
    { name: "size", type: "size", help: "Virtual disk size" },
  ],
  createOpensExisting: true,
  checkCreate(ctx): void {
    checkPreallocation(ctx.options, { driver: "nbd", allowed: ["off"], unsupported: (m) => `Unsupported preallocation mode '${m}'` });
  },
  strongOptions: ["path", "host", "port", "export", "tls-creds", "tls-hostname", "server."],
  exactFilename: ({ options }) => nbdRefreshFilename(options),
  async open(ctx): Promise<DriverInstance> {
    let o = ctx.options;
    // Dotted keys arrive nested ({server: {type, path}}): flatten them back.
    if (o.server !== null && typeof o.server === "object") {
      const { server, ...rest } = o;
      o = { ...rest, ...Object.fromEntries(Object.entries(server as Record<string, unknown>).map(([k, v]) => [`server.${k}`, v])) };
    }
    if (typeof o.filename === "string") {
      const { filename, ...rest } = o;
      o = { ...parseNbdUri(filename as string), ...rest };
    }
    checkKnownOptions(o, KNOWN, "nbd");
    if (o.backing !== undefined && o.backing !== null) {
      throw new BlockError("EINVAL", "Invalid option 'backing' for driver 'nbd': a protocol node has no backing file");
    }
    const path = optString(o, "server.path", "nbd") ?? optString(o, "path", "nbd");
    const type = optEnum(o, "server.type", "nbd", ["inet", "unix"] as const) ?? (path !== undefined ? "unix" : "inet");
    const exportName = optString(o, "export", "nbd") ?? "";
    const host = optString(o, "server.host", "nbd") ?? optString(o, "host", "nbd");
    const port = optInt(o, "server.port", "nbd") ?? optInt(o, "port", "nbd") ?? 10809;
    const depthMode = optBool(o, "allocation-depth", "nbd") ?? false;
    const tlsId = optString(o, "tls-creds", "nbd");
    const dirtyContext = optString(o, "x-dirty-bitmap", "nbd");
    if (type === "unix" && !path) throw new BlockError("EINVAL", "Invalid options for driver 'nbd': server.type=unix needs server.path");
    if (type === "inet" && !host) throw new BlockError("EINVAL", "Invalid options for driver 'nbd': server.type=inet needs server.host");
    if (port > 65535) {
      throw new BlockError("EINVAL", `Invalid value '${port}' for option 'server.port' of driver 'nbd': expected 0 to 65535`);
    }
    const uri = type === "unix"
      ? `nbd+unix:///${encodeURIComponent(exportName)}?socket=${path}`
      : `nbd://${host!.includes(":") ? `[${host}]` : host}:${port}/${encodeURIComponent(exportName)}`;
    const creds = tlsId !== undefined ? getTlsCreds(tlsId, "client") : undefined;
    const tlsHost = optString(o, "tls-hostname", "nbd") ?? host ?? "localhost";

    // One connection and its handshake; run again to reconnect.
    const connect = async (): Promise<ClientConnection> => {
      let conn: Deno.Conn;
      try {
        conn = type === "unix" ? await Deno.connect({ transport: "unix", path: path! }) : await Deno.connect({ hostname: host!, port });
        if (type === "inet") (conn as Deno.TcpConn).setNoDelay(true);
      } catch (e) {
        // A host that does not resolve: QEMU's inet_parse_connect_saddr words it so.
        const dns = /^failed to lookup address information: (.*)$/.exec(e instanceof Error ? e.message : "");
        if (dns && type === "inet") {
          throw new BlockError("EIO", `address resolution failed for ${host}:${port}: ${dns[1]}`, { node: ctx.node.name });
        }
        // QEMU's words: "Failed to connect to 'host:port': Connection refused" (socket_connect's error).
        const err = toBlockError(e, `Cannot connect to NBD server ${uri}`);
        const why = e instanceof Error && e.name === "ConnectionRefused" ? "Connection refused" : err.strerror;
        const target = type === "unix" ? path : `${host}:${port}`;
        throw new BlockError(err.code, `Cannot connect to NBD server ${uri}: ${why}`, {
          node: ctx.node.name,
          cause: e,
          qemuMessage: `Failed to connect to '${target}': ${why}`,
        });
      }
      try {
        const info = await clientNegotiate(conn, {
          export: exportName,
          // qemu:allocation-depth only when asked for (QEMU's client never reads it beside base:allocation).
          contexts: depthMode ? [dirtyContext ?? "base:allocation", "qemu:allocation-depth"] : [dirtyContext ?? "base:allocation"],
          server: uri,
          startTls: creds ? (s) => clientTls(s, creds, tlsHost) : undefined,
        });
        return new ClientConnection(info, uri);
      } catch (e) {
        try {
          conn.close();
        } catch { /* closed */ }
        if (e instanceof BlockError && e.name !== "ConnectionClosedError") throw e;
        throw toBlockError(e, `NBD handshake with ${uri} failed`);
      }
    };
    const reconnectDelay = optInt(o, "reconnect-delay", "nbd") ?? 0;
    const c = new ReconnectingConnection(await connect(), connect, reconnectDelay);
    const info = c.info;
    if (info.flags & TF.READ_ONLY && !ctx.readOnly) {
      await c.close();
      throw new BlockError("EROFS", `Cannot open NBD export ${uri} read-write: the export is read-only`, { node: ctx.node.name });
    }
    if (dirtyContext !== undefined && !info.contexts.has(dirtyContext)) {
      await c.close();
      // QEMU 7.2 says only "Could not open image: Invalid argument" here.
      throw new BlockError("EINVAL", `requested x-dirty-bitmap ${dirtyContext} not found on ${uri}`, { node: ctx.node.name });
    }
    // With x-dirty-bitmap, that context's flags stand in for base:allocation's (dirty = NBD_STATE_HOLE), as in QEMU.
    const baseId = info.contexts.get(dirtyContext ?? "base:allocation");
    const bitmapName = dirtyContext?.startsWith("qemu:dirty-bitmap:") ? dirtyContext.slice(18) : undefined;
    const depthId = depthMode ? info.contexts.get("qemu:allocation-depth") : undefined;
    const align = info.minBlock;
    const maxTransfer = Math.max(align, Math.floor(Math.min(info.maxPayload, 32 << 20) / align) * align);
    const maxEffect = Math.floor(2 ** 31 / align) * align;
    const can = (f: number) => (info.flags & f) !== 0;

    const inst: DriverInstance = {
      limits: { requestAlignment: align, maxTransfer, maxWriteZero: maxEffect, maxDiscard: maxEffect, optDiscard: info.preferredBlock },
      checksBounds: false,
      supportsFua: can(TF.SEND_FUA),
      getLength: () => info.size,
      async pread(offset, buf) {
        // The core lets reads run past the end of a protocol node; NBD must not.
        const n = Math.max(0, Math.min(buf.length, info.size - offset));
        if (n < buf.length) buf.fill(0, n);
        if (n) await c.request(CMD.READ, 0, offset, n, { buf: n < buf.length ? buf.subarray(0, n) : buf });
      },
      async pwrite(offset, data, opts) {
        checkEnd(offset, data.length, "write");
        await c.request(CMD.WRITE, opts.fua && can(TF.SEND_FUA) ? CMD_FLAG.FUA : 0, offset, data.length, { data });
      },
      async flush() {
        if (can(TF.SEND_FLUSH)) await c.request(CMD.FLUSH, 0, 0, 0);
      },
      // NBD has no resize: any size up to the export's is fine when it need not be exact (QEMU's nbd_co_truncate).
      truncate(length, opts) {
        if (length !== info.size && opts.exact !== false) {
          throw new BlockError("ENOTSUP", `Cannot resize NBD nodes: the export ${uri} is ${info.size} bytes, ${length} asked`, {
            qemuMessage: "Cannot resize NBD nodes",
          });
        }
        if (length > info.size) {
          throw new BlockError("EINVAL", `Cannot grow NBD nodes: the export ${uri} is ${info.size} bytes, ${length} asked`, {
            qemuMessage: "Cannot grow NBD nodes",
          });
        }
      },
      async blockStatus(offset, length): Promise<BlockStatus> {
        const all: BlockStatus = { offset, length, data: true, zero: false, allocated: true, depth: 0 };
        if (baseId === undefined && depthId === undefined) return all;
        const len = Math.min(length, 0xffffffff - (0xffffffff % align), info.size - offset);
        const ext = await c.request(CMD.BLOCK_STATUS, CMD_FLAG.REQ_ONE, offset, len);
        const base = baseId !== undefined ? ext?.get(baseId)?.[0] : undefined;
        const depth = depthId !== undefined ? ext?.get(depthId)?.[0] : undefined;
        let n = Math.min(len, base?.length ?? len, depth?.length ?? len);
        n = Math.max(1, n);
        const st: BlockStatus = { ...all, length: n, hostOffset: offset, file: ctx.node };
        if (base) {
          st.data = (base.flags & STATE_HOLE) === 0;
          st.zero = (base.flags & STATE_ZERO) !== 0;
          if (dirtyContext !== undefined) st.allocated = st.present = st.data || st.zero;
        }
        if (depth) {
          st.depth = Math.max(0, depth.flags - 1);
          st.allocated = depth.flags > 0;
        }
        return st;
      },
      async bitmapExtent(name, offset, length) {
        if (name !== bitmapName || baseId === undefined) {
          throw new BlockError(
            "ENOENT",
            `Dirty bitmap '${name}' not found (open the NBD node with x-dirty-bitmap=qemu:dirty-bitmap:${name})`,
            {
              node: ctx.node.name,
            },
          );
        }
        const len = Math.min(length, 0xffffffff - (0xffffffff % align), info.size - offset);
        if (len <= 0) return { offset, length: 0, dirty: false };
        const e = (await c.request(CMD.BLOCK_STATUS, CMD_FLAG.REQ_ONE, offset, len))?.get(baseId)?.[0];
        if (!e) throw new BlockError("EIO", `${uri} answered block status without context ${dirtyContext}`, { node: ctx.node.name });
        return { offset, length: Math.max(1, Math.min(e.length, len)), dirty: (e.flags & STATE_DIRTY) !== 0 };
      },
      async close() {
        await c.close();
      },
      info: () => ({
        server: uri,
        export: exportName,
        "export-size": info.size,
        "transmission-flags": info.flags,
        "block-size": [info.minBlock, info.preferredBlock, info.maxPayload],
        structured: info.structured,
        contexts: [...info.contexts.keys()],
        ...(info.description !== undefined ? { description: info.description } : {}),
      }),
    };
    const checkEnd = (offset: number, length: number, what: string) => {
      if (offset + length > info.size) {
        throw new BlockError("ENOSPC", `Cannot ${what} ${length} bytes at offset ${offset}: the NBD export ${uri} ends at ${info.size}`, {
          node: ctx.node.name,
          offset,
          length,
        });
      }
    };
    if (can(TF.SEND_WRITE_ZEROES)) {
      inst.pwriteZeroes = async (offset, length, opts) => {
        checkEnd(offset, length, "write zeroes to");
        let flags = opts.fua && can(TF.SEND_FUA) ? CMD_FLAG.FUA : 0;
        if (!opts.mayUnmap) flags |= CMD_FLAG.NO_HOLE;
        if (opts.noFallback) {
          if (!can(TF.SEND_FAST_ZERO)) {
            throw new BlockError("ENOTSUP", `Cannot write zeroes fast to ${length} bytes at offset ${offset}: ${uri} has no fast zero`);
          }
          flags |= CMD_FLAG.FAST_ZERO;
        }
        await c.request(CMD.WRITE_ZEROES, flags, offset, length);
      };
    }
    if (can(TF.SEND_TRIM)) {
      inst.pdiscard = async (offset, length) => {
        const end = Math.min(offset + length, info.size);
        if (end > offset) await c.request(CMD.TRIM, 0, offset, end - offset);
      };
    }
    return inst;
  },
};

registerDriver(nbdDriver);
