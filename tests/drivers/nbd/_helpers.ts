/**
 * Helpers for the NBD tests: start qemu-nbd, nbdkit or `blkgraph nbd` on a
 * unique Unix socket and stop them again, and a raw-socket client that
 * speaks the handshake byte by byte for tests of bad clients.
 *
 * @module
 */

import { FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, OPT_REPLY_MAGIC, view } from "../../../drivers/nbd/_protocol.ts";
import { encodeOption } from "../../../drivers/nbd/_handshake_codecs.ts";

const CLI = new URL("../../../cli/main.ts", import.meta.url).pathname;

/** A server process on a Unix socket. */
export interface ServerProcess {
  /** Socket path. */
  sock: string;
  /** `nbd+unix:///?socket=…` for the default export (or `name`). */
  uri: string;
  /** Standard error so far (filled when the process ends). */
  stderr(): Promise<string>;
  /** Exit status promise. */
  status: Promise<Deno.CommandStatus>;
  /** Sends SIGTERM and waits for the exit. */
  stop(): Promise<void>;
  /** Process id. */
  pid: number;
}

let counter = 0;

/** A fresh socket path in `dir`. */
export function sockPath(dir: string, tag = "s"): string {
  return `${dir}/${tag}${++counter}.sock`;
}

async function waitFor(sock: string, status: Promise<Deno.CommandStatus>): Promise<boolean> {
  let exited = false;
  status.then(() => (exited = true));
  // Bounded: 300 x 20 ms; a server that never listens fails the test.
  for (let i = 0; i < 300 && !exited; i++) {
    try {
      if (Deno.statSync(sock).isSocket) return true;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

/** Starts `cmd args... -k SOCK`-style servers and waits until the socket exists. */
export async function startServer(cmd: string, args: string[], sock: string, name = ""): Promise<ServerProcess> {
  const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "piped" }).spawn();
  const errText = new Response(child.stderr).text();
  const status = child.status;
  const ok = await waitFor(sock, status);
  if (!ok) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await status;
    throw new Error(`${cmd} ${args.join(" ")} did not listen on ${sock}: ${await errText}`);
  }
  return {
    sock,
    uri: `nbd+unix:///${encodeURIComponent(name)}?socket=${sock}`,
    stderr: () => errText,
    status,
    pid: child.pid,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      await status;
      await errText;
    },
  };
}

/** `qemu-nbd ARGS -k SOCK FILE`. */
export function qemuNbd(sock: string, args: string[], file: string, name = ""): Promise<ServerProcess> {
  return startServer("qemu-nbd", [...args, "-k", sock, file], sock, name);
}

/** `blkgraph nbd ARGS -k SOCK FILE` in a child Deno process. */
export function blkgraphNbd(sock: string, args: string[], file: string, name = ""): Promise<ServerProcess> {
  return startServer(Deno.execPath(), ["run", "-A", CLI, "nbd", ...args, "-k", sock, file], sock, name);
}

/** `nbdkit -f -U SOCK ARGS`. */
export function nbdkit(sock: string, args: string[]): Promise<ServerProcess> {
  return startServer("nbdkit", ["-f", "-U", sock, ...args], sock);
}

/** Replaces a socket path in tool output, so outputs against two servers compare. */
export function normalise(text: string, ...socks: string[]): string {
  for (const s of socks) text = text.replaceAll(s, "SOCK");
  return text;
}

/** A raw client for handshake tests: reads exactly, writes bytes. */
export class RawClient {
  conn: Deno.Conn;
  #buf = new Uint8Array(0);

  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  /** Connects to a Unix socket. */
  static async unix(path: string): Promise<RawClient> {
    return new RawClient(await Deno.connect({ transport: "unix", path }));
  }

  /** Reads exactly `n` bytes; null when the server closed first. */
  async read(n: number): Promise<Uint8Array | null> {
    while (this.#buf.length < n) {
      const b = new Uint8Array(65536);
      let got: number | null;
      try {
        got = await this.conn.read(b);
      } catch {
        got = null;
      }
      if (got === null) return null;
      const nb = new Uint8Array(this.#buf.length + got);
      nb.set(this.#buf);
      nb.set(b.subarray(0, got), this.#buf.length);
      this.#buf = nb;
    }
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }

  /** True when the server closed the connection (reads hit end of stream). */
  async closedByServer(): Promise<boolean> {
    return (await this.read(1)) === null;
  }

  /** Writes bytes (errors ignored: the server may have closed). */
  async write(b: Uint8Array): Promise<void> {
    try {
      for (let o = 0; o < b.length;) o += await this.conn.write(b.subarray(o));
    } catch { /* closed */ }
  }

  /** Reads the greeting and sends client flags (fixed newstyle, no zeroes by default). */
  async greet(flags = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES): Promise<Uint8Array> {
    const g = await this.read(18);
    if (!g) throw new Error("no greeting");
    const b = new Uint8Array(4);
    view(b).setUint32(0, flags);
    await this.write(b);
    return g;
  }

  /** Sends an option and reads one reply: its type and data. */
  async option(opt: number, data?: Uint8Array): Promise<{ type: number; data: Uint8Array }> {
    await this.write(encodeOption(opt, data));
    return await this.reply(opt);
  }

  /** Reads one option reply. */
  async reply(opt: number): Promise<{ type: number; data: Uint8Array }> {
    const h = await this.read(20);
    if (!h) throw new Error("server closed instead of replying");
    const dv = view(h);
    if (dv.getBigUint64(0) !== OPT_REPLY_MAGIC) throw new Error("bad reply magic");
    if (dv.getUint32(8) !== opt) throw new Error(`reply for option ${dv.getUint32(8)}, expected ${opt}`);
    const len = dv.getUint32(16);
    return { type: dv.getUint32(12), data: (await this.read(len)) ?? new Uint8Array(0) };
  }

  /** Closes the connection. */
  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
}
