/**
 * The `file` driver's copy offloading (QEMU's file-posix
 * handle_aiocb_copy_range): `copy_file_range(2)` from one file node's fd to
 * another's, looping until the range is done. The kernel copies (or shares
 * extents on file systems that can); no data passes through this process.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import type { DriverInstance } from "../core/node.ts";
import { Errno, errnoError, type Libc } from "./_file_libc.ts";

/** What a file instance lends to copies into it. */
interface CopyEnd {
  readonly libc: Libc;
  readonly fd: number;
  readonly filename: string;
  /** Records that the file now reaches `end` bytes. */
  wrote(end: number): void;
}

const ends = new WeakMap<DriverInstance, CopyEnd>();

/** Registers `inst` as a file instance copies can go to and come from. */
export function registerCopyEnd(inst: DriverInstance, end: CopyEnd): void {
  ends.set(inst, end);
}

const UNSUPPORTED: number[] = [Errno.EXDEV, Errno.ENOSYS, Errno.EOPNOTSUPP, Errno.EINVAL];

/**
 * Copies `length` bytes at `offset` of the file behind `src` to `dstOffset`
 * of the file behind `dst`. ENOTSUP when `dst` is not a file opened through
 * libc or the kernel cannot copy between the two (across file systems on old
 * kernels, O_DIRECT alignment); ENOSPC when the source ends first (QEMU's
 * "no progress" case).
 *
 * @example
 * ```ts
 * import { createImage, open } from "../mod.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeFile(`${dir}/a`, new Uint8Array(4096).fill(9));
 * await createImage(`${dir}/b`, "raw", 4096);
 * {
 *   await using a = await open({ driver: "file", filename: `${dir}/a` }, { readOnly: true });
 *   await using b = await open({ driver: "file", filename: `${dir}/b` });
 *   await a.copyRange(0, 4096, b, 0); // needs --allow-ffi; ENOTSUP otherwise
 * }
 * console.log((await Deno.readFile(`${dir}/b`))[0]); // 9
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function copyFileRange(src: DriverInstance, offset: number, length: number, dst: DriverInstance, dstOffset: number): void {
  const from = ends.get(src);
  const to = ends.get(dst);
  if (!from || !to) throw new BlockError("ENOTSUP", "Cannot copy range: the target is not a file opened through libc");
  for (let done = 0; done < length;) {
    const r = from.libc.copyFileRange(from.fd, offset + done, to.fd, dstOffset + done, length - done);
    if (r < 0) {
      if (UNSUPPORTED.includes(-r)) {
        throw new BlockError(
          "ENOTSUP",
          `Cannot copy range from '${from.filename}' to '${to.filename}': copy_file_range is not supported there`,
        );
      }
      throw errnoError(-r, `Cannot copy ${length - done} bytes from '${from.filename}' at offset ${offset + done} to '${to.filename}'`, {
        offset: offset + done,
        length: length - done,
      });
    }
    if (r === 0) {
      throw new BlockError("ENOSPC", `Cannot copy range from '${from.filename}' at offset ${offset + done}: past the end of the file`);
    }
    done += r;
    to.wrote(dstOffset + done);
  }
}
