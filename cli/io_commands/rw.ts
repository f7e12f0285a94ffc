/**
 * qemu-io's data commands: read, write, readv, writev, aio_read, aio_write
 * and aio_flush, with qemu-io's flags and output.
 *
 * @module
 */

import {
  cvtnum,
  dumpBuffer,
  failed,
  type IoCommand,
  type IoFlags,
  type IoSession,
  parsePattern,
  report,
  strerror,
  usage,
} from "./_session.ts";

function pattern(s: IoSession, flags: IoFlags, def: number): number | undefined {
  const p = flags.get("P");
  return typeof p === "string" ? parsePattern(s, p) : def;
}

function verify(s: IoSession, buf: Uint8Array, offset: number, byte: number, at = 0, count = buf.length): boolean {
  for (let i = at; i < at + count; i++) {
    if (buf[i] !== byte) {
      s.print(`Pattern verification failed at offset ${offset + at}, ${count} bytes\n`);
      return false;
    }
  }
  return true;
}

/** qemu-io's check for -b and -c requests: offset and count are whole 512-byte sectors. */
function sectorAligned(s: IoSession, offset: number, count: number): boolean {
  if (offset % 512 !== 0) s.print(`${offset} is not a sector-aligned value for 'offset'\n`);
  else if (count % 512 !== 0) s.print(`${count} is not a sector-aligned value for 'count'\n`);
  else return true;
  return false;
}

function nums(s: IoSession, words: string[]): number[] | undefined {
  const out: number[] = [];
  for (const w of words) {
    const n = cvtnum(s, w);
    if (n === undefined) return undefined;
    out.push(n);
  }
  return out;
}

const read: IoCommand = {
  name: "read",
  altnames: ["r"],
  args: "[-abCqv] [-P pattern [-s off] [-l len]] off len",
  oneline: "reads a number of bytes at a specified offset",
  flags: "bCqvP:s:l:",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  async run(s, flags, operands) {
    if (operands.length !== 2) return usage(s, read);
    const n = nums(s, operands);
    if (!n) return false;
    const [offset, count] = n;
    if (flags.has("b") && !sectorAligned(s, offset, count)) return false;
    const buf = new Uint8Array(count);
    const t0 = performance.now();
    try {
      // -b: the VM state area (qcow2 keeps it after the guest data).
      if (flags.has("b")) await s.node!.loadVmstate(offset, buf);
      else await s.node!.pread(offset, buf);
    } catch (e) {
      failed(s, "read", e);
      return false;
    }
    const ms = performance.now() - t0;
    let ok = true;
    if (flags.has("P")) {
      const byte = pattern(s, flags, 0);
      if (byte === undefined) return false;
      const so = flags.has("s") ? cvtnum(s, flags.get("s") as string) : 0;
      const sl = flags.has("l") ? cvtnum(s, flags.get("l") as string) : count - (so ?? 0);
      if (so === undefined || sl === undefined) return false;
      if (so + sl > count) {
        s.print(`pattern verification range exceeds end of read data\n`);
        return false;
      }
      ok = verify(s, buf, offset, byte, so, sl);
    }
    if (flags.has("q")) return ok;
    if (flags.has("v")) s.print(dumpBuffer(buf, offset));
    s.print(report("read", ms, offset, count, count, 1, flags.has("C")));
    return ok;
  },
};

const write: IoCommand = {
  name: "write",
  altnames: ["w"],
  args: "[-bcCfnquz] [-P pattern] off len",
  oneline: "writes a number of bytes at a specified offset",
  flags: "bcCfnquzP:",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  async run(s, flags, operands) {
    if (operands.length !== 2) return usage(s, write);
    const n = nums(s, operands);
    if (!n) return false;
    const [offset, count] = n;
    const zero = flags.has("z");
    if (flags.has("b") && zero) {
      s.print("-b and -z cannot be specified at the same time\n");
      return false;
    }
    if (flags.has("f") && (flags.has("b") || flags.has("c"))) {
      s.print("-f and -b or -c cannot be specified at the same time\n");
      return false;
    }
    if (zero && flags.has("P")) {
      s.print("-z and -P cannot be specified at the same time\n");
      return false;
    }
    if (!zero && (flags.has("u") || flags.has("n"))) {
      s.print(`-${flags.has("u") ? "u" : "n"} requires -z to be specified\n`);
      return false;
    }
    if (flags.has("c") && (zero || flags.has("f"))) {
      s.print(`-c cannot be combined with ${zero ? "-z" : "-f"}\n`);
      return false;
    }
    const byte = pattern(s, flags, 0xcd);
    if (byte === undefined) return false;
    if ((flags.has("b") || flags.has("c")) && !sectorAligned(s, offset, count)) return false;
    const node = s.node!;
    const t0 = performance.now();
    try {
      if (flags.has("b")) {
        await node.saveVmstate(offset, new Uint8Array(count).fill(byte));
      } else if (zero) {
        await node.pwriteZeroes(offset, count, { mayUnmap: flags.has("u"), noFallback: flags.has("n"), fua: flags.has("f") });
      } else {
        const data = new Uint8Array(count).fill(byte);
        await node.pwrite(offset, data, { fua: flags.has("f"), compressed: flags.has("c") });
      }
    } catch (e) {
      failed(s, "write", e);
      return false;
    }
    if (flags.has("q")) return true;
    s.print(report("wrote", performance.now() - t0, offset, count, count, 1, flags.has("C")));
    return true;
  },
};

function vectorArgs(s: IoSession, operands: string[]): { offset: number; lens: number[]; total: number } | undefined {
  const n = nums(s, operands);
  if (!n) return undefined;
  const [offset, ...lens] = n;
  return { offset, lens, total: lens.reduce((a, b) => a + b, 0) };
}

const readv: IoCommand = {
  name: "readv",
  args: "[-Cqv] [-P pattern] off len [len..]",
  oneline: "reads a number of bytes at a specified offset",
  flags: "CqvP:",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  async run(s, flags, operands) {
    const v = vectorArgs(s, operands);
    if (!v) return false;
    const buf = new Uint8Array(v.total);
    const t0 = performance.now();
    try {
      // One request per vector element, back to back (a scatter list).
      let at = 0;
      for (const len of v.lens) {
        await s.node!.pread(v.offset + at, buf.subarray(at, at + len));
        at += len;
      }
    } catch (e) {
      failed(s, "readv", e);
      return false;
    }
    const ms = performance.now() - t0;
    let ok = true;
    if (flags.has("P")) {
      const byte = pattern(s, flags, 0);
      if (byte === undefined) return false;
      ok = verify(s, buf, v.offset, byte);
    }
    if (flags.has("q")) return ok;
    if (flags.has("v")) s.print(dumpBuffer(buf, v.offset));
    s.print(report("read", ms, v.offset, v.total, v.total, 1, flags.has("C")));
    return ok;
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
  async run(s, flags, operands) {
    const v = vectorArgs(s, operands);
    if (!v) return false;
    const byte = pattern(s, flags, 0xcd);
    if (byte === undefined) return false;
    const t0 = performance.now();
    try {
      await s.node!.pwrite(v.offset, new Uint8Array(v.total).fill(byte), { fua: flags.has("f") });
    } catch (e) {
      failed(s, "writev", e);
      return false;
    }
    if (flags.has("q")) return true;
    s.print(report("wrote", performance.now() - t0, v.offset, v.total, v.total, 1, flags.has("C")));
    return true;
  },
};

/** Starts a request without waiting; its report is printed when it completes. */
function startAio(s: IoSession, work: () => Promise<void>): void {
  const p: Promise<void> = work().catch((e) => {
    s.failed = true;
    s.print(`${strerror(e)}\n`);
  }).finally(() => s.pending.delete(p));
  s.pending.add(p);
}

const aioRead: IoCommand = {
  name: "aio_read",
  args: "[-Ciqv] [-P pattern] off len [len..]",
  oneline: "asynchronously reads a number of bytes",
  flags: "CiqvP:",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  run(s, flags, operands) {
    const v = vectorArgs(s, operands);
    if (!v) return Promise.resolve(false);
    const byte = flags.has("P") ? pattern(s, flags, 0) : undefined;
    if (flags.has("P") && byte === undefined) return Promise.resolve(false);
    const node = s.node!;
    startAio(s, async () => {
      const buf = new Uint8Array(v.total);
      const t0 = performance.now();
      try {
        await node.pread(v.offset, buf);
      } catch (e) {
        s.failed = true;
        failed(s, "readv", e);
        return;
      }
      const ms = performance.now() - t0;
      if (byte !== undefined && !verify(s, buf, v.offset, byte)) s.failed = true;
      if (flags.has("q")) return;
      if (flags.has("v")) s.print(dumpBuffer(buf, v.offset));
      s.print(report("read", ms, v.offset, v.total, v.total, 1, flags.has("C")));
    });
    return Promise.resolve(true);
  },
};

const aioWrite: IoCommand = {
  name: "aio_write",
  args: "[-Cfiquz] [-P pattern] off len [len..]",
  oneline: "asynchronously writes a number of bytes",
  flags: "CfiquzP:",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  run(s, flags, operands) {
    const v = vectorArgs(s, operands);
    if (!v) return Promise.resolve(false);
    if (flags.has("z") && flags.has("P")) {
      s.print("-z and -P cannot be specified at the same time\n");
      return Promise.resolve(false);
    }
    const byte = pattern(s, flags, 0xcd);
    if (byte === undefined) return Promise.resolve(false);
    const node = s.node!;
    startAio(s, async () => {
      const t0 = performance.now();
      try {
        if (flags.has("z")) await node.pwriteZeroes(v.offset, v.total, { mayUnmap: flags.has("u"), fua: flags.has("f") });
        else await node.pwrite(v.offset, new Uint8Array(v.total).fill(byte), { fua: flags.has("f") });
      } catch (e) {
        s.failed = true;
        failed(s, "aio_write", e);
        return;
      }
      if (flags.has("q")) return;
      s.print(report("wrote", performance.now() - t0, v.offset, v.total, v.total, 1, flags.has("C")));
    });
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
