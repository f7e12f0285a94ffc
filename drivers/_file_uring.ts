/**
 * An io_uring submission and completion engine for the `file` driver
 * (`aio=io_uring`, and `cache=none` by default): the kernel ABI driven
 * directly through FFI, no liburing (its prep and get-SQE helpers are inline
 * functions, not exported symbols).
 *
 * - `io_uring_setup`, `io_uring_enter` and `io_uring_register` through libc
 *   `syscall()`; the SQ ring, CQ ring and SQE array are `mmap`ed and read
 *   and written as typed arrays.
 * - Requests are written as SQEs at once; everything submitted in one tick
 *   (until a microtask turn adds nothing more) goes to the kernel in one
 *   `io_uring_enter`.
 * - Completions wake the event loop through a notification socket where
 *   the net permission allows (`_notify_socket.ts`): each request's SQE is
 *   hard-linked (`IOSQE_IO_HARDLINK`: also when it fails or is short) to a
 *   1-byte `IORING_OP_SEND` to the socket's C end, so the kernel itself makes
 *   the socket readable once the request has completed, and Deno's own
 *   reactor (epoll on the JS thread) wakes — no worker thread. Each wake-up
 *   reads every byte there and reaps every CQE that has arrived (many per
 *   wake-up under load); the sends' own CQEs are skipped.
 * - Otherwise through an eventfd registered with the ring
 *   (`IORING_REGISTER_EVENTFD`), read as the rbd driver reads its eventfd:
 *   one `nonblocking` FFI `read` waits while anything is in flight (a
 *   thread hop per wake-up). With `DEFER_TASKRUN` (Linux 6.1) the kernel
 *   signals the eventfd without interrupting the JS thread, which then posts
 *   the completions in one `io_uring_enter`.
 * - A request the kernel completes during the submitting `io_uring_enter`
 *   (a page-cached buffered read) is reaped at once, without a wake-up.
 * - Each request's buffer is referenced by its slot until its CQE arrives,
 *   so it stays alive (and, being an ArrayBuffer's backing store, unmoved).
 * - At most `entries` requests are in the kernel (the CQ ring holds twice
 *   that, so it never overflows); more wait in a queue in submission order.
 *
 * Results are the CQE's `res`: bytes transferred, or `-errno`.
 *
 * @module
 */

import { type RingOptions, type RingSetup, setupRing, type UringUnavailable } from "./_file_uring_setup.ts";
import { type RingNotifier, ringNotifier, type UringStats, writeSqe } from "./_file_uring_notify.ts";

export type { UringStats } from "./_file_uring_notify.ts";
import {
  EAGAIN,
  EBUSY,
  EINTR,
  EIO,
  IORING_CQ_EVENTFD_DISABLED,
  IORING_ENTER_GETEVENTS,
  IORING_FSYNC_DATASYNC,
  IORING_SETUP_DEFER_TASKRUN,
  IORING_SQ_TASKRUN,
  IOSQE_IO_DRAIN,
  IOSQE_IO_HARDLINK,
  MSG_DONTWAIT,
  Op,
  P,
  type Sys,
  SYS_io_uring_enter,
} from "./_file_uring_sys.ts";

interface Slot {
  resolve: (res: number) => void;
  /** The CQE's result, set when it is reaped. */
  res: number;
  /** Keeps the buffer alive (and unmoved) until the CQE arrives. */
  buf: Uint8Array | null;
}

interface Queued {
  op: number;
  fd: number;
  buf: Uint8Array | null;
  offset: number;
  len: number;
  rwFlags: number;
  sqeFlags: number;
  slot: Slot;
}

/** The byte every linked send writes: module-wide, so it outlives any ring whose kernel side still holds a send. */
const SEND_BYTE = new Uint8Array(8);

const addressOf = (buf: Uint8Array): number => Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));

/** One io_uring instance with its eventfd. */
export class Uring {
  readonly #s: Sys;
  readonly #fd: number;
  /** How completions wake the pump (the socket or the eventfd). */
  readonly #notify: RingNotifier;
  /** The socket's C end, which every request's linked send writes to (-1: the eventfd, no sends). */
  readonly #sendFd: number;
  readonly #byteAddr: number;
  readonly #deferred: boolean;
  readonly #maps: [Deno.PointerValue, number][];
  readonly #sq: Uint32Array;
  readonly #sqTail: number;
  readonly #sqHead: number;
  readonly #sqMask: number;
  readonly #sqes: Uint32Array;
  readonly #cq: Uint32Array;
  readonly #cqHead: number;
  readonly #cqTail: number;
  readonly #cqMask: number;
  /** Word indexes of the SQ ring's flags and the CQ ring's flags. */
  readonly #sqFlags: number;
  readonly #cqFlags: number;
  /** The CQEs as 32-bit words (user_data lo, hi, res, flags). */
  readonly #cqes: Int32Array;
  readonly #slots: (Slot | undefined)[];
  readonly #free: number[];
  readonly #queue: Queued[] = [];
  /** SQ tail as written here; `#entered` is what the kernel has consumed. */
  #tail = 0;
  #entered = 0;
  #inFlight = 0;
  #scheduled = false;
  /** SQEs were written since the submission microtask was queued. */
  #added = false;
  #pumping = false;
  /** The pump is blocked on the eventfd right now. */
  #waiting = false;
  #pump: Promise<void> = Promise.resolve();
  #closed = false;
  /** Counters (submissions, enters, wake-ups, completions). */
  readonly stats: UringStats;

  private constructor(ring: RingSetup) {
    const { s, fd, efd, socket, params, maps, rings } = ring;
    this.#s = s;
    this.#fd = fd;
    this.#sendFd = socket ? socket.fd : -1;
    this.#byteAddr = addressOf(SEND_BYTE);
    this.#maps = maps;
    const [sqBuf, cqBuf, sqeBuf] = rings;
    const u32 = (o: number) => params.getUint32(o, true);
    this.#deferred = (u32(P.flags) & IORING_SETUP_DEFER_TASKRUN) !== 0;
    this.#sq = new Uint32Array(sqBuf);
    this.#sqHead = u32(P.sqOff) / 4;
    this.#sqTail = u32(P.sqOff + 4) / 4;
    this.#sqMask = this.#sq[u32(P.sqOff + 8) / 4];
    const sqEntries = this.#sq[u32(P.sqOff + 12) / 4];
    // The SQ index array maps ring slot i to SQE i, once for the ring's lifetime.
    const array = u32(P.sqOff + 24) / 4;
    for (let i = 0; i < sqEntries; i++) this.#sq[array + i] = i;
    // With the socket each request is two SQEs (the request and its send).
    const entries = socket ? sqEntries >>> 1 : sqEntries;
    this.#sqes = new Uint32Array(sqeBuf);
    this.#cq = new Uint32Array(cqBuf);
    this.#cqHead = u32(P.cqOff) / 4;
    this.#cqTail = u32(P.cqOff + 4) / 4;
    this.#cqMask = this.#cq[u32(P.cqOff + 8) / 4];
    this.#sqFlags = u32(P.sqOff + 16) / 4;
    this.#cqFlags = u32(P.cqOff + 24) / 4;
    this.#cqes = new Int32Array(cqBuf, u32(P.cqOff + 20));
    this.#tail = this.#entered = this.#sq[this.#sqTail];
    this.#slots = new Array(entries);
    this.#free = Array.from({ length: entries }, (_, i) => entries - 1 - i);
    this.stats = {
      entries,
      notifier: socket ? "socket" : "eventfd",
      deferTaskrun: this.#deferred,
      submitted: 0,
      enters: 0,
      wakeups: 0,
      eventfdReads: 0,
      signals: 0,
      sends: 0,
      sendErrors: 0,
      completed: 0,
      maxInFlight: 0,
    };
    this.#notify = ringNotifier(s, efd, socket, this.stats);
  }

  /**
   * Sets up a ring for `entries` requests with the notification socket (or
   * the eventfd without the net permission, or with `notify: "eventfd"`);
   * returns why not where io_uring is unavailable (no FFI, ENOSYS on old
   * kernels, EPERM under seccomp or `io_uring_disabled`).
   */
  static open(entries: number, o: RingOptions = {}): Uring | UringUnavailable {
    const r = setupRing(entries, o);
    return "step" in r ? r : new Uring(r);
  }

  /** Requests submitted and not completed (queued ones included). */
  get inFlight(): number {
    return this.#inFlight + this.#queue.length;
  }

  /** `IORING_OP_READ` of `buf.length` bytes at `offset`; resolves to bytes read or `-errno`. */
  read(fd: number, buf: Uint8Array, offset: number): Promise<number> {
    return this.#submit(Op.READ, fd, buf, offset, buf.length, 0, 0);
  }

  /** `IORING_OP_WRITE` of `buf` at `offset`; resolves to bytes written or `-errno`. */
  write(fd: number, buf: Uint8Array, offset: number): Promise<number> {
    return this.#submit(Op.WRITE, fd, buf, offset, buf.length, 0, 0);
  }

  /**
   * `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC` (fdatasync), flagged
   * `IOSQE_IO_DRAIN`: it starts only once every request submitted before it
   * has completed, so it makes those writes durable too.
   */
  fdatasync(fd: number): Promise<number> {
    return this.#submit(Op.FSYNC, fd, null, 0, 0, IORING_FSYNC_DATASYNC, IOSQE_IO_DRAIN);
  }

  #submit(op: number, fd: number, buf: Uint8Array | null, offset: number, len: number, rwFlags: number, sqeFlags: number): Promise<number> {
    if (this.#closed) return Promise.resolve(-EIO);
    const { promise, resolve } = Promise.withResolvers<number>();
    const slot: Slot = { resolve, buf, res: 0 };
    if (this.#free.length === 0 || this.#queue.length > 0) {
      this.#queue.push({ op, fd, buf, offset, len, rwFlags, sqeFlags, slot });
    } else this.#prep(op, fd, buf, offset, len, rwFlags, sqeFlags, slot);
    return promise;
  }

  /** Writes one SQE and schedules the submission. */
  #prep(op: number, fd: number, buf: Uint8Array | null, offset: number, len: number, rwFlags: number, sqeFlags: number, slot: Slot): void {
    const id = this.#free.pop()!;
    this.#slots[id] = slot;
    const addr = buf && len > 0 ? addressOf(buf) : 0;
    const send = this.#sendFd >= 0;
    // With the socket, the request is hard-linked to its send: the send runs once the request completed, however it ended.
    this.#sqe(op, send ? sqeFlags | IOSQE_IO_HARDLINK : sqeFlags, fd, offset, addr, len, rwFlags, id, 0);
    // The send's user_data has its high word set: reaping skips its CQE.
    if (send) this.#sqe(Op.SEND, 0, this.#sendFd, 0, this.#byteAddr, 1, MSG_DONTWAIT, id, 1);
    this.#inFlight++;
    if (this.#inFlight > this.stats.maxInFlight) this.stats.maxInFlight = this.#inFlight;
    this.#added = true;
    if (!this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(this.#flushSoon);
    }
  }

  /** Writes one SQE at the tail. */
  #sqe(op: number, flags: number, fd: number, offset: number, addr: number, len: number, opFlags: number, lo: number, hi: number): void {
    writeSqe(this.#sqes, ((this.#tail & this.#sqMask) * 16) | 0, op, flags, fd, offset, addr, len, opFlags, lo, hi);
    this.#tail = (this.#tail + 1) >>> 0;
  }

  /** Submits once a microtask turn passes without new SQEs: requests issued together share one `io_uring_enter`. */
  readonly #flushSoon = (): void => {
    if (this.#added && !this.#closed) {
      this.#added = false;
      queueMicrotask(this.#flushSoon);
      return;
    }
    this.#scheduled = false;
    this.#enter();
  };

  /** Hands every written SQE to the kernel, reaps what has completed, and makes sure the rest is awaited. */
  #enter(): void {
    const toSubmit = (this.#tail - this.#entered) >>> 0;
    if (toSubmit > 0) {
      // The SQEs are written before the tail moves (a releasing store).
      Atomics.store(this.#sq, this.#sqTail, this.#tail);
      // With DEFER_TASKRUN the submission also posts what has completed meanwhile (GETEVENTS, min_complete 0: no waiting).
      const submit = () =>
        this.#deferred ? this.#getEvents(toSubmit) : this.#s.uringEnter(SYS_io_uring_enter, this.#fd, toSubmit, 0, 0, null, 0);
      let r = submit();
      while (r < 0 && this.#s.errno() === EINTR) r = submit();
      if (r < 0) {
        const e = this.#s.errno();
        // Busy: completions must be reaped first; the pump submits the rest after its next wake-up.
        if (e !== EAGAIN && e !== EBUSY) this.#failUnsubmitted(e);
      } else {
        this.stats.enters++;
        // Requests, not SQEs: with the socket each is two.
        this.stats.submitted += this.#sendFd >= 0 ? Math.ceil(r / 2) : r;
      }
      // What the kernel consumed (it may take fewer than offered).
      this.#entered = Atomics.load(this.#sq, this.#sqHead);
    }
    this.#reap();
    if (!this.#pumping && this.#inFlight > 0) this.#pump = this.#run();
    // Everything completed during submissions (page-cached requests complete in io_uring_enter, with the eventfd switched
    // off): a pump still blocked on the eventfd would wait for nothing (and keep the process alive); release it.
    else if (this.#waiting && this.#inFlight === 0) this.#notify.wake();
  }

  /**
   * `io_uring_enter` with GETEVENTS (submitting `toSubmit`), which runs the
   * deferred completion work and posts its CQEs. Posting them would signal
   * the eventfd again, a wake-up with nothing to reap: the eventfd is
   * switched off meanwhile (IORING_CQ_EVENTFD_DISABLED). Work the kernel
   * queues while it is off sets IORING_SQ_TASKRUN (IORING_SETUP_TASKRUN_FLAG)
   * without a signal, so once it is back on that flag is checked (the
   * seq_cst store and load order against the kernel's own) and such work is
   * run here.
   */
  #getEvents(toSubmit: number): number {
    const cq = this.#cq;
    let submitted = -1;
    do {
      cq[this.#cqFlags] |= IORING_CQ_EVENTFD_DISABLED;
      const r = this.#s.uringEnter(SYS_io_uring_enter, this.#fd, submitted < 0 ? toSubmit : 0, 0, IORING_ENTER_GETEVENTS, null, 0);
      Atomics.store(cq, this.#cqFlags, cq[this.#cqFlags] & ~IORING_CQ_EVENTFD_DISABLED);
      if (r < 0) return submitted < 0 ? r : submitted;
      if (submitted < 0) submitted = r;
    } while (Atomics.load(this.#sq, this.#sqFlags) & IORING_SQ_TASKRUN);
    return submitted;
  }

  /** SQEs the kernel refused to take: their requests fail with `-errno`, so nothing waits forever. */
  #failUnsubmitted(errno: number): void {
    const slots: Slot[] = [];
    for (let t = this.#entered; t !== this.#tail; t = (t + 1) >>> 0) {
      const w = (t & this.#sqMask) * 16;
      // A send: its request is the SQE before it (refused too, or taken with the send left out: failed below, or reaped).
      if (this.#sqes[w + 9] !== 0) continue;
      const id = this.#sqes[w + 8];
      slots.push(this.#slots[id]!);
      this.#release(id);
    }
    this.#tail = this.#entered;
    for (const s of slots) s.resolve(-errno);
  }

  /** Waits on the socket or eventfd while requests are in flight, reaping the CQEs at each wake-up. */
  async #run(): Promise<void> {
    this.#pumping = true;
    try {
      while (this.#inFlight > 0) {
        this.#waiting = true;
        const ok = await this.#notify.wait();
        this.#waiting = false;
        if (!ok) {
          if (!this.#closed) this.#failAll();
          return;
        }
        if (this.#closed) return;
        this.stats.wakeups++;
        // The deferred completion work runs here, posting the CQEs.
        if (this.#deferred) this.#getEvents(0);
        this.#reap();
        if (this.#entered !== this.#tail && !this.#scheduled) this.#enter();
      }
    } finally {
      this.#pumping = false;
    }
  }

  /** Takes every CQE from the ring and resolves its request; starts queued requests in the freed slots. */
  #reap(): void {
    const cq = this.#cq;
    let head = cq[this.#cqHead];
    // The kernel writes the CQEs before it moves the tail: an acquiring load (a plain one on x86, a barrier on arm64).
    const tail = Atomics.load(cq, this.#cqTail);
    if (head === tail) return;
    const cqes = this.#cqes;
    const done: Slot[] = [];
    while (head !== tail) {
      const i = (head & this.#cqMask) * 4;
      const id = cqes[i];
      head = (head + 1) >>> 0;
      // A linked send's CQE.
      if (cqes[i + 1] !== 0) {
        this.stats.sends++;
        if (cqes[i + 2] < 0) this.stats.sendErrors++;
        continue;
      }
      const slot = this.#slots[id];
      if (!slot) continue;
      slot.buf = null;
      slot.res = cqes[i + 2];
      done.push(slot);
      this.#release(id);
    }
    Atomics.store(cq, this.#cqHead, head);
    this.stats.completed += done.length;
    while (this.#queue.length > 0 && this.#free.length > 0) {
      const r = this.#queue.shift()!;
      this.#prep(r.op, r.fd, r.buf, r.offset, r.len, r.rwFlags, r.sqeFlags, r.slot);
    }
    for (const s of done) s.resolve(s.res);
  }

  #release(id: number): void {
    this.#slots[id] = undefined;
    this.#free.push(id);
    this.#inFlight--;
  }

  #failAll(): void {
    // Cannot happen with a healthy eventfd; fail loudly rather than hang.
    console.error(`file: waiting on the io_uring ${this.stats.notifier} failed; failing the requests in flight`);
    const slots = this.#slots.filter((s): s is Slot => s !== undefined);
    this.#slots.fill(undefined);
    this.#inFlight = 0;
    for (const q of this.#queue.splice(0)) slots.push(q.slot);
    for (const s of slots) s.resolve(-EIO);
  }

  /**
   * Waits for every request in flight (the node drains before it closes;
   * this also covers a caller that did not), then unmaps the rings and
   * closes the ring and its eventfd.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    while (this.inFlight > 0) {
      if (this.#entered !== this.#tail) this.#enter();
      // The pump, or 10 ms, whichever ends first, then the CQ ring itself: a completion whose wake-up never came cannot
      // hold close forever (each timer wake-up enters the kernel, which runs the completion work).
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([this.#pump, new Promise((r) => timer = setTimeout(r, 10))]);
      clearTimeout(timer);
      if (this.#deferred) this.#getEvents(0);
      this.#reap();
    }
    this.#closed = true;
    // A wait can outlive the last completion (reaped at a submission meanwhile): end it before the ring goes.
    if (this.#pumping) {
      this.#notify.wake();
      await this.#pump;
    }
    for (const [p, len] of this.#maps) this.#s.munmap(p, len);
    this.#s.close(this.#fd);
    await this.#notify.close();
  }
}
