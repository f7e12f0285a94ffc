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
 * The handshakes themselves live in `_tls_socket.ts`, imported on the first
 * STARTTLS: `node:tls` and `node:stream` cost every process that loads the
 * nbd driver tens of milliseconds at start-up, and most never use TLS.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import type { ByteStream } from "./_io.ts";
import type { TlsCreds } from "./_tls_socket.ts";

export type { TlsCreds };

/** A `tls-creds-x509` object, as QEMU's `--object tls-creds-x509,id=ID,dir=DIR,endpoint=server|client,verify-peer=on|off`. */
export interface TlsCredsOptions {
  /** Directory with the PEM files. */
  dir: string;
  /** Which side these credentials are for. */
  endpoint: "server" | "client";
  /** Server: require and check a client certificate (QEMU's default: on). */
  verifyPeer?: boolean;
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

/** Runs the server side of a TLS handshake over `conn`; resolves to the encrypted stream. */
export async function serverTls(conn: ByteStream, c: TlsCreds): Promise<ByteStream> {
  return await (await import("./_tls_socket.ts")).serverTls(conn, c);
}

/** Runs the client side of a TLS handshake over `conn` (with the client certificate when the credentials have one). */
export async function clientTls(conn: ByteStream, c: TlsCreds, hostname: string): Promise<ByteStream> {
  return await (await import("./_tls_socket.ts")).clientTls(conn, c, hostname);
}
