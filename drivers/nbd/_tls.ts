/**
 * TLS for NBD's in-band `NBD_OPT_STARTTLS` upgrade. Deno's own
 * `Deno.startTls` is client-side only, so the server wraps the accepted
 * socket in a Node `Duplex` and runs `node:tls`'s `TLSSocket({isServer:
 * true})` over it; the client runs `tls.connect({socket})` the same way
 * (`Deno.startTls` works on TCP only and sends no client certificate). Credentials follow
 * QEMU's `tls-creds-x509` object: a directory holding `ca-cert.pem`,
 * `server-cert.pem`, `server-key.pem` (and the client's `client-cert.pem`,
 * `client-key.pem`).
 *
 * @module
 */

import { Duplex } from "node:stream";
import * as tls from "node:tls";
import { BlockError } from "../../core/errors.ts";
import type { ByteStream } from "./_io.ts";

/** A `tls-creds-x509` object, as QEMU's `--object tls-creds-x509,id=ID,dir=DIR,endpoint=server|client,verify-peer=on|off`. */
export interface TlsCredsOptions {
  /** Directory with the PEM files. */
  dir: string;
  /** Which side these credentials are for. */
  endpoint: "server" | "client";
  /** Server: require and check a client certificate (QEMU's default: on). */
  verifyPeer?: boolean;
}

/** Loaded credentials. */
export interface TlsCreds {
  /** Which side. */
  readonly endpoint: "server" | "client";
  /** CA certificate (PEM), when the directory has one. */
  readonly ca?: string;
  /** This side's certificate (PEM). */
  readonly cert?: string;
  /** This side's key (PEM). */
  readonly key?: string;
  /** Require a peer certificate signed by the CA. */
  readonly verifyPeer: boolean;
}

const creds = new Map<string, TlsCreds>();

function readPem(dir: string, name: string, required: boolean, id: string): string | undefined {
  try {
    return Deno.readTextFileSync(`${dir}/${name}`);
  } catch (e) {
    if (!required) return undefined;
    throw new BlockError("ENOENT", `Cannot read '${dir}/${name}' for TLS credentials '${id}': ${(e as Error).message}`);
  }
}

/**
 * Defines TLS credentials under `id` (what `--object tls-creds-x509,...` does).
 *
 * @example
 * ```ts
 * import { defineTlsCreds, hasTlsCreds } from "@blkgraph/blkgraph/drivers/nbd";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/ca-cert.pem`, "-----BEGIN CERTIFICATE-----\n");
 * defineTlsCreds("tls-example", { dir, endpoint: "client" });
 * console.log(hasTlsCreds("tls-example")); // true
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function defineTlsCreds(id: string, opts: TlsCredsOptions): void {
  if (creds.has(id)) throw new BlockError("EEXIST", `Duplicate object id '${id}': TLS credentials with that id are already defined`);
  if (opts.endpoint !== "server" && opts.endpoint !== "client") {
    throw new BlockError(
      "EINVAL",
      `Invalid value '${String(opts.endpoint)}' for 'endpoint' of TLS credentials '${id}': expected server or client`,
    );
  }
  const server = opts.endpoint === "server";
  const verifyPeer = opts.verifyPeer ?? true;
  creds.set(id, {
    endpoint: opts.endpoint,
    ca: readPem(opts.dir, "ca-cert.pem", !server || verifyPeer, id),
    cert: readPem(opts.dir, server ? "server-cert.pem" : "client-cert.pem", server, id),
    key: readPem(opts.dir, server ? "server-key.pem" : "client-key.pem", server, id),
    verifyPeer,
  });
}

/** Whether credentials `id` exist. */
export function hasTlsCreds(id: string): boolean {
  return creds.has(id);
}

/** The credentials `id`, checked to be for `endpoint`. */
export function getTlsCreds(id: string, endpoint: "server" | "client"): TlsCreds {
  const c = creds.get(id);
  if (!c) {
    throw new BlockError(
      "EINVAL",
      `No TLS credentials with id '${id}' (define them with --object tls-creds-x509,id=${id},dir=DIR,endpoint=${endpoint})`,
    );
  }
  if (c.endpoint !== endpoint) {
    throw new BlockError(
      "EINVAL",
      `TLS credentials '${id}' are for endpoint '${c.endpoint}', but the ${endpoint} needs endpoint=${endpoint}`,
    );
  }
  return c;
}

/** A Node Duplex over a {@linkcode ByteStream} (what `TLSSocket` wraps). */
function duplexOf(conn: ByteStream): Duplex {
  let pumping = false;
  const d: Duplex = new Duplex({
    read() {
      if (pumping) return;
      pumping = true;
      void (async () => {
        const b = new Uint8Array(64 << 10);
        for (;;) {
          let n: number | null;
          try {
            n = await conn.read(b);
          } catch {
            n = null;
          }
          if (n === null) {
            d.push(null);
            return;
          }
          if (!d.push(b.slice(0, n))) {
            pumping = false;
            return;
          }
        }
      })();
    },
    write(chunk: Uint8Array, _enc, cb) {
      void (async () => {
        for (let o = 0; o < chunk.length;) o += await conn.write(chunk.subarray(o));
      })().then(() => cb(), (e) => cb(e as Error));
    },
    destroy(_err, cb) {
      try {
        conn.close();
      } catch { /* already closed */ }
      cb(null);
    },
  });
  return d;
}

/** A {@linkcode ByteStream} over a Node TLS socket. */
function streamOf(t: tls.TLSSocket): ByteStream {
  const chunks: Uint8Array[] = [];
  let ended = false;
  let waiter: (() => void) | null = null;
  const wake = () => {
    const w = waiter;
    waiter = null;
    w?.();
  };
  t.on("data", (c: Uint8Array) => {
    chunks.push(c);
    wake();
  });
  t.on("end", () => {
    ended = true;
    wake();
  });
  t.on("close", () => {
    ended = true;
    wake();
  });
  t.on("error", () => {
    ended = true;
    wake();
  });
  return {
    async read(p) {
      while (!chunks.length) {
        if (ended) return null;
        await new Promise<void>((r) => (waiter = r));
      }
      const c = chunks[0];
      const n = Math.min(c.length, p.length);
      p.set(c.subarray(0, n));
      if (n === c.length) chunks.shift();
      else chunks[0] = c.subarray(n);
      return n;
    },
    write(p) {
      if (ended) return Promise.reject(new BlockError("EIO", "TLS connection closed"));
      const copy = p.slice();
      return new Promise((resolve, reject) => t.write(copy, (e) => (e ? reject(e) : resolve(copy.length))));
    },
    close() {
      t.destroy();
    },
  };
}

/** Runs the server side of a TLS handshake over `conn`; resolves to the encrypted stream. */
export function serverTls(conn: ByteStream, c: TlsCreds): Promise<ByteStream> {
  const t = new tls.TLSSocket(duplexOf(conn), {
    isServer: true,
    secureContext: tls.createSecureContext({ cert: c.cert, key: c.key, ca: c.ca, minVersion: "TLSv1.2" }),
    requestCert: c.verifyPeer,
    rejectUnauthorized: c.verifyPeer,
  });
  return new Promise((resolve, reject) => {
    t.once("secure", () => resolve(streamOf(t)));
    t.once("error", (e) => {
      t.destroy();
      reject(new BlockError("EACCES", `TLS handshake failed: ${e.message}`));
    });
  });
}

/** Runs the client side of a TLS handshake over `conn` (with the client certificate when the credentials have one). */
export function clientTls(conn: ByteStream, c: TlsCreds, hostname: string): Promise<ByteStream> {
  const t = tls.connect({
    socket: duplexOf(conn),
    servername: /^[\d.]+$|:/.test(hostname) ? undefined : hostname,
    host: hostname,
    ca: c.ca,
    cert: c.cert,
    key: c.key,
    minVersion: "TLSv1.2",
  });
  return new Promise((resolve, reject) => {
    t.once("secureConnect", () => resolve(streamOf(t)));
    t.once("error", (e) => {
      t.destroy();
      reject(new BlockError("EACCES", `TLS handshake with '${hostname}' failed: ${e.message}`));
    });
  });
}
