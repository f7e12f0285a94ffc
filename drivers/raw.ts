/**
 * The `raw` format driver: the guest sees its file child as is, or a window
 * of it (QEMU's `offset` and `size` options). As in QEMU, the length is
 * whole 512-byte sectors: a file of 1234 bytes is a 1536-byte disk whose
 * tail reads as zeros (a write there extends the file); `size` must be a
 * multiple of 512. The core refuses requests past the node's length (EIO,
 * as qemu-io shows); the window check behind it fails writes with ENOSPC.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import { checkKnownOptions, optSize } from "../core/options.ts";
import { probeFormat, registerDriver } from "../core/registry.ts";
import type { BlockNode } from "../core/node.ts";
import type { FormatOptions } from "../core/types.ts";
import type { BlockDriver, DriverInstance } from "../core/node.ts";

/** The raw format driver. */
export const rawDriver: BlockDriver = {
  name: "raw",
  kind: "format",
  options: ["offset", "size"],
  strongOptions: ["offset", "size"],
  createOptions: [{ name: "size", type: "size", help: "Virtual disk size" }],
  probe: () => 1,
  async open(ctx): Promise<DriverInstance> {
    checkKnownOptions(ctx.options, rawDriver.options!, "raw");
    const offset = optSize(ctx.options, "offset", "raw") ?? 0;
    const fixedSize = optSize(ctx.options, "size", "raw");
    const file = (await ctx.openChild("file")) as BlockNode;
    const node = ctx.node;
    const name = node.name;
    if (offset > file.length) {
      throw new BlockError(
        "EINVAL",
        `Invalid option 'offset' of driver 'raw': offset ${offset} is past the end of the file (${file.length} bytes)`,
        { node: name },
      );
    }
    if (fixedSize !== undefined && offset + fixedSize > file.length && file.readOnly) {
      throw new BlockError(
        "EINVAL",
        `Invalid option 'size' of driver 'raw': offset + size (${offset + fixedSize}) is past the end of the file (${file.length} bytes)`,
        { node: name },
      );
    }
    if (fixedSize !== undefined && fixedSize % 512 !== 0) {
      throw new BlockError("EINVAL", `Invalid option 'size' of driver 'raw': specified size ${fixedSize} is not multiple of 512`, {
        node: name,
      });
    }
    const windowed = fixedSize !== undefined || offset > 0;
    const length = () => fixedSize ?? Math.ceil(Math.max(0, file.length - offset) / 512) * 512;
    const checkWindow = (what: string, off: number, len: number, code: "EIO" | "ENOSPC" = "ENOSPC") => {
      if (windowed && off + len > length()) {
        throw new BlockError(
          code,
          `Cannot ${what} ${len} bytes at offset ${off} on node '${name}': past the end of the raw window (${length()} bytes)`,
          {
            node: name,
            offset: off,
            length: len,
          },
        );
      }
    };
    const inst: DriverInstance = {
      getLength: length,
      supportsFua: true,
      // QEMU's raw_co_preadv/pwritev raise BLKDBG_READ_AIO/WRITE_AIO on the file child before the request: a blkdebug
      // node below sees them (they re-arm its inject rules, as iotest 289's data-file rules rely on).
      pread(off, buf, o) {
        checkWindow("read", off, buf.length, "EIO");
        const p = node.event("read_aio", o?.req);
        return p ? p.then(() => file.pread(off + offset, buf, o)) : file.pread(off + offset, buf, o);
      },
      pwrite(off, data, o) {
        checkWindow("write", off, data.length);
        if (ctx.probed && off < SECTOR) refuseFormatChange(name, off, data);
        const p = node.event("write_aio", o?.req);
        return p ? p.then(() => file.pwrite(off + offset, data, o)) : file.pwrite(off + offset, data, o);
      },
      // Copy offloading writes to the file at the window's offset (not over a probed image's first sector, which writes check).
      copyRangeTarget(off, len) {
        checkWindow("write", off, len);
        return ctx.probed && off < SECTOR ? undefined : { node: file, offset: off + offset };
      },
      pwriteZeroes(off, len, o) {
        checkWindow("write zeroes to", off, len);
        return file.pwriteZeroes(off + offset, len, o);
      },
      pdiscard(off, len, o) {
        checkWindow("discard", off, len);
        return file.pdiscard(off + offset, len, o);
      },
      async blockStatus(off, len, o) {
        len = Math.min(len, length() - off);
        // The tail of the last sector past the file's end reads as zeros, and is the image's own.
        if (off + offset >= file.length) {
          return {
            offset: off,
            length: len,
            data: false,
            zero: true,
            allocated: true,
            present: true,
            depth: 0,
            hostOffset: off + offset,
            file,
          };
        }
        const st = await file.blockStatus(off + offset, len, o);
        return { ...st, offset: off, allocated: true, present: true, depth: 0, hostOffset: off + offset, file: st.file ?? file };
      },
      truncate(newLength, o) {
        if (windowed) {
          throw new BlockError("ENOTSUP", `Cannot resize node '${name}': a raw node with 'offset' or 'size' has a fixed window`, {
            node: name,
          });
        }
        return file.truncate(newLength, o);
      },
      // Like QEMU's raw_get_info: the file's cluster size (an RBD object size) shows through.
      async info() {
        const cs = (await file.info())["cluster-size"];
        return typeof cs === "number" ? { "cluster-size": cs } : {};
      },
    };
    return inst;
  },
  async create(ctx): Promise<void> {
    const prealloc = checkRawOptions(ctx.options);
    if (prealloc === "full") {
      await ctx.file.pwriteZeroes(0, ctx.size);
      if (ctx.file.length < ctx.size) await ctx.file.truncate(ctx.size, { exact: false });
    } else {
      // Not exact: an existing NBD export at least this large will do (QEMU's create fallback).
      await ctx.file.truncate(ctx.size, { prealloc: prealloc as "off" | "falloc", exact: false });
    }
  },
  checkCreate(ctx) {
    checkRawOptions(ctx.options);
  },
  createOnlySizes: (options) => String(options.preallocation ?? "off") === "off",
  measure(input) {
    checkRawOptions(input.options);
    // qemu's raw_measure: the virtual size, whatever the source allocates.
    const n = Math.ceil(input.size / 512) * 512;
    return { required: n, fullyAllocated: n };
  },
};

const SECTOR = 512;

/**
 * QEMU's raw_probe_write: a raw image whose format was probed may not get a
 * first sector that probes as another format, or the next open would
 * interpret guest data as that format's metadata.
 */
function refuseFormatChange(name: string, offset: number, data: Uint8Array): void {
  const head = new Uint8Array(SECTOR);
  head.set(data.subarray(0, Math.min(data.length, SECTOR - offset)), offset);
  let guess: string;
  try {
    guess = probeFormat(head).name;
  } catch (e) {
    // A recognised format blkgraph cannot open (vhdx, vmdk, ...) counts too.
    const m = e instanceof BlockError ? /^Image format '(.*)' is not supported$/.exec(e.message) : null;
    if (!m) throw e;
    guess = m[1];
  }
  if (guess !== "raw") {
    throw new BlockError(
      "EPERM",
      `Cannot write to the first sector of '${name}': the image format was probed as raw and the new data would make it look like ${guess}; open it with an explicit format (driver=raw)`,
      { node: name, offset, length: data.length },
    );
  }
}

/** Validates raw creation options; returns the preallocation mode. */
function checkRawOptions(options: FormatOptions): string {
  const prealloc = String(options.preallocation ?? "off");
  const known = ["preallocation", "size"];
  if (options.backing_file !== undefined) throw new BlockError("ENOTSUP", "Backing file not supported for file format 'raw'");
  for (const k of Object.keys(options)) {
    if (!known.includes(k)) throw new BlockError("EINVAL", `Unknown option '${k}' for format 'raw' (known options: ${known.join(", ")})`);
  }
  if (!["off", "falloc", "full"].includes(prealloc)) {
    throw new BlockError(
      "EINVAL",
      `Invalid value '${prealloc}' for option 'preallocation' of format 'raw': expected off, falloc or full`,
    );
  }
  return prealloc;
}

registerDriver(rawDriver);
