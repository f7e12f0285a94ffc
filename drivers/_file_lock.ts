/**
 * Image locking compatible with QEMU's file-posix: open file description
 * (OFD) byte locks, one byte per permission. Byte `100 + bit` is read-locked
 * by everyone who *uses* a permission and byte `200 + bit` by everyone who
 * does *not share* it; a conflicting holder is found with F_OFD_GETLK. So
 * qemu-img, qemu-io, qemu-nbd and a VM see blkgraph's locks and the reverse.
 *
 * Without FFI, a `flock` on the file keeps blkgraph processes apart (QEMU
 * does not see it).
 *
 * Policy: a writable node uses consistent-read, write and resize and shares
 * only consistent-read and write-unchanged (QEMU's default for a writable
 * image); a read-only node uses consistent-read and shares everything (like
 * `qemu-img -U`), so reading an image a VM is using is allowed.
 *
 * @module
 */

import { BlockError, toBlockError } from "../core/errors.ts";
import {
  errnoError,
  F_OFD_GETLK,
  F_OFD_SETLK,
  F_RDLCK,
  F_UNLCK,
  F_WRLCK,
  flockStruct,
  flockType,
  type Handle,
  type Libc,
} from "./_file_libc.ts";

/** Lock byte of "I use permission bit i" (QEMU's RAW_LOCK_PERM_BASE). */
export const LOCK_PERM_BASE = 100;
/** Lock byte of "I do not share permission bit i" (RAW_LOCK_SHARED_BASE). */
export const LOCK_SHARED_BASE = 200;

/** QEMU's BLK_PERM_* bits that file-posix locks. */
export const Perm = {
  CONSISTENT_READ: 1 << 0,
  WRITE: 1 << 1,
  WRITE_UNCHANGED: 1 << 2,
  RESIZE: 1 << 3,
} as const;

const PERM_NAMES = ["consistent read", "write", "write unchanged", "resize"];
const ALL_PERMS = 0b1111;

/** What went wrong while locking. */
export interface LockFailure {
  /** "conflict" when another holder is in the way, "unsupported" when the file system has no OFD locks, else "error". */
  kind: "conflict" | "unsupported" | "error";
  /** QEMU's wording: `Failed to get "write" lock`. */
  detail: string;
  /** The errno of the failed call (positive). */
  errno: number;
}

/**
 * Permissions (used, shared) a node takes, as QEMU's: a reader needs a
 * consistent view, so it does not share "write" unless it forces sharing
 * (`force-share`, qemu-img `-U`).
 */
export function permsFor(readOnly: boolean, forceShare = false): { perm: number; shared: number } {
  if (readOnly) return { perm: Perm.CONSISTENT_READ, shared: forceShare ? ALL_PERMS : ALL_PERMS & ~Perm.WRITE };
  return { perm: Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE, shared: Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED };
}

function setLock(libc: Libc, fd: number, type: number, byte: number): number {
  return libc.fcntlLock(fd, F_OFD_SETLK, flockStruct(type, byte, 1));
}

/** Tells whether another open file description holds a lock on `byte` (an exclusive lock would conflict). */
function testLock(libc: Libc, fd: number, byte: number): number {
  const fl = flockStruct(F_WRLCK, byte, 1);
  const r = libc.fcntlLock(fd, F_OFD_GETLK, fl);
  if (r < 0) return r;
  return flockType(fl) === F_UNLCK ? 0 : -11;
}

function failure(err: number, detail: string): LockFailure {
  const errno = -err;
  if (errno === 11 || errno === 13) return { kind: "conflict", detail, errno };
  if (errno === 22 || errno === 95 || errno === 37 || errno === 38) return { kind: "unsupported", detail, errno };
  return { kind: "error", detail, errno };
}

/**
 * Takes QEMU's lock bytes for `perm`/`shared` on `fd`, then checks that no
 * one else holds a conflicting byte (apply first, then check, as QEMU does,
 * so two openers racing cannot both succeed). On failure every byte taken is
 * released and the failure returned.
 */
export function lockOfd(libc: Libc, fd: number, perm: number, shared: number): LockFailure | undefined {
  const taken: number[] = [];
  const undo = () => {
    for (const b of taken) setLock(libc, fd, F_UNLCK, b);
  };
  for (let i = 0; i < 4; i++) {
    const bits: [number, number][] = [[perm, LOCK_PERM_BASE + i], [~shared & ALL_PERMS, LOCK_SHARED_BASE + i]];
    for (const [mask, byte] of bits) {
      if (!(mask & (1 << i))) continue;
      const r = setLock(libc, fd, F_RDLCK, byte);
      if (r < 0) {
        undo();
        return failure(r, `Failed to lock byte ${byte}`);
      }
      taken.push(byte);
    }
  }
  for (let i = 0; i < 4; i++) {
    if (perm & (1 << i)) {
      const r = testLock(libc, fd, LOCK_SHARED_BASE + i);
      if (r < 0) {
        undo();
        return failure(r, `Failed to get "${PERM_NAMES[i]}" lock`);
      }
    }
  }
  for (let i = 0; i < 4; i++) {
    if (!(shared & (1 << i))) {
      const r = testLock(libc, fd, LOCK_PERM_BASE + i);
      if (r < 0) {
        undo();
        return failure(r, `Failed to get shared "${PERM_NAMES[i]}" lock`);
      }
    }
  }
  return undefined;
}

/**
 * Drops every OFD lock `fd`'s open file description holds. Called before
 * close: a child process forked elsewhere in this process may still share
 * the description for a moment (between fork and exec), and a lock that
 * close alone would leave on it makes the next opener see a conflict.
 */
export function unlockOfd(libc: Libc, fd: number): void {
  libc.fcntlLock(fd, F_OFD_SETLK, flockStruct(F_UNLCK, 0, 0));
}

/**
 * Locks an opened image as QEMU does (OFD byte locks with FFI, flock
 * without), or refuses with EBUSY when another process holds it.
 */
export function lockImage(
  h: Handle,
  filename: string,
  readOnly: boolean,
  forceShare: boolean,
  locking: "auto" | "on" | "off",
  node: string,
): void {
  if (locking === "off") return;
  const what = readOnly ? "reading" : "writing";
  const busy = (detail: string) =>
    new BlockError(
      "EBUSY",
      `Cannot open '${filename}' for ${what}: it is locked by another process (is a VM or qemu-img using it?): ${detail}`,
      { node },
    );
  if (h.libc) {
    const { perm, shared } = permsFor(readOnly, forceShare);
    const fail = lockOfd(h.libc, h.fd, perm, shared);
    if (!fail) {
      h.lockKind = "ofd";
      return;
    }
    if (fail.kind === "conflict") throw busy(fail.detail);
    if (fail.kind === "unsupported" && locking === "auto") return;
    throw errnoError(fail.errno, `Cannot lock '${filename}' (locking=${locking}): ${fail.detail}`, { node });
  }
  // Without FFI: flock keeps blkgraph processes apart (QEMU does not see it):
  // writers take it exclusive, readers shared (so reader and writer
  // conflict, as with OFD locks), and force-share readers not at all.
  if (readOnly && forceShare) return;
  let lockFile: Deno.FsFile | undefined;
  try {
    lockFile = Deno.openSync(filename, { read: true });
    if (!lockFile.tryLockSync(!readOnly)) {
      lockFile.close();
      throw busy("flock is held");
    }
  } catch (e) {
    if (e instanceof BlockError) throw e;
    lockFile?.close();
    if (locking === "on") throw toBlockError(e, `Cannot lock '${filename}' (locking=on)`, { node });
    return;
  }
  const release = h.release;
  h.release = () => {
    try {
      release();
    } finally {
      // Unlock first: a forked child may share the description (see unlockOfd).
      lockFile.unlockSync();
      lockFile.close();
    }
  };
  h.lockKind = "flock";
}
