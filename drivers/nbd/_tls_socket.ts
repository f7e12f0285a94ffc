/**
 * NBD's TLS handshakes over `node:tls` (`_tls.ts` imports this module on
 * the first STARTTLS, so that processes that never use TLS do not load the
 * `node:tls` and `node:stream` polyfills).
 *
 * @module
 */

import { Duplex } from "node:stream";
import * as tls from "node:tls";
import { BlockError } from "../../core/errors.ts";
import type { ByteStream } from "./_io.ts";

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
