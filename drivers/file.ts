/**
 * The `file` protocol driver: positional I/O on a host file (QEMU's
 * file-posix). Every request is one synchronous positional syscall, never an
 * async Deno op (30–70 µs each): libc `pread`/`pwrite` through FFI when
 * `--allow-ffi` is granted (0.65 µs for a cached 4 KiB read), else `node:fs`
 * readSync/writeSync with a position (1 µs). Figures in bench/README.md.
 *
 * Options (QEMU's names):
 * - `filename` (required); `create` (create the file if missing, and let
 *   writes on the node itself go past the end), with QEMU's creation hints
 *   `extent-size-hint` (default 1 MiB, 0 = none) and `nocow`;
 * - `locking` = `auto` (default) | `on` | `off`: QEMU-compatible OFD byte
 *   locks with FFI (qemu-img and blkgraph see each other), `flock` without.
 *   A conflict is `EBUSY` ("in use"; QEMU passes EAGAIN, which reads as
 *   "try again"). Writers unshare write and resize as QEMU does; read-only
 *   nodes share everything (like `qemu-img -U`);
 * - `cache.direct` (set by `cache=none`/`directsync`): O_DIRECT, needs FFI
 *   for aligned buffers; the request alignment is probed (512 or 4096).
 *   These requests wait for the disk, so by default they go through the
 *   node's io_uring (`_file_uring.ts`): SQEs written straight into the
 *   mmapped ring, everything issued in one tick submitted by one
 *   `io_uring_enter`, completions reaped in batches at each wake-up of a
 *   socket the kernel itself signals (each request linked to a 1-byte send,
 *   read by the event loop's own poller; with the net permission), else of
 *   an eventfd registered with the ring (`info().uring.notifier` says
 *   which). Where a ring cannot be set up (an old
 *   kernel, seccomp, `io_uring_disabled`) they run on Deno's worker threads
 *   (FFI `nonblocking`) instead; `info().aio` says which;
 * - `aio` = `io_uring` (QEMU's name): reads, writes and flushes through the
 *   ring, also on the page cache; where unavailable, a one-line warning and
 *   worker threads. `aio=threads`: reads and writes on worker threads (QEMU's
 *   aio=threads), also buffered ones, so a server goes on reading requests
 *   while the kernel copies a write. `aio=native` needs `cache.direct`
 *   (as QEMU's Linux AIO) and is taken as `threads`; without `aio`,
 *   buffered requests are one synchronous call each. The graph-wide
 *   default (qemu-img bench / qemu-io `-i`) is `open()`'s `aio` option.
 *   `aio-max-batch`, `drop-cache`, `x-check-cache-dropped`, `pr-manager`:
 *   accepted and ignored.
 *
 * With FFI the node also has a write-zeroes fast path (`fallocate` punch-hole
 * or zero-range), discard (punch hole), `blockStatus` from
 * `lseek(SEEK_DATA/SEEK_HOLE)`, and `truncate` with `prealloc: "falloc"`.
 * Writes past the end grow the file (a parent's writes, or the node's own
 * with `create` or `allowBeyondEof`); `flush` is fdatasync (on the ring,
 * drained behind every request submitted before it).
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * const path = await Deno.makeTempFile();
 * {
 *   await using f = await open({ driver: "file", filename: path, create: true });
 *   await f.pwrite(0, new Uint8Array(4096).fill(1));
 *   await f.flush();
 *   console.log(f.length); // 4096
 * }
 * await Deno.remove(path);
 * ```
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import { AIO_MODES, checkKnownOptions, checkPreallocation, optBool, optEnum, optString } from "../core/options.ts";
import { registerDriver } from "../core/registry.ts";
import type { BlockDriver, DriverInstance, OpenContext } from "../core/node.ts";
import { Errno, errnoError, type Handle, type Libc, loadLibc, O_CLOEXEC, O_CREAT, O_RDONLY, O_RDWR } from "./_file_libc.ts";
import { lockImage, unlockOfd } from "./_file_lock.ts";
import { applyCreateHints, readCreateHints } from "./_file_hints.ts";
import { libcInstance } from "./_file_instance.ts";

// node:fs (the fallback without FFI) is loaded only when needed: loading it costs a CLI run 0.1-0.3 s.
type NodeFs = typeof import("./_file_nodefs.ts");
let nodeFs: NodeFs | undefined;

const KNOWN = [
  "filename",
  "locking",
  "aio",
  "cache.direct",
  "cache.no-flush",
  "create",
  "extent-size-hint",
  "nocow",
  "aio-max-batch",
  "drop-cache",
  "x-check-cache-dropped",
  "pr-manager",
];

/** The host-file protocol driver. */
export const fileDriver: BlockDriver = {
  name: "file",
  kind: "protocol",
  protocolPrefix: "file",
  options: KNOWN,
  createOptions: [
    { name: "extent_size_hint", type: "size", help: "Extent size hint for the image file, 0 to disable" },
    { name: "nocow", type: "bool", help: "Turn off copy-on-write (valid only on btrfs)" },
    { name: "preallocation", type: "str", help: "Preallocation mode (allowed values: off, falloc, full)" },
    { name: "size", type: "size", help: "Virtual disk size" },
  ],
  // The preallocation a format hands down (raw's): file-posix's modes and words.
  checkCreate(ctx): void {
    checkPreallocation(ctx.options, {
      driver: "file",
      allowed: ["off", "falloc", "full"],
      unsupported: (m) => `Unsupported preallocation mode: ${m}`,
    });
  },
  parseFilename(filename: string): Record<string, unknown> {
    const name = filename.replace(/^file:/, "");
    // A colon before any slash would read as a protocol prefix again: "./" keeps it a path (QEMU does the same).
    const m = /[:/]/.exec(name);
    return { filename: m !== null && m[0] === ":" ? `./${name}` : name };
  },
  async open(ctx: OpenContext): Promise<DriverInstance> {
    if (!loadLibc() && !nodeFs) nodeFs = await import("./_file_nodefs.ts");
    return openFile(ctx, "file");
  },
};

/** A block or character device (QEMU's S_ISBLK || S_ISCHR). */
function isDevice(filename: string): boolean {
  try {
    const st = Deno.statSync(filename);
    return st.isBlockDevice === true || st.isCharDevice === true;
  } catch {
    return false;
  }
}

/** A host device driver: the `file` driver's I/O on a block or character device (QEMU's host_device and host_cdrom). */
function deviceDriver(name: "host_device" | "host_cdrom", probeDevice: (filename: string) => number): BlockDriver {
  return {
    name,
    kind: "protocol",
    options: KNOWN,
    probeDevice,
    async open(ctx: OpenContext): Promise<DriverInstance> {
      if (!loadLibc() && !nodeFs) nodeFs = await import("./_file_nodefs.ts");
      const inst = openFile(ctx, name);
      // A drive without a disc: the core fails every request with ENOMEDIUM (checked at open; a disc put in later needs a reopen).
      return name === "host_cdrom" && !cdromInserted(String(ctx.options.filename)) ? { ...inst, inserted: false } : inst;
    },
  };
}

const CDROM_DRIVE_STATUS = 0x5326;
const CDS_DISC_OK = 4;
const O_NONBLOCK = 0o4000;

/** A disc is in the drive (QEMU's cdrom_is_inserted: CDROM_DRIVE_STATUS says CDS_DISC_OK); true where it cannot be asked. */
function cdromInserted(filename: string): boolean {
  const libc = loadLibc();
  if (!libc) return true;
  const fd = libc.open(filename, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0);
  if (fd < 0) return true;
  try {
    return libc.ioctl(fd, CDROM_DRIVE_STATUS, new Uint8Array(8)) === CDS_DISC_OK;
  } finally {
    libc.close(fd);
  }
}

/**
 * The `host_device` driver: a block or character device (QEMU's; a plain
 * filename naming a device opens with it, as QEMU's find_hdev_driver picks it).
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * await using dev = await open({ driver: "host_device", filename: "/dev/zero", locking: "off" }, { readOnly: true });
 * console.log(dev.driver.name, dev.length); // host_device 0
 * ```
 */
export const hostDeviceDriver: BlockDriver = deviceDriver("host_device", (f) => (isDevice(f) ? 100 : f.startsWith("/dev/cdrom") ? 50 : 0));

/** The `host_cdrom` driver: as `host_device`, for CD-ROM drives (`/dev/cd*`), as QEMU's. */
export const hostCdromDriver: BlockDriver = deviceDriver("host_cdrom", (f) => (f.startsWith("/dev/cd") && isDevice(f) ? 101 : 0));

function openFile(ctx: OpenContext, kind: "file" | "host_device" | "host_cdrom"): DriverInstance {
  const opts = flattenCache(ctx.options);
  checkKnownOptions(opts, KNOWN, kind);
  const filename = optString(opts, "filename", kind);
  if (!filename) throw new BlockError("EINVAL", `Driver '${kind}' needs the option 'filename'`);
  const locking = optEnum(opts, "locking", "file", ["auto", "on", "off"] as const) ?? "auto";
  const aio = optEnum(opts, "aio", "file", AIO_MODES);
  const direct = optBool(opts, "cache.direct", "file") ?? false;
  const create = optBool(opts, "create", "file") ?? false;
  const name = ctx.node.name;
  // As file-posix: Linux native AIO works on O_DIRECT files only, so QEMU refuses it for a buffered file.
  if (aio === "native" && !direct) {
    throw new BlockError("EINVAL", "aio=native was specified, but it requires cache.direct=on, which was not specified.", { node: name });
  }
  const libc = loadLibc();
  if (direct && !libc) {
    throw new BlockError(
      "ENOTSUP",
      `Cannot open '${filename}' with cache.direct=on (cache=none/directsync): O_DIRECT needs aligned buffers, which need FFI; run with --allow-ffi or use cache=writeback`,
      { node: name },
    );
  }
  const hints = create ? readCreateHints(opts) : undefined;
  const h = libc ? openLibc(libc, filename, ctx.readOnly, create, direct, name) : nodeFs!.openNodeFs(filename, ctx.readOnly, create, name);
  // As QEMU's file-posix: `file` takes regular files only (a directory opens read-only, a device belongs to host_device),
  // host_device and host_cdrom take block and character devices only.
  let wrong = false;
  try {
    const st = Deno.statSync(filename);
    wrong = kind === "file" ? !st.isFile : !(st.isBlockDevice || st.isCharDevice);
  } catch {
    // Gone between open and stat: the next request will say so.
  }
  if (wrong) {
    h.release();
    const what = kind === "file" ? "a regular file" : "either a character or block device";
    throw new BlockError("EINVAL", `'${kind}' driver requires '${filename}' to be ${what}`, { node: name });
  }
  if (hints && libc) applyCreateHints(libc, h.fd, hints);
  // A file opened to be created is written past its end by design (QEMU's allow_write_beyond_eof for image creation).
  if (create) ctx.node.allowBeyondEof = true;
  try {
    lockImage(h, filename, ctx.readOnly, ctx.forceShare ?? false, locking, name);
  } catch (e) {
    h.release();
    throw e;
  }
  if (!libc) return nodeFs!.nodeFsInstance(h, filename, name);
  // O_DIRECT requests wait for the disk: on io_uring unless another aio was asked for. aio=threads (as QEMU's) puts
  // buffered requests on worker threads too, so the caller's thread goes on meanwhile; aio=native is taken as threads.
  const backend = aio === "io_uring" || (direct && aio === undefined) ? "io_uring" : direct || aio !== undefined ? "threads" : "sync";
  try {
    return libcInstance(libc, h, filename, { direct, aio: backend, explicit: aio === "io_uring" }, ctx.node);
  } catch (e) {
    h.release();
    throw e;
  }
}

function openLibc(libc: Libc, filename: string, readOnly: boolean, create: boolean, direct: boolean, node: string): Handle {
  let flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (create) flags |= O_CREAT;
  if (direct) flags |= libc.O_DIRECT;
  if (filename.includes("\0")) throw new BlockError("EINVAL", `Cannot open '${filename}': the filename contains a NUL byte`, { node });
  const fd = libc.open(filename, flags, 0o644);
  if (fd < 0) {
    if (direct && -fd === Errno.EINVAL) {
      throw new BlockError("ENOTSUP", `Cannot open '${filename}' with cache.direct=on: the file system does not support O_DIRECT`, {
        node,
      });
    }
    // QEMU's text (raw_open_common): scripts match on it.
    throw errnoError(-fd, `Could not open '${filename}'`, { node });
  }
  const h: Handle = {
    fd,
    libc,
    lockKind: "none",
    release: () => {
      if (h.lockKind === "ofd") unlockOfd(libc, fd);
      libc.close(fd);
    },
  };
  return h;
}

function flattenCache(options: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(options)) {
    if (k === "cache" && v && typeof v === "object") {
      for (const [ck, cv] of Object.entries(v)) out[`cache.${ck}`] = cv;
    } else out[k] = v;
  }
  return out;
}

registerDriver(fileDriver);
registerDriver(hostDeviceDriver);
registerDriver(hostCdromDriver);
