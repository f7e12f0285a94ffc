/**
 * The completion engine of one open RBD image: `rbd_aio_*` requests whose
 * completions librbd queues on the image and signals on a file descriptor
 * (`rbd_set_image_notification`). While anything is in flight one read
 * waits on that descriptor; when it returns, the event loop drains every
 * queued completion with `rbd_poll_io_events`, so one wake-up carries as
 * many completions as have arrived. librbd never calls into JavaScript,
 * and no librbd call here blocks.
 *
 * Two descriptors, the same protocol (`x-completion`):
 * - `eventfd` (default): an eventfd read by a `nonblocking` FFI `read` on
 *   Deno's worker pool — two thread wake-ups per batch (the worker, then the
 *   event loop); needs `--allow-ffi` only;
 * - `socket`: a connected Unix socket pair (librbd's pipe notification, one
 *   byte per completion) whose Deno end the event loop's own poller reads —
 *   one wake-up per batch, as QEMU's main loop. Needs the net permission
 *   (Deno asks it for the abstract socket joining the pair) and falls back
 *   to the eventfd without it.
 * On the shared 2-core box the two were within the noise of each other
 * (socket 132 against 155 µs of client CPU per 4 KiB read at depth 1, 42
 * against 45 at depth 16; throughput ratios 0.8–1.2 either way): the
 * default stays the eventfd, and bench/rbd_bench.ts measures both.
 *
 * Buffers stay referenced by their in-flight record until the completion
 * is released, every completion is released exactly once (also when the
 * submit fails), and nothing keeps the process alive once no request is in
 * flight.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import {
  AF_UNIX,
  EFD_CLOEXEC,
  EVENT_TYPE_EVENTFD,
  EVENT_TYPE_PIPE,
  F_SETFL,
  type Librbd,
  O_NONBLOCK,
  SOCK_CLOEXEC,
  SOCK_STREAM,
} from "./_librbd.ts";

/** Completions drained per `rbd_poll_io_events` call. */
const BATCH = 64;

interface InFlight {
  resolve(ret: number): void;
  /** Keeps the request's buffer alive until librbd is done with it. */
  buf?: Uint8Array;
}

/** Counters for tests and benchmarks. */
export interface AioStats {
  /** How completions are signalled. */
  notifier: "socket" | "eventfd";
  /** Requests submitted. */
  submitted: number;
  /** Times the notification woke the event loop. */
  wakeups: number;
  /** Completions taken from librbd. */
  completed: number;
}

/** A descriptor librbd signals completions on, and how the event loop waits for it. */
interface Notifier {
  readonly kind: "socket" | "eventfd";
  /** The descriptor librbd writes to. */
  readonly fd: number;
  /** `rbd_set_image_notification` type. */
  readonly type: number;
  /** Waits for at least one notification; false when the descriptor failed. */
  wait(): Promise<boolean>;
  /** Ends a pending wait (at close). */
  wake(): void;
  close(): void;
}

function eventfdNotifier(lib: Librbd): Notifier {
  const fd = lib.eventfd(0, EFD_CLOEXEC);
  if (fd < 0) throw new BlockError("EIO", "Cannot create the eventfd for RBD completions");
  const buf = new Uint8Array(8);
  return {
    kind: "eventfd",
    fd,
    type: EVENT_TYPE_EVENTFD,
    wait: async () => (await lib.read(fd, buf, 8)) === 8,
    wake() {
      const one = new Uint8Array(8);
      one[0] = 1;
      lib.write(fd, one, 8);
    },
    close: () => void lib.close(fd),
  };
}

/** A connected Unix socket pair: librbd writes to the C end, Deno's poller reads the other. */
async function socketNotifier(lib: Librbd): Promise<Notifier | undefined> {
  try {
    if (Deno.permissions.querySync({ name: "net" }).state !== "granted") return undefined;
  } catch {
    return undefined;
  }
  // An abstract socket: no file, gone with its last descriptor.
  const name = `blkgraph-rbd-${Deno.pid}-${crypto.randomUUID()}`;
  const listener = Deno.listen({ transport: "unix", path: `\0${name}` });
  let fd = -1;
  try {
    fd = lib.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return undefined;
    // struct sockaddr_un: sun_family, then "\0name" (abstract); the length counts the used bytes.
    const addr = new Uint8Array(2 + 1 + name.length);
    new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
    addr.set(new TextEncoder().encode(name), 3);
    const accepted = listener.accept();
    if (lib.connect(fd, addr, addr.length) < 0) {
      lib.close(fd);
      return undefined;
    }
    // A full socket buffer must never block librbd's thread (unread bytes already promise a wake-up).
    lib.fcntl(fd, F_SETFL, O_NONBLOCK);
    const conn = await accepted;
    const buf = new Uint8Array(4096);
    const cfd = fd;
    return {
      kind: "socket",
      fd: cfd,
      type: EVENT_TYPE_PIPE,
      wait: async () => ((await conn.read(buf)) ?? 0) > 0,
      wake: () => void lib.write(cfd, new Uint8Array(1), 1),
      close() {
        conn.close();
        lib.close(cfd);
      },
    };
  } catch {
    if (fd >= 0) lib.close(fd);
    return undefined;
  } finally {
    listener.close();
  }
}

/** Submits aio requests on one image and resolves them from its notifications. */
export class AioEngine {
  readonly #lib: Librbd;
  readonly #image: Deno.PointerValue;
  readonly #notifier: Notifier;
  readonly #inflight = new Map<number, InFlight>();
  readonly #out = new Uint8Array(8);
  readonly #outWords = new Uint32Array(this.#out.buffer);
  readonly #events = new Uint8Array(8 * BATCH);
  readonly #eventWords = new Uint32Array(this.#events.buffer);
  #pump: Promise<void> | null = null;
  /** A pump runs (set and cleared synchronously: a pump may finish before `#run` returns). */
  #pumping = false;
  #closed = false;
  /** Counters (notifier, submitted, wake-ups, completions). */
  readonly stats: AioStats;

  private constructor(lib: Librbd, image: Deno.PointerValue, notifier: Notifier) {
    this.#lib = lib;
    this.#image = image;
    this.#notifier = notifier;
    this.stats = { notifier: notifier.kind, submitted: 0, wakeups: 0, completed: 0 };
  }

  /** Sets up completion notification on an open image (an eventfd, or a socket where asked and permitted). */
  static async create(lib: Librbd, image: Deno.PointerValue, prefer: "socket" | "eventfd" = "eventfd"): Promise<AioEngine> {
    const n = (prefer === "socket" ? await socketNotifier(lib) : undefined) ?? eventfdNotifier(lib);
    const r = lib.rbd_set_image_notification(image, n.fd, n.type);
    if (r < 0) {
      n.close();
      throw new BlockError("EIO", `Cannot attach the completion ${n.kind} to the RBD image: rbd_set_image_notification returned ${r}`);
    }
    return new AioEngine(lib, image, n);
  }

  /** Requests in flight. */
  get inFlight(): number {
    return this.#inflight.size;
  }

  /**
   * Creates a completion, lets `start` submit the request with it, and
   * resolves to the completion's return value (bytes or `-errno`). A submit
   * that fails resolves to its own negative result; the completion is
   * released either way.
   */
  submit(start: (comp: number) => number, buf?: Uint8Array): Promise<number> {
    if (this.#closed) return Promise.resolve(-5);
    const lib = this.#lib;
    const r = lib.rbd_aio_create_completion(null, null, this.#out);
    if (r < 0) return Promise.resolve(r);
    const comp = this.#outWords[0] + this.#outWords[1] * 2 ** 32;
    let ret: number;
    try {
      ret = start(comp);
    } catch (e) {
      lib.rbd_aio_release(comp);
      return Promise.reject(e);
    }
    if (ret < 0) {
      lib.rbd_aio_release(comp);
      return Promise.resolve(ret);
    }
    this.stats.submitted++;
    return new Promise<number>((resolve) => {
      this.#inflight.set(comp, { resolve, buf });
      if (!this.#pumping) this.#pump = this.#run();
    });
  }

  /** Waits for notifications while requests are in flight, draining completions at each wake-up. */
  async #run(): Promise<void> {
    this.#pumping = true;
    try {
      // Completions that arrived before the first wait are picked up at once.
      this.#drain();
      while (this.#inflight.size > 0) {
        if (!(await this.#notifier.wait())) {
          this.#failAll(`waiting on the completion ${this.#notifier.kind} failed`);
          break;
        }
        this.stats.wakeups++;
        this.#drain();
      }
    } finally {
      this.#pumping = false;
    }
  }

  #drain(): void {
    const lib = this.#lib;
    const w = this.#eventWords;
    for (;;) {
      const n = lib.rbd_poll_io_events(this.#image, this.#events, BATCH);
      if (n <= 0) return;
      for (let i = 0; i < n; i++) {
        const comp = w[2 * i] + w[2 * i + 1] * 2 ** 32;
        const ret = lib.rbd_aio_get_return_value(comp);
        lib.rbd_aio_release(comp);
        const p = this.#inflight.get(comp);
        if (p) {
          this.#inflight.delete(comp);
          this.stats.completed++;
          p.resolve(ret);
        }
      }
      if (n < BATCH) return;
    }
  }

  #failAll(why: string): void {
    // Cannot happen with a healthy descriptor; fail loudly rather than hang.
    for (const p of this.#inflight.values()) p.resolve(-5);
    this.#inflight.clear();
    console.error(`rbd: ${why}; failing the requests in flight`);
  }

  /**
   * Stops the engine once nothing is in flight (the node drains before it
   * closes) and closes the descriptor. Call before `rbd_close`.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#pumping) {
      this.#notifier.wake();
      await this.#pump;
    }
    this.#notifier.close();
  }
}
