/**
 * What QEMU's file-posix does to a file it creates: an extent size hint for
 * the file system (`extent_size_hint`, default 1 MiB, 0 = none: XFS then
 * allocates the image in extents of that size; other file systems refuse
 * the ioctl, which is ignored unless a hint was asked for explicitly) and
 * `nocow` (btrfs: no copy-on-write for the file). Both need FFI; without it
 * they are ignored as on a file system that lacks them.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import { optBool, optSize } from "../core/options.ts";
import type { Libc } from "./_file_libc.ts";

/** `_IOR('X', 31, struct fsxattr)` */
const FS_IOC_FSGETXATTR = 0x801c581f;
/** `_IOW('X', 32, struct fsxattr)` */
const FS_IOC_FSSETXATTR = 0x401c5820;
/** `_IOR('f', 1, long)` */
const FS_IOC_GETFLAGS = 0x80086601;
/** `_IOW('f', 2, long)` */
const FS_IOC_SETFLAGS = 0x40086602;
const FS_XFLAG_EXTSIZE = 0x800;
const FS_NOCOW_FL = 0x00800000;

/** The creation hints given as file options (`extent-size-hint`, `nocow`), validated as QEMU does. */
export interface CreateHints {
  /** Extent size hint in bytes (0: none). */
  extentSizeHint: number;
  /** Turn off copy-on-write. */
  nocow: boolean;
}

/** Reads the hints from a file node's options. */
export function readCreateHints(opts: Record<string, unknown>): CreateHints {
  const given = optSize(opts, "extent-size-hint", "file");
  if (given !== undefined && given > 0xffffffff) {
    throw new BlockError("EINVAL", `Extent size hint is too large (extent_size_hint ${given}, at most 4294967295)`);
  }
  return { extentSizeHint: given ?? 1 << 20, nocow: optBool(opts, "nocow", "file") ?? false };
}

/**
 * Applies the hints to a newly created file. Like QEMU, a file system that
 * refuses them does not stop the creation.
 */
export function applyCreateHints(libc: Libc, fd: number, hints: CreateHints): void {
  if (hints.nocow) {
    const flags = new Uint8Array(8);
    if (libc.ioctl(fd, FS_IOC_GETFLAGS, flags) >= 0) {
      const v = new DataView(flags.buffer);
      v.setInt32(0, v.getInt32(0, true) | FS_NOCOW_FL, true);
      libc.ioctl(fd, FS_IOC_SETFLAGS, flags);
    }
  }
  if (hints.extentSizeHint) {
    // struct fsxattr: fsx_xflags, fsx_extsize, fsx_nextents, fsx_projid, fsx_cowextsize, 8 bytes of padding.
    const attr = new Uint8Array(28);
    if (libc.ioctl(fd, FS_IOC_FSGETXATTR, attr) >= 0) {
      const v = new DataView(attr.buffer);
      v.setUint32(0, v.getUint32(0, true) | FS_XFLAG_EXTSIZE, true);
      v.setUint32(4, hints.extentSizeHint, true);
      libc.ioctl(fd, FS_IOC_FSSETXATTR, attr);
    }
  }
}
