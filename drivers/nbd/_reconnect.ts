/**
 * Reconnection (QEMU's `reconnect-delay`): when the connection to the
 * server is lost, a request waits up to the delay while the client connects
 * again (the same handshake, the same export size), then is sent again on
 * the new connection; after the delay it fails as it would have without
 * one. NBD requests are idempotent, so resending one whose reply was lost
 * is safe, as QEMU resends it.
 *
 * @module
 */

import type { ClientExtent } from "./_client_conn.ts";
import type { ClientConnection } from "./_client_conn.ts";
import type { ExportInfo } from "./_client_handshake.ts";

/** Pause between two connection attempts. */
const RETRY_MS = 100;

/** A client connection that reconnects within a delay when the server goes away. */
export class ReconnectingConnection {
  #c: ClientConnection;
  #connect: () => Promise<ClientConnection>;
  #delayMs: number;
  #attempt: Promise<void> | undefined;
  #closed = false;

  /** Serves requests on `first`; `connect` makes a new connection (handshake done); `delaySeconds` 0 never reconnects. */
  constructor(first: ClientConnection, connect: () => Promise<ClientConnection>, delaySeconds: number) {
    this.#c = first;
    this.#connect = connect;
    this.#delayMs = delaySeconds * 1000;
  }

  /** What the handshake learnt (the first connection's; a new one must agree on the size). */
  get info(): ExportInfo {
    return this.#c.info;
  }

  /** Sends a request; when the connection is lost, waits for a new one (within the delay) and sends it again. */
  async request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    opts: { buf?: Uint8Array; data?: Uint8Array } = {},
  ): Promise<Map<number, ClientExtent[]> | undefined> {
    let deadline: number | undefined;
    for (;;) {
      const c = this.#c;
      try {
        return await c.request(type, flags, offset, length, opts);
      } catch (e) {
        if (!this.#delayMs || !c.dead || this.#closed) throw e;
        deadline ??= Date.now() + this.#delayMs;
        if (!(await this.#reconnect(c, deadline))) throw e;
      }
    }
  }

  /** Closes the current connection; no reconnection after this. */
  close(): Promise<void> {
    this.#closed = true;
    return this.#c.close();
  }

  /** Tries to replace `old` until `deadline`; true once a new connection serves. */
  async #reconnect(old: ClientConnection, deadline: number): Promise<boolean> {
    for (;;) {
      this.#attempt ??= this.#try(old).finally(() => (this.#attempt = undefined));
      await this.#attempt;
      if (this.#c !== old) return true;
      const left = deadline - Date.now();
      if (left <= 0 || this.#closed) return false;
      await new Promise((r) => setTimeout(r, Math.min(RETRY_MS, left)));
    }
  }

  async #try(old: ClientConnection): Promise<void> {
    if (this.#c !== old) return;
    let c: ClientConnection;
    try {
      c = await this.#connect();
    } catch {
      return; // Not there yet: the next attempt may find it.
    }
    // Another export behind the same address is not the same disk.
    if (c.info.size !== old.info.size || this.#closed) {
      await c.close().catch(() => {});
      return;
    }
    this.#c = c;
  }
}
