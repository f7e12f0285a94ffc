/**
 * qemu-io's data commands: read, write, readv, writev, aio_read, aio_write
 * and aio_flush, with qemu-io 7.2's flags, checks, messages and output
 * (`-p` is accepted and ignored, as qemu-io does for backwards
 * compatibility).
 *
 * @module
 */

import {
  cvtnum,
  dumpBuffer,
  type IoCommand,
  type IoFlags,
  type IoSession,
  parsePattern,
  REQUEST_MAX_BYTES,
  strerror,
  usage,
} from "./_session.ts";
import { timedRequest } from "./_timed.ts";
import { ioBuffer } from "../../core/_io_buffer.ts";

/** Reads `-P` (undefined: not given; null: invalid, message printed). */
function patternFlag(s: IoSession, flags: IoFlags): number | undefined | null {
  const p = flags.get("P");
  if (typeof p !== "string") return undefined;
  return parsePattern(s, p) ?? null;
}

/** `-P`'s check of what was read: prints qemu-io's mismatch line and returns false when a byte of `buf` differs. */
function verifyPattern(s: IoSession, buf: Uint8Array, byte: number | undefined, at: number): boolean {
  if (byte === undefined) return true;
  for (let i = 0; i < buf.length; i++) {
    if (buf[i] !== byte) {
      s.print(`Pattern verification failed at offset ${at}, ${buf.length} bytes\n`);
      return false;
    }
  }
  return true;
}

/** `off` and `len`, each checked as qemu-io does; undefined after printing the error. */
function offsetAndCount(s: IoSession, operands: string[], max: number, tooLong: string): [number, number] | undefined {
  const offset = cvtnum(s, operands[0]);
  if (offset === undefined) return undefined;
  const count = cvtnum(s, operands[1]);
  if (count === undefined) return undefined;
  if (count > max) {
    s.print(`length cannot exceed ${REQUEST_MAX_BYTES}${tooLong}, given ${operands[1]}\n`);
    return undefined;
  }
  return [offset, count];
}

function sectorAligned(s: IoSession, offset: number, count: number): boolean {
  if (offset % 512) {
    s.print(`${offset} is not a sector-aligned value for 'offset'\n`);
    return false;
  }
  if (count % 512) {
    s.print(`${count} is not a sector-aligned value for 'count'\n`);
    return false;
  }
  return true;
}

/** The lengths of a vectored command (qemu-io's create_iovec); undefined after printing the error. */
function vectorLengths(s: IoSession, words: string[]): number | undefined {
  let total = 0;
  for (const w of words) {
    const len = cvtnum(s, w);
    if (len === undefined) return undefined;
    if (len > REQUEST_MAX_BYTES) {
      s.print(`Argument '${w}' exceeds maximum size ${REQUEST_MAX_BYTES}\n`);
      return undefined;
    }
    if (total > REQUEST_MAX_BYTES - len) {
      s.print(`The total number of bytes exceed the maximum size ${REQUEST_MAX_BYTES}\n`);
      return undefined;
    }
    total += len;
  }
  return total;
}

const read: IoCommand = {
  name: "read",
  altnames: ["r"],
  args: "[-abCqv] [-P pattern [-s off] [-l len]] off len",
  oneline: "reads a number of bytes at a specified offset",
  flags: "bCl:pP:qs:v",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  async run(s, flags, operands) {
    const byte = patternFlag(s, flags);
    if (byte === null) return false;
    let so = 0;
    let sl: number | undefined;
    if (flags.has("s")) {
      const v = cvtnum(s, flags.get("s") as string);
      if (v === undefined) return false;
      so = v;
    }
    if (flags.has("l")) {
      sl = cvtnum(s, flags.get("l") as string);
      if (sl === undefined) return false;
    }
    if (operands.length !== 2) return usage(s, read);
    const oc = offsetAndCount(s, operands, REQUEST_MAX_BYTES, "");
    if (!oc) return false;
    const [offset, count] = oc;
    if (byte === undefined && (flags.has("s") || flags.has("l"))) return usage(s, read);
    sl ??= count - so;
    if (sl < 0 || sl + so > count) {
      s.print("pattern verification range exceeds end of read data\n");
      return false;
    }
    if (flags.has("b") && !sectorAligned(s, offset, count)) return false;
    const buf = ioBuffer(count);
    const node = s.node!;
    return await timedRequest(s, flags, {
      what: "read",
      op: "read",
      offset,
      count,
      // -b: the VM state area (qcow2 keeps it after the guest data).
      call: () => (flags.has("b") ? node.loadVmstate(offset, buf) : node.pread(offset, buf)),
      verify: () => verifyPattern(s, buf.subarray(so, so + sl), byte, offset + so),
      dump: () => dumpBuffer(buf, offset),
    });
  },
};

/** Fills a buffer from a file, repeating its content (qemu-io's `write -s`); undefined after printing the error. */
async function fromFile(s: IoSession, path: string, count: number): Promise<Uint8Array | undefined> {
  let content: Uint8Array;
  try {
    content = await Deno.readFile(path);
  } catch (e) {
    s.io.stderr(`${path}: ${e instanceof Deno.errors.NotFound ? "No such file or directory" : (e as Error).message}\n`);
    return undefined;
  }
  if (!content.length) {
    s.io.stderr(`${path}: file is empty\n`);
    return undefined;
  }
  const buf = new Uint8Array(count);
  for (let at = 0; at < count; at += content.length) buf.set(content.subarray(0, Math.min(content.length, count - at)), at);
  return buf;
}

const write: IoCommand = {
  name: "write",
  altnames: ["w"],
  args: "[-bcCfnquz] [-P pattern | -s source_file] off len",
  oneline: "writes a number of bytes at a specified offset",
  flags: "bcCfnpP:qs:uz",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  write: true,
  async run(s, flags, operands) {
    const byte = patternFlag(s, flags);
    if (byte === null) return false;
    if (operands.length !== 2) return usage(s, write);
    const zero = flags.has("z");
    const fua = flags.has("f");
    if (flags.has("b") && zero) {
      s.print("-b and -z cannot be specified at the same time\n");
      return false;
    }
    if (fua && (flags.has("b") || flags.has("c"))) {
      s.print("-f and -b or -c cannot be specified at the same time\n");
      return false;
    }
    if (flags.has("n") && !zero) {
      s.print("-n requires -z to be specified\n");
      return false;
    }
    if (flags.has("u") && !zero) {
      s.print("-u requires -z to be specified\n");
      return false;
    }
    if (Number(zero) + Number(flags.has("P")) + Number(flags.has("s")) > 1) {
      s.print("Only one of -z, -P, and -s can be specified at the same time\n");
      return false;
    }
    const oc = offsetAndCount(s, operands, flags.has("n") ? Number.MAX_SAFE_INTEGER : REQUEST_MAX_BYTES, " without -n");
    if (!oc) return false;
    const [offset, count] = oc;
    if ((flags.has("b") || flags.has("c")) && !sectorAligned(s, offset, count)) return false;
    let data: Uint8Array | undefined;
    if (!zero) {
      const src = flags.get("s");
      data = typeof src === "string" ? await fromFile(s, src, count) : new Uint8Array(count).fill(byte ?? 0xcd);
      if (!data) return false;
    }
    const node = s.node!;
    return await timedRequest(s, flags, {
      what: "write",
      op: "wrote",
      offset,
      count,
      call: () => {
        if (flags.has("b")) return node.saveVmstate(offset, data!);
        if (zero) return node.pwriteZeroes(offset, count, { mayUnmap: flags.has("u"), noFallback: flags.has("n"), fua });
        return node.pwrite(offset, data!, { fua, compressed: flags.has("c") });
      },
    });
  },
};

const readv: IoCommand = {
  name: "readv",
  args: "[-Cqv] [-P pattern] off len [len..]",
  oneline: "reads a number of bytes at a specified offset",
  flags: "CP:qv",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  async run(s, flags, operands) {
    const byte = patternFlag(s, flags);
    if (byte === null) return false;
    if (operands.length < 2) return usage(s, readv);
    const offset = cvtnum(s, operands[0]);
    if (offset === undefined) return false;
    const total = vectorLengths(s, operands.slice(1));
    if (total === undefined) return false;
    const buf = ioBuffer(total);
    const node = s.node!;
    return await timedRequest(s, flags, {
      what: "readv",
      op: "read",
      offset,
      count: total,
      call: () => node.pread(offset, buf),
      verify: () => verifyPattern(s, buf, byte, offset),
      dump: () => dumpBuffer(buf, offset),
    });
  },
};

const writev: IoCommand = {
  name: "writev",
  args: "[-Cfq] [-P pattern] off len [len..]",
  oneline: "writes a number of bytes at a specified offset",
  flags: "CfqP:",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  write: true,
  async run(s, flags, operands) {
    const byte = patternFlag(s, flags);
    if (byte === null) return false;
    if (operands.length < 2) return usage(s, writev);
    const offset = cvtnum(s, operands[0]);
    if (offset === undefined) return false;
    const total = vectorLengths(s, operands.slice(1));
    if (total === undefined) return false;
    const node = s.node!;
    const data = new Uint8Array(total).fill(byte ?? 0xcd);
    return await timedRequest(s, flags, {
      what: "writev",
      op: "wrote",
      offset,
      count: total,
      call: () => node.pwrite(offset, data, { fua: flags.has("f") }),
    });
  },
};

/**
 * Starts a request without waiting; its report is printed when it
 * completes. As in qemu-io, the command has succeeded once the request is
 * submitted: a later I/O error or pattern mismatch is printed but does not
 * change the exit code.
 */
function startAio(s: IoSession, work: () => Promise<unknown>): void {
  const p: Promise<void> = work().then(() => {}, (e) => s.print(`${strerror(e)}\n`)).finally(() => s.pending.delete(p));
  s.pending.add(p);
}

const aioRead: IoCommand = {
  name: "aio_read",
  args: "[-Ciqv] [-P pattern] off len [len..]",
  oneline: "asynchronously reads a number of bytes",
  flags: "CP:iqv",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  run(s, flags, operands) {
    const byte = patternFlag(s, flags);
    if (byte === null) return Promise.resolve(false);
    if (flags.has("i")) {
      s.print("injecting invalid read request\n");
      return Promise.resolve(true);
    }
    if (operands.length < 2) return Promise.resolve(usage(s, aioRead));
    const offset = cvtnum(s, operands[0]);
    if (offset === undefined) return Promise.resolve(false);
    const total = vectorLengths(s, operands.slice(1));
    if (total === undefined) return Promise.resolve(false);
    const node = s.node!;
    startAio(s, async () => {
      const buf = ioBuffer(total);
      return await timedRequest(s, flags, {
        what: "readv",
        op: "read",
        offset,
        count: total,
        aio: true,
        call: () => node.pread(offset, buf),
        verify: () => verifyPattern(s, buf, byte, offset),
        dump: () => dumpBuffer(buf, offset),
      });
    });
    return Promise.resolve(true);
  },
};

const aioWrite: IoCommand = {
  name: "aio_write",
  args: "[-Cfiquz] [-P pattern] off len [len..]",
  oneline: "asynchronously writes a number of bytes",
  flags: "CfiqP:uz",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  write: true,
  run(s, flags, operands) {
    const byte = patternFlag(s, flags);
    if (byte === null) return Promise.resolve(false);
    if (flags.has("i")) {
      s.print("injecting invalid write request\n");
      return Promise.resolve(true);
    }
    if (operands.length < 2) return Promise.resolve(usage(s, aioWrite));
    const zero = flags.has("z");
    if (zero && operands.length !== 2) {
      s.print("-z supports only a single length parameter\n");
      return Promise.resolve(false);
    }
    if (flags.has("u") && !zero) {
      s.print("-u requires -z to be specified\n");
      return Promise.resolve(false);
    }
    if (zero && byte !== undefined) {
      s.print("-z and -P cannot be specified at the same time\n");
      return Promise.resolve(false);
    }
    const offset = cvtnum(s, operands[0]);
    if (offset === undefined) return Promise.resolve(false);
    const total = zero ? cvtnum(s, operands[1]) : vectorLengths(s, operands.slice(1));
    if (total === undefined) return Promise.resolve(false);
    const node = s.node!;
    const data = zero ? undefined : new Uint8Array(total).fill(byte ?? 0xcd);
    startAio(s, () =>
      timedRequest(s, flags, {
        what: "aio_write",
        op: "wrote",
        offset,
        count: total,
        aio: true,
        call: () =>
          data
            ? node.pwrite(offset, data, { fua: flags.has("f") })
            : node.pwriteZeroes(offset, total, { mayUnmap: flags.has("u"), fua: flags.has("f") }),
      }));
    return Promise.resolve(true);
  },
};

const aioFlush: IoCommand = {
  name: "aio_flush",
  args: "",
  oneline: "completes all outstanding aio requests",
  argmin: 0,
  argmax: 0,
  needsFile: true,
  async run(s) {
    await s.drain();
    return true;
  },
};

/** The data commands. */
export const RW_COMMANDS: readonly IoCommand[] = [read, write, readv, writev, aioRead, aioWrite, aioFlush];
