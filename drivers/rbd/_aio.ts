/**
 * The completion engine of one open RBD image: `rbd_aio_*` requests whose
 * completions reach the event loop one of two ways.
 *
 * - The completion callback (`Deno.UnsafeCallback.threadSafe`): librbd's
 *   callback thread posts it to the event loop and waits there until it
 *   has run — one thread hop, as QEMU's rbd driver completing through a
 *   bottom half. Best for a request on its own (a 4 KiB read at depth 1:
 *   ~7 context switches and ~50–130 µs of process CPU per request against
 *   ~10 and 150–280 µs through the eventfd; qemu-img bench ~6–8 and
 *   ~65 µs). librbd's (single) op thread is held while the callback waits
 *   for the event loop, so at depth 16 it costs more than the eventfd
 *   (5.5 against 2.5–4 switches per request).
 * - The notification (`rbd_set_image_notification`): librbd queues every
 *   completion on the image and signals a descriptor; one waiting read
 *   wakes the event loop, which drains every queued completion with
 *   `rbd_poll_io_events` — many completions per wake-up under load.
 *   The descriptor is an eventfd read by a `nonblocking` FFI `read` (needs
 *   `--allow-ffi` only), or with `x-completion=socket` a Unix socket pair
 *   the event loop's own poller reads (needs the net permission, else the
 *   eventfd).
 *
 * `x-completion=auto` (the default) gives the callback to a request
 * submitted while nothing else is in flight and the notification to the
 * rest, on the socket pair where the net permission allows (no worker
 * thread: ~2.2–2.9 context switches per 4 KiB read at depth 16 against
 * 3.0–4.5 through the eventfd), else the eventfd; `callback`, `eventfd`
 * and `socket` force one way (for tests and benchmarks). librbd queues callback completions too (after the callback
 * returned), so a completion the callback resolved is released when the
 * queue hands it out, never while librbd may still hold it. Nothing run
 * from the callback may wait for librbd (it would deadlock on the held
 * thread): every librbd call that can wait is declared `nonblocking`.
 *
 * Buffers stay referenced by their in-flight record until the completion
 * is released, every completion is released exactly once (also when the
 * submit fails), and nothing keeps the process alive once no request is in
 * flight.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { openNotifySocket } from "../_notify_socket.ts";
import { EFD_CLOEXEC, EVENT_TYPE_EVENTFD, EVENT_TYPE_PIPE, type Librbd } from "./_librbd.ts";

/** Completions drained per `rbd_poll_io_events` call. */
const BATCH = 64;

interface InFlight {
  resolve(ret: number): void;
  /** Keeps the request's buffer alive until librbd is done with it. */
  buf?: Uint8Array;
  /** Completes through the callback (else through the notification). */
  called: boolean;
}

/** Counters for tests and benchmarks. */
export interface AioStats {
  /** How completions are signalled (`x-completion`; `eventfd` where a socket was asked for and not permitted). */
  notifier: Completion;
  /**
   * The descriptor librbd signals queued completions on: `socket` where the
   * net permission allows (the event loop's own poller reads it), else
   * `eventfd` (read by a worker thread, one thread hop more per wake-up).
   */
  descriptor: "socket" | "eventfd";
  /** Requests submitted. */
  submitted: number;
  /** Times the notification woke the event loop. */
  wakeups: number;
  /** Completions taken from librbd. */
  completed: number;
  /** Completions that arrived through the callback. */
  callbacks: number;
  /** Completions a callback resolved that librbd has not handed back for release yet (0 after close). */
  unreleased: number;
}

/**
 * How librbd hands completions to the event loop (`x-completion`): `auto`
 * (the callback for a request submitted alone, the socket or else the
 * eventfd for the rest),
 * `callback` (always the callback), `eventfd`, `socket`.
 */
export type Completion = "auto" | "callback" | "socket" | "eventfd";

/** `rbd_callback_t`: `void (*)(rbd_completion_t, void *)`. */
const CALLBACK = { parameters: ["usize", "pointer"], result: "void" } as const;

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
  /** Closes the descriptor(s); resolves once they are released. */
  close(): Promise<void>;
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
    close: () => {
      lib.close(fd);
      return Promise.resolve();
    },
  };
}

/** A connected Unix socket pair (`_notify_socket.ts`): librbd writes to the C end, Deno's poller reads the other. */
function socketNotifier(lib: Librbd): Notifier | undefined {
  const s = openNotifySocket(lib, "rbd");
  if (!s) return undefined;
  return { kind: "socket", fd: s.fd, type: EVENT_TYPE_PIPE, wait: async () => (await s.wait()) > 0, wake: s.wake, close: s.close };
}

/** Submits aio requests on one image and resolves them from its callbacks and notifications. */
export class AioEngine {
  readonly #lib: Librbd;
  readonly #image: Deno.PointerValue;
  readonly #notifier: Notifier;
  readonly #mode: Completion;
  /** The completion callback (modes `auto` and `callback`), referenced while a callback request is in flight. */
  readonly #callback: Deno.UnsafeCallback<typeof CALLBACK> | null;
  /** Requests not completed yet. */
  readonly #inflight = new Map<number, InFlight>();
  /** Requests whose completion is still owed by the notification (eventfd, socket): the pump waits while any is. */
  #notified = 0;
  /** Requests in flight with a callback (the callback stays referenced while any is). */
  #called = 0;
  /**
   * Completions a callback resolved, released when librbd hands them out of
   * its event queue (it queues every completion, after the callback returned).
   */
  readonly #unreleased = new Map<number, Uint8Array | undefined>();
  readonly #out = new Uint8Array(8);
  readonly #outWords = new Uint32Array(this.#out.buffer);
  readonly #events = new Uint8Array(8 * BATCH);
  readonly #eventWords = new Uint32Array(this.#events.buffer);
  #pump: Promise<void> | null = null;
  /** A pump runs (set and cleared synchronously: a pump may finish before `#run` returns). */
  #pumping = false;
  #closed = false;
  /** Close stopped waiting for librbd to hand back resolved completions (never seen; leaks them rather than hang). */
  #gaveUp = false;
  /** Counters (notifier, submitted, wake-ups, completions). */
  readonly stats: AioStats;

  private constructor(lib: Librbd, image: Deno.PointerValue, notifier: Notifier, mode: Completion) {
    this.#lib = lib;
    this.#image = image;
    this.#notifier = notifier;
    this.#mode = mode;
    this.stats = { notifier: mode, descriptor: notifier.kind, submitted: 0, wakeups: 0, completed: 0, callbacks: 0, unreleased: 0 };
    if (mode === "auto" || mode === "callback") {
      this.#callback = Deno.UnsafeCallback.threadSafe(CALLBACK, (c) => this.#called1(Number(c)));
      this.#callback.unref();
    } else {
      this.#callback = null;
    }
  }

  /**
   * Sets up completion notification on an open image: an eventfd (or a
   * socket where asked and permitted) that every completion is queued
   * behind, plus, in modes `auto` (the default) and `callback`, the
   * completion callback.
   */
  static create(lib: Librbd, image: Deno.PointerValue, prefer: Completion = "auto"): AioEngine {
    // The socket, where permitted, for every mode that drains batches (auto, socket): the event loop's own
    // poller reads it, where the eventfd needs a worker thread's read per wake-up (a thread hop and a
    // blocking-pool task each time).
    const n = (prefer === "socket" || prefer === "auto" ? socketNotifier(lib) : undefined) ?? eventfdNotifier(lib);
    const r = lib.rbd_set_image_notification(image, n.fd, n.type);
    if (r < 0) {
      void n.close();
      throw new BlockError("EIO", `Cannot attach the completion ${n.kind} to the RBD image: rbd_set_image_notification returned ${r}`);
    }
    return new AioEngine(lib, image, n, prefer === "socket" ? n.kind : prefer);
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
   *
   * A request submitted while nothing else is in flight (mode `auto`), or
   * every request (mode `callback`), completes through the callback: one
   * thread hop, librbd's callback thread into the event loop, as QEMU's
   * bottom half. The others complete through the notification, which
   * carries every completion that has arrived per wake-up.
   */
  submit(start: (comp: number) => number, buf?: Uint8Array): Promise<number> {
    if (this.#closed) return Promise.resolve(-5);
    const lib = this.#lib;
    const cb = this.#callback && (this.#mode === "callback" || this.#inflight.size === 0) ? this.#callback : null;
    const r = lib.rbd_aio_create_completion(null, cb ? cb.pointer : null, this.#out);
    if (r < 0) return Promise.resolve(r);
    const comp = this.#outWords[0] + this.#outWords[1] * 2 ** 32;
    // Registered before the submit: librbd may complete a request at once, even on this thread.
    const { promise, resolve } = Promise.withResolvers<number>();
    const rec: InFlight = { resolve, buf, called: cb !== null };
    this.#inflight.set(comp, rec);
    if (cb) {
      if (this.#called++ === 0) cb.ref();
    } else this.#notified++;
    let ret: number;
    try {
      ret = start(comp);
    } catch (e) {
      this.#unsubmitted(comp, rec);
      return Promise.reject(e);
    }
    if (ret < 0) {
      this.#unsubmitted(comp, rec);
      return Promise.resolve(ret);
    }
    this.stats.submitted++;
    if (!cb && !this.#pumping) this.#pump = this.#run();
    return promise;
  }

  /** Undoes the registration of a request librbd refused, and releases its completion. */
  #unsubmitted(comp: number, rec: InFlight): void {
    if (this.#inflight.get(comp) !== rec) return;
    this.#inflight.delete(comp);
    if (rec.called) {
      if (--this.#called === 0) this.#callback?.unref();
    } else this.#notified--;
    this.#lib.rbd_aio_release(comp);
  }

  /**
   * A completion callback. librbd's callback thread waits in Deno's
   * trampoline until this has run, and the microtasks it queues with it:
   * nothing here or after it may wait for librbd — every librbd call that
   * can wait is declared `nonblocking`. The completion is released later,
   * when librbd's event queue hands it out (it queues it after this returns).
   */
  #called1(comp: number): void {
    this.stats.wakeups++;
    this.stats.callbacks++;
    this.#drain();
    const p = this.#inflight.get(comp);
    // A completion created without the callback never gets here; an unknown one is not ours to touch.
    if (!p?.called) return;
    const ret = this.#lib.rbd_aio_get_return_value(comp);
    this.#inflight.delete(comp);
    this.#unreleased.set(comp, p.buf);
    this.stats.unreleased = this.#unreleased.size;
    this.stats.completed++;
    if (--this.#called === 0) this.#callback?.unref();
    p.resolve(ret);
  }

  /** Waits for notifications while notified requests are in flight, draining completions at each wake-up. */
  async #run(): Promise<void> {
    this.#pumping = true;
    try {
      // Completions that arrived before the first wait are picked up at once.
      this.#drain();
      while (this.#notified > 0 || (this.#closed && !this.#gaveUp && this.#unreleased.size > 0)) {
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

  /** Takes every queued completion: resolves the notified ones, releases all. */
  #drain(): void {
    const lib = this.#lib;
    const w = this.#eventWords;
    for (;;) {
      const n = lib.rbd_poll_io_events(this.#image, this.#events, BATCH);
      if (n <= 0) return;
      for (let i = 0; i < n; i++) {
        const comp = w[2 * i] + w[2 * i + 1] * 2 ** 32;
        if (this.#unreleased.delete(comp)) {
          // Its callback resolved it already.
          lib.rbd_aio_release(comp);
          this.stats.unreleased = this.#unreleased.size;
          continue;
        }
        const p = this.#inflight.get(comp);
        if (p?.called) {
          // Cannot happen (the callback runs before librbd queues the completion); never release under a callback.
          continue;
        }
        const ret = lib.rbd_aio_get_return_value(comp);
        lib.rbd_aio_release(comp);
        if (p) {
          this.#inflight.delete(comp);
          this.#notified--;
          this.stats.completed++;
          p.resolve(ret);
        }
      }
      if (n < BATCH) return;
    }
  }

  #failAll(why: string): void {
    // Cannot happen with a healthy descriptor; fail loudly rather than hang.
    for (const [comp, p] of this.#inflight) {
      if (!p.called) {
        this.#inflight.delete(comp);
        p.resolve(-5);
      }
    }
    this.#notified = 0;
    this.#unreleased.clear();
    this.stats.unreleased = 0;
    console.error(`rbd: ${why}; failing the requests in flight`);
  }

  /**
   * Stops the engine once nothing is in flight (the node drains before it
   * closes): takes the last completions out of librbd's queue, closes the
   * callback and the descriptor. Call before `rbd_close`.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Callback requests still in flight (none once the node drained) would call a closed callback: wait for them.
    for (let i = 0; this.#called > 0 && i < 3000; i++) await new Promise((r) => setTimeout(r, 10));
    this.#drain();
    if (this.#unreleased.size > 0 && !this.#pumping) this.#pump = this.#run();
    if (this.#pumping) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      if (this.#unreleased.size === 0) this.#notifier.wake();
      else {
        timer = setTimeout(() => {
          this.#gaveUp = true;
          this.#notifier.wake();
        }, 5000);
      }
      await this.#pump;
      clearTimeout(timer);
    }
    if (this.#callback) {
      // Never inside the callback's own call (closing it there crashes the process): leave its task first.
      await new Promise((r) => setTimeout(r, 0));
      if (this.#called === 0) this.#callback.close();
    }
    await this.#notifier.close();
  }
}
