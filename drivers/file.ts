/**
 * The `file` protocol driver: positional I/O on a host file. Small requests
 * use synchronous positional syscalls (`node:fs` readSync/writeSync with a
 * position): about 3 µs each, against 30–60 µs for an async Deno op, so the
 * hot path never pays an async op per request (figures in bench/README.md).
 *
 * Options (QEMU's): `filename`, `locking` (auto/on/off), `aio` (accepted,
 * ignored), `cache.direct` (see README: needs aligned buffers), `x-create`.
 * `flush` is fdatasync. Writes past the end grow the file.
 *
 * @module
 */

import * as fs from "node:fs";
import { BlockError, toBlockError } from "../core/errors.ts";
import { checkKnownOptions, optBool, optEnum, optString } from "../core/options.ts";
import { registerDriver } from "../core/registry.ts";
import type { BlockDriver, DriverInstance } from "../core/types.ts";

const KNOWN = ["filename", "locking", "aio", "cache.direct", "create", "aio-max-batch", "drop-cache", "x-check-cache-dropped", "pr-manager"];

/** The host-file protocol driver. */
export const fileDriver: BlockDriver = {
  name: "file",
  kind: "protocol",
  protocolPrefix: "file",
  parseFilename(filename: string) {
    return { filename: filename.replace(/^file:/, "") };
  },
  open(ctx): Promise<DriverInstance> {
    const opts = flattenCache(ctx.options);
    checkKnownOptions(opts, KNOWN, "file");
    const filename = optString(opts, "filename", "file");
    if (!filename) throw new BlockError("EINVAL", "Driver 'file' needs the option 'filename'");
    const locking = optEnum(opts, "locking", "file", ["auto", "on", "off"] as const) ?? "auto";
    optEnum(opts, "aio", "file", ["threads", "native", "io_uring"] as const);
    const direct = optBool(opts, "cache.direct", "file") ?? false;
    const create = optBool(opts, "create", "file") ?? false;
    const name = ctx.node.name;
    if (direct) {
      throw new BlockError(
        "ENOTSUP",
        `Cannot open '${filename}' with cache.direct=on: O_DIRECT needs page-aligned buffers, which this file driver cannot guarantee yet; use cache=writeback or cache=unsafe`,
        { node: name },
      );
    }
    let flags = ctx.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
    if (create) flags |= fs.constants.O_CREAT;
    let fd: number;
    try {
      fd = fs.openSync(filename, flags, 0o644);
    } catch (e) {
      throw toBlockError(e, `Cannot open '${filename}'${ctx.readOnly ? " read-only" : ""}`, { node: name });
    }
    let lockFile: Deno.FsFile | undefined;
    if (locking !== "off" && !ctx.readOnly) {
      try {
        lockFile = Deno.openSync(filename, { read: true });
        if (!lockFile.tryLockSync(true)) {
          lockFile.close();
          fs.closeSync(fd);
          throw new BlockError("EBUSY", `Cannot open '${filename}' for writing: it is locked by another user (is another process using the image?)`, { node: name });
        }
      } catch (e) {
        if (e instanceof BlockError) throw e;
        lockFile?.close();
        lockFile = undefined;
        if (locking === "on") {
          fs.closeSync(fd);
          throw toBlockError(e, `Cannot lock '${filename}'`, { node: name });
        }
      }
    }
    let size = fs.fstatSync(fd).size;
    const where = (what: string, offset: number, length: number) => `Cannot ${what} ${length} bytes at offset ${offset} of '${filename}'`;
    const inst: DriverInstance = {
      getLength: () => size,
      pread(offset, buf) {
        let done = 0;
        try {
          while (done < buf.length) {
            const n = fs.readSync(fd, buf, done, buf.length - done, offset + done);
            if (n === 0) break;
            done += n;
          }
        } catch (e) {
          throw toBlockError(e, where("read", offset, buf.length), { node: name, offset, length: buf.length });
        }
        if (done < buf.length) buf.fill(0, done);
      },
      pwrite(offset, data) {
        let done = 0;
        try {
          while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
        } catch (e) {
          throw toBlockError(e, where("write", offset, data.length), { node: name, offset, length: data.length });
        }
        if (offset + data.length > size) size = offset + data.length;
      },
      flush() {
        try {
          fs.fdatasyncSync(fd);
        } catch (e) {
          throw toBlockError(e, `Cannot flush '${filename}'`, { node: name });
        }
      },
      truncate(length) {
        try {
          fs.ftruncateSync(fd, length);
        } catch (e) {
          throw toBlockError(e, `Cannot resize '${filename}' to ${length} bytes`, { node: name });
        }
        size = length;
      },
      close() {
        try {
          fs.closeSync(fd);
        } finally {
          lockFile?.close();
        }
      },
    };
    return Promise.resolve(inst);
  },
};

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
