/**
 * A wake-up descriptor Deno's own event loop polls: a connected Unix socket
 * pair whose C end (a plain descriptor from FFI `socket`/`connect`) is
 * written by something outside JavaScript — librbd's completion queue, or
 * the kernel itself through a linked io_uring `IORING_OP_SEND` — and whose
 * other end is a `Deno.Conn` read on the JS thread's reactor (epoll). An
 * eventfd needs a `nonblocking` FFI `read` on a worker thread instead: one
 * thread hop per wake-up.
 *
 * The listener is abstract (`\0name`: no file, gone with its descriptor)
 * and needs the net permission; without it (or when any step fails) the
 * caller falls back to its eventfd.
 *
 * @module
 */

/** `socket(2)`: a Unix socket. */
export const AF_UNIX = 1;
/** Stream socket type. */
export const SOCK_STREAM = 1;
/** `socket(2)` type flag: close on exec. */
export const SOCK_CLOEXEC = 0o2000000;
/** `fcntl(2)` F_SETFL, and the O_NONBLOCK flag it sets. */
export const F_SETFL = 4;
/** Non-blocking I/O. */
export const O_NONBLOCK = 0o4000;

/** The libc calls the C end needs (bound by the caller's own FFI library). */
export interface SocketCalls {
  socket(domain: number, type: number, protocol: number): number;
  connect(fd: number, addr: Uint8Array, len: number): number;
  fcntl(fd: number, cmd: number, arg: number): number;
  write(fd: number, buf: Uint8Array, len: number): number;
  close(fd: number): number;
}

/** A connected pair: `fd` is written from C or the kernel, `wait()` reads the other end on the event loop. */
export interface NotifySocket {
  /** The C end (non-blocking: a full socket buffer never blocks a writer; unread bytes already promise a wake-up). */
  readonly fd: number;
  /** Waits until at least one byte arrived and reads every byte there (up to 4096); 0 when the socket failed or closed. */
  wait(): Promise<number>;
  /** Ends a pending wait by writing one byte to the C end. */
  wake(): void;
  /**
   * Closes both ends (after the last wait). Resolves once every descriptor
   * is released: the accepted end (and the listener) may still be on their
   * way when the pair is closed right after it opened, as when the first
   * request completed during its own submission.
   */
  close(): Promise<void>;
}

/** Whether this process may listen on a Unix socket (the net permission). */
export function mayUseSocket(): boolean {
  try {
    return Deno.permissions.querySync({ name: "net" }).state === "granted";
  } catch {
    return false;
  }
}

/**
 * Connects a pair, synchronously: the C end is connected at once (the
 * listener's backlog takes it), and the Deno end is the accepted connection,
 * which the first `wait()` awaits. Undefined without the net permission or
 * when a step fails. `tag` names the user in the abstract socket's name.
 */
export function openNotifySocket(c: SocketCalls, tag: string): NotifySocket | undefined {
  if (!mayUseSocket()) return undefined;
  const name = `blkgraph-${tag}-${Deno.pid}-${crypto.randomUUID()}`;
  let listener: Deno.UnixListener;
  try {
    listener = Deno.listen({ transport: "unix", path: `\0${name}` });
  } catch {
    return undefined;
  }
  const fd = c.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    listener.close();
    return undefined;
  }
  // struct sockaddr_un: sun_family, then "\0name" (abstract); the length counts the used bytes.
  const addr = new Uint8Array(2 + 1 + name.length);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(new TextEncoder().encode(name), 3);
  const accepted = listener.accept();
  if (c.connect(fd, addr, addr.length) < 0 || c.fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
    listener.close();
    accepted.catch(() => {});
    c.close(fd);
    return undefined;
  }
  // Accepted on the next turn of the event loop; nothing else may connect to it meanwhile (the name is random).
  let closed = false;
  let cn: Deno.UnixConn | undefined;
  const shut = () => {
    try {
      cn?.close();
    } catch {
      // Closed already.
    }
  };
  const conn = accepted.then((a) => {
    cn = a;
    if (closed) shut();
    return a;
  }, () => undefined).finally(() => listener.close());
  const released = conn.then(() => {});
  const buf = new Uint8Array(4096);
  return {
    fd,
    async wait() {
      const a = cn ?? await conn;
      if (!a || closed) return 0;
      try {
        return (await a.read(buf)) ?? 0;
      } catch {
        return 0;
      }
    },
    wake: () => void c.write(fd, new Uint8Array(1), 1),
    close() {
      if (closed) return released;
      closed = true;
      c.close(fd);
      shut();
      return released;
    },
  };
}
