/**
 * How completions of `_file_uring.ts` reach the event loop (the socket the
 * kernel's linked sends write to, or the registered eventfd), the SQE
 * layout, and the ring's counters.
 *
 * @module
 */

import type { NotifySocket } from "./_notify_socket.ts";
import type { Sys } from "./_file_uring_sys.ts";

/** Counters for tests and benchmarks. */
export interface UringStats {
  /** Requests the ring holds at once (SQ entries, twice as many with the socket). */
  entries: number;
  /** How completions wake the event loop: the socket the kernel writes to (linked sends), or the eventfd (a worker thread's read). */
  notifier: "socket" | "eventfd";
  /** Completion work waits until the event loop asks for it (`IORING_SETUP_DEFER_TASKRUN`). */
  deferTaskrun: boolean;
  /** Requests handed to the kernel. */
  submitted: number;
  /** `io_uring_enter` calls that submitted them. */
  enters: number;
  /** Times a notification (socket or eventfd) woke the event loop. */
  wakeups: number;
  /** Of them, eventfd reads (0 with the socket). */
  eventfdReads: number;
  /** Bytes read from the socket: one per request whose linked send ran (the wake-ups carry them in batches). */
  signals: number;
  /** Linked sends completed (their CQEs reaped): every one ends, none waits in the kernel for a reader. */
  sends: number;
  /** Of them, sends that failed (`-EAGAIN` on a full socket, harmless: its unread bytes promise a wake-up). */
  sendErrors: number;
  /** CQEs reaped. */
  completed: number;
  /** Most requests in flight at once. */
  maxInFlight: number;
}

/** Waits for completions: reads the socket (Deno's own poller) or the eventfd (a `nonblocking` FFI read on a worker thread). */
export interface RingNotifier {
  /** Waits for one wake-up: true once it came, false when the socket or eventfd failed (or closed). */
  wait(): Promise<boolean>;
  /** Ends a pending wait. */
  wake(): void;
  /** Closes the socket or eventfd (after the last wait); resolves once its descriptors are released. */
  close(): Promise<void>;
}

/** The notifier over `socket` where there is one, else over the eventfd `efd`; counts into `stats`. */
export function ringNotifier(s: Sys, efd: number, socket: NotifySocket | undefined, stats: UringStats): RingNotifier {
  if (socket) {
    return {
      async wait() {
        const n = await socket.wait();
        stats.signals += n;
        return n > 0;
      },
      wake: () => socket.wake(),
      close: () => socket.close(),
    };
  }
  const buf = new Uint8Array(8);
  return {
    async wait() {
      const n = await s.readAsync(efd, buf, 8);
      stats.eventfdReads++;
      return n === 8;
    },
    wake() {
      const one = new Uint8Array(8);
      one[0] = 1;
      s.write(efd, one, 8);
    },
    close: () => {
      s.close(efd);
      return Promise.resolve();
    },
  };
}

/** Writes one 64-byte SQE at word `w` of the SQE array (user_data is `hi:lo`). */
export function writeSqe(
  q: Uint32Array,
  w: number,
  op: number,
  flags: number,
  fd: number,
  offset: number,
  addr: number,
  len: number,
  opFlags: number,
  lo: number,
  hi: number,
): void {
  q[w] = op | (flags << 8);
  q[w + 1] = fd;
  q[w + 2] = offset >>> 0;
  q[w + 3] = Math.floor(offset / 0x100000000);
  q[w + 4] = addr >>> 0;
  q[w + 5] = Math.floor(addr / 0x100000000);
  q[w + 6] = len;
  q[w + 7] = opFlags;
  q[w + 8] = lo;
  q[w + 9] = hi;
  q.fill(0, w + 10, w + 16);
}
