/**
 * Setting up an io_uring instance for `_file_uring.ts`: `io_uring_setup`
 * with the best flags the kernel takes, the SQ ring, CQ ring and SQE array
 * mmapped, and how completions are signalled: a notification socket the
 * kernel writes to (`_notify_socket.ts`), or an eventfd registered with the
 * ring.
 *
 * @module
 */

import { type NotifySocket, openNotifySocket } from "./_notify_socket.ts";
import {
  EFD_CLOEXEC,
  EINVAL,
  IORING_FEAT_SINGLE_MMAP,
  IORING_OFF_CQ_RING,
  IORING_OFF_SQ_RING,
  IORING_OFF_SQES,
  IORING_REGISTER_EVENTFD,
  IORING_SETUP_CLAMP,
  IORING_SETUP_COOP_TASKRUN,
  IORING_SETUP_DEFER_TASKRUN,
  IORING_SETUP_SINGLE_ISSUER,
  IORING_SETUP_SUBMIT_ALL,
  IORING_SETUP_TASKRUN_FLAG,
  loadSys,
  MAP_FAILED,
  MAP_SHARED_POPULATE,
  P,
  PROT_RW,
  type Sys,
  SYS_io_uring_register,
  SYS_io_uring_setup,
} from "./_file_uring_sys.ts";

/** Why a ring could not be set up: the errno from the step that failed. */
export interface UringUnavailable {
  /** The failing step (`io_uring_setup`, `mmap`, `eventfd`, `IORING_REGISTER_EVENTFD`, or `ffi` without the FFI permission). */
  step: string;
  /** Positive errno (0 for `ffi`). */
  errno: number;
}

/**
 * Setup flags with the eventfd, best first. Without DEFER_TASKRUN every completion interrupts
 * the JS thread (task work), and the eventfd then wakes a worker thread that
 * wakes the JS thread again; with it, the kernel only signals the eventfd,
 * and the JS thread runs the completion work in one `io_uring_enter` per
 * wake-up. SINGLE_ISSUER (which DEFER_TASKRUN needs) holds: a ring is used
 * only from the thread that opened its node. An older kernel says EINVAL to
 * a flag it does not know (DEFER_TASKRUN 6.1, SUBMIT_ALL 5.18).
 */
export const SETUP_FLAGS = [
  IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
  IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL,
];

/**
 * Setup flags with the notification socket, best first. Each request is an
 * SQE hard-linked to a 1-byte `IORING_OP_SEND` to the socket, which the
 * kernel starts from the request's completion work (task work on the
 * submitting thread). That work must run while the JS thread sleeps in the
 * event loop's `epoll_wait`, with no system call of ours. COOP_TASKRUN
 * (TWA_SIGNAL_NO_IPI) wakes a sleeping thread for it but does not interrupt
 * a running one (the work waits for its next system call, which the event
 * loop makes as soon as the JS code yields); the send then makes the socket
 * readable, and epoll returns. Never DEFER_TASKRUN: the work would wait for
 * an `io_uring_enter` with GETEVENTS, which nothing makes while the thread
 * sleeps (tests/drivers/file_uring_socket_test.ts then fails by timeout).
 */
export const SOCKET_SETUP_FLAGS = [
  IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
  IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL,
];

/** A ring that is set up: its fds, the kernel's answer (`struct io_uring_params`), and the mappings. */
export interface RingSetup {
  /** The libc functions. */
  s: Sys;
  /** The ring's fd. */
  fd: number;
  /** The eventfd registered for its completions (-1 with the socket). */
  efd: number;
  /** The notification socket the linked sends write to, where the net permission allows. */
  socket?: NotifySocket;
  /** `struct io_uring_params` as the kernel filled it in (with the flags that were taken). */
  params: DataView;
  /** The mappings (address, length), to unmap at close. */
  maps: [Deno.PointerValue, number][];
  /** The SQ ring, the CQ ring (the same buffer with IORING_FEAT_SINGLE_MMAP) and the SQE array. */
  rings: ArrayBuffer[];
}

/** How a ring is set up: which notification, and (for tests) other setup flags. */
export interface RingOptions {
  /** `auto`: the socket where the net permission allows, else the eventfd. */
  notify?: "auto" | "eventfd";
  /** Setup flags tried instead of the defaults (tests). */
  flags?: number[];
}

/**
 * Sets up a ring for `entries` requests (twice as many SQEs with the
 * socket: each request is two), or says which step failed and why.
 */
export function setupRing(entries: number, o: RingOptions = {}): RingSetup | UringUnavailable {
  const s = loadSys();
  if (!s) return { step: "ffi", errno: 0 };
  const socket = o.notify === "eventfd" ? undefined : openNotifySocket(s, "uring");
  const params = new Uint8Array(P.size);
  const pv = new DataView(params.buffer);
  let fd = -1;
  const flagList = o.flags ?? (socket ? SOCKET_SETUP_FLAGS : SETUP_FLAGS);
  for (const flags of flagList) {
    params.fill(0);
    pv.setUint32(P.flags, flags, true);
    fd = s.uringSetup(SYS_io_uring_setup, socket ? 2 * entries : entries, params);
    if (fd >= 0) break;
    const e = s.errno();
    if (e !== EINVAL || flags === flagList.at(-1)) {
      void socket?.close();
      return { step: "io_uring_setup", errno: e };
    }
  }
  const maps: [Deno.PointerValue, number][] = [];
  const fail = (step: string, errno: number): UringUnavailable => {
    for (const [p, len] of maps) s.munmap(p, len);
    s.close(fd);
    void socket?.close();
    return { step, errno };
  };
  const u32 = (o: number) => pv.getUint32(o, true);
  const sqEntries = u32(P.sqEntries);
  const sqSize = u32(P.sqOff + 24) + sqEntries * 4;
  const cqSize = u32(P.cqOff + 20) + u32(P.cqEntries) * 16;
  const single = (u32(P.features) & IORING_FEAT_SINGLE_MMAP) !== 0;
  const map = (len: number, off: number): ArrayBuffer | undefined => {
    const p = s.mmap(null, len, PROT_RW, MAP_SHARED_POPULATE, fd, off);
    if (p === null || BigInt(Deno.UnsafePointer.value(p)) === MAP_FAILED) return undefined;
    maps.push([p, len]);
    return Deno.UnsafePointerView.getArrayBuffer(p, len);
  };
  const sqBuf = map(single ? Math.max(sqSize, cqSize) : sqSize, IORING_OFF_SQ_RING);
  const cqBuf = sqBuf && (single ? sqBuf : map(cqSize, IORING_OFF_CQ_RING));
  const sqeBuf = cqBuf && map(sqEntries * 64, IORING_OFF_SQES);
  if (!sqBuf || !cqBuf || !sqeBuf) return fail("mmap", s.errno());
  if (socket) return { s, fd, efd: -1, socket, params: pv, maps, rings: [sqBuf, cqBuf, sqeBuf] };
  const efd = s.eventfd(0, EFD_CLOEXEC);
  if (efd < 0) return fail("eventfd", s.errno());
  const arg = new Uint8Array(4);
  new DataView(arg.buffer).setInt32(0, efd, true);
  if (s.uringRegister(SYS_io_uring_register, fd, IORING_REGISTER_EVENTFD, arg, 1) < 0) {
    const e = s.errno();
    s.close(efd);
    return fail("IORING_REGISTER_EVENTFD", e);
  }
  return { s, fd, efd, params: pv, maps, rings: [sqBuf, cqBuf, sqeBuf] };
}
