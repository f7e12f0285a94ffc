/**
 * I/O buffers aligned as QEMU's `qemu_blockalign` aligns them. Where the
 * kernel copies into a buffer (a `pread` from the page cache, a socket
 * receive), the destination's placement sets the speed: on this project's
 * machines (AMD EPYC, Linux 6.18) the copy (`rep movsb`) runs at a twentieth
 * of its speed when the destination sits 1-31 bytes past the source modulo
 * a page. A page-cache page starts on a page, so a 2 MiB read into a buffer
 * 16 bytes past a page, where a plain `new Uint8Array(n)` of 128 KiB or more
 * lands, runs at ~1.6 GB/s, into a page-aligned one at ~5.5 GB/s, and a
 * 4 KiB read at half the speed. Writes do not care where their source is.
 *
 * @module
 */

/** Alignment of buffers of at least one page: a page, as `qemu_blockalign` on a 4 KiB-sector host. */
const PAGE = 4096;
/** Alignment of smaller buffers: a cache line, which keeps them out of the slow window for page-aligned file offsets. */
const LINE = 64;

let canAddress: boolean | undefined;

/** The address of a buffer's first byte, or undefined without the FFI permission. */
function addressOf(b: Uint8Array): number | undefined {
  if (canAddress === undefined) {
    try {
      canAddress = Deno.permissions.querySync({ name: "ffi" }).state === "granted";
    } catch {
      canAddress = false;
    }
  }
  if (!canAddress) return undefined;
  return Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b as Uint8Array<ArrayBuffer>)));
}

/**
 * A zero-filled buffer of `length` bytes for I/O whose first byte sits at
 * `align` (default: a page for buffers of a page or more, 64 bytes below)
 * plus `offset`, so that `buf.subarray(offset)` is aligned: a reply header
 * of `offset` bytes can precede an aligned payload. The backing store of an
 * ArrayBuffer never moves, so the alignment holds for the buffer's life.
 * Without the FFI permission the address cannot be known and the buffer is
 * a plain one.
 *
 * @example
 * ```ts
 * import { ioBuffer } from "@blkgraph/blkgraph";
 * const buf = ioBuffer(65536);
 * console.log(buf.length); // 65536
 * const reply = ioBuffer(16 + 4096, { offset: 16 }); // 16-byte header, then an aligned 4 KiB payload
 * console.log(reply.length); // 4112
 * ```
 */
export function ioBuffer(length: number, opts: { offset?: number; align?: number } = {}): Uint8Array<ArrayBuffer> {
  const align = opts.align ?? (length >= PAGE ? PAGE : LINE);
  const offset = opts.offset ?? 0;
  const raw = new Uint8Array(length + align);
  const addr = addressOf(raw);
  if (addr === undefined) return raw.subarray(0, length);
  const skip = (align - ((addr + offset) % align)) % align;
  return raw.subarray(skip, skip + length);
}

/** Tells whether `buf`'s first byte sits at a multiple of `align` (undefined without the FFI permission). */
export function isAligned(buf: Uint8Array, align: number): boolean | undefined {
  const addr = addressOf(buf);
  return addr === undefined ? undefined : addr % align === 0;
}
