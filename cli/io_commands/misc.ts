/**
 * qemu-io's other commands: flush, discard, alloc, map, length, truncate,
 * info, open, close, help, quit and sleep.
 *
 * @module
 */

import { formatNode, openImage } from "../_common.ts";
import { startTrace } from "../_trace.ts";
import { dumpHuman } from "../info.ts";
import { chainStatus } from "../_map_extents.ts";
import { cvtstr } from "../_common.ts";
import { cvtnum, failed, type IoCommand, report, strerror, usage, usageLine } from "./_session.ts";

const flush: IoCommand = {
  name: "flush",
  altnames: ["f"],
  args: "",
  oneline: "flush all in-core file state to disk",
  argmin: 0,
  argmax: 0,
  needsFile: true,
  async run(s) {
    try {
      await s.node!.flush();
    } catch (e) {
      failed(s, "flush", e);
      return false;
    }
    return true;
  },
};

const discard: IoCommand = {
  name: "discard",
  altnames: ["d"],
  args: "[-Cq] off len",
  oneline: "discards a number of bytes at a specified offset",
  flags: "Cq",
  argmin: 2,
  argmax: -1,
  needsFile: true,
  async run(s, flags, operands) {
    if (operands.length !== 2) return usage(s, discard);
    const offset = cvtnum(s, operands[0]);
    const count = offset === undefined ? undefined : cvtnum(s, operands[1]);
    if (offset === undefined || count === undefined) return false;
    const t0 = performance.now();
    try {
      await s.node!.pdiscard(offset, count);
    } catch (e) {
      failed(s, "discard", e);
      return false;
    }
    if (!flags.has("q")) s.print(report("discard", performance.now() - t0, offset, count, count, 1, flags.has("C")));
    return true;
  },
};

const alloc: IoCommand = {
  name: "alloc",
  args: "offset [count]",
  oneline: "checks if offset is allocated in the file",
  argmin: 1,
  argmax: 2,
  needsFile: true,
  async run(s, _flags, operands) {
    const offset = cvtnum(s, operands[0]);
    const count = operands[1] === undefined ? 512 : cvtnum(s, operands[1]);
    if (offset === undefined || count === undefined) return false;
    const node = formatNode(s.node!);
    let allocated = 0;
    try {
      for (let off = offset, end = Math.min(offset + count, node.length); off < end;) {
        const st = await chainStatus(node, off, end - off);
        if (st.present) allocated += st.length;
        off += st.length;
      }
    } catch (e) {
      failed(s, "is_allocated", e);
      return false;
    }
    s.print(`${allocated}/${count} bytes allocated at offset ${cvtstr(offset)}\n`);
    return true;
  },
};

const map: IoCommand = {
  name: "map",
  args: "",
  oneline: "prints the allocated areas of a file",
  argmin: 0,
  argmax: 0,
  needsFile: true,
  async run(s) {
    const node = formatNode(s.node!);
    const length = node.length;
    let start = 0;
    let cur: boolean | undefined;
    const line = (from: number, to: number, present: boolean) =>
      s.print(
        `${cvtstr(to - from)} (0x${(to - from).toString(16)}) bytes ${present ? "   " : "not"} allocated at offset ${cvtstr(from)} (0x${
          from.toString(16)
        })\n`,
      );
    for (let off = 0; off < length;) {
      const st = await chainStatus(node, off, length - off);
      if (cur !== undefined && st.present !== cur) {
        line(start, off, cur);
        start = off;
      }
      cur = st.present;
      off += st.length;
    }
    if (cur !== undefined) line(start, length, cur);
    return true;
  },
};

const length: IoCommand = {
  name: "length",
  altnames: ["l"],
  args: "",
  oneline: "gets the length of the current file",
  argmin: 0,
  argmax: 0,
  needsFile: true,
  run(s) {
    s.print(`${cvtstr(s.node!.length)}\n`);
    return Promise.resolve(true);
  },
};

const truncate: IoCommand = {
  name: "truncate",
  altnames: ["t"],
  args: "[-m prealloc_mode] off",
  oneline: "truncates the current file at the given offset",
  flags: "m:",
  argmin: 1,
  argmax: 3,
  needsFile: true,
  async run(s, flags, operands) {
    const size = cvtnum(s, operands[0] ?? "");
    if (size === undefined) return false;
    const m = flags.get("m");
    const prealloc = (typeof m === "string" ? m : "off") as "off" | "metadata" | "falloc" | "full";
    try {
      await s.node!.truncate(size, { prealloc });
    } catch (e) {
      s.print(`truncate: ${strerror(e)}\n`);
      return false;
    }
    return true;
  },
};

const info: IoCommand = {
  name: "info",
  altnames: ["i"],
  args: "",
  oneline: "prints information about the current file",
  argmin: 0,
  argmax: 0,
  needsFile: true,
  async run(s) {
    const node = formatNode(s.node!);
    const extra = await node.info();
    const cs = typeof extra["cluster-size"] === "number" ? extra["cluster-size"] : 0;
    let vmState = typeof extra["vm-state-offset"] === "number" ? extra["vm-state-offset"] : 0;
    if (!vmState && cs && node.driver.name === "qcow2") {
      const fs = extra["format-specific"] as { data?: Record<string, unknown> } | undefined;
      const l2Entry = fs?.data?.["extended-l2"] === true ? 16 : 8;
      const coverage = (cs / l2Entry) * cs;
      vmState = Math.ceil(node.length / coverage) * coverage;
    }
    s.print(`format name: ${node.driver.name}\ncluster size: ${cvtstr(cs)}\nvm state offset: ${cvtstr(vmState)}\n`);
    const fs = extra["format-specific"] as { data?: Record<string, unknown> } | undefined;
    if (fs?.data) {
      const lines = ["Format specific information:"];
      dumpHuman(fs.data, 1, lines);
      s.print(lines.join("\n") + "\n");
    }
    return true;
  },
};

const open: IoCommand = {
  name: "open",
  altnames: ["o"],
  args: "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
  oneline: "open the file specified by path",
  flags: "rsCnkUt:d:o:f:",
  argmin: 1,
  argmax: -1,
  async run(s, flags, operands) {
    if (s.node) {
      s.print("file open already, try 'help close'\n");
      return false;
    }
    const o = flags.get("o");
    let name = operands[0];
    if (typeof o === "string") name = name === undefined ? o : `${o},file.filename=${name}`;
    if (name === undefined) return usage(s, open);
    const f = flags.get("f");
    const t = flags.get("t");
    try {
      s.node = await openImage(name, {
        format: typeof f === "string" ? f : undefined,
        imageOpts: typeof o === "string",
        readOnly: flags.has("r"),
        cache: typeof t === "string" ? t : flags.has("n") ? "none" : undefined,
      });
    } catch (e) {
      s.print(`${(e as Error).message}\n`);
      return false;
    }
    s.filename = name;
    s.warnIfProbed(name);
    if (s.traceTarget !== undefined) s.trace = startTrace(s.node, { ...s.traceTarget, io: s.io });
    return true;
  },
};

const close: IoCommand = {
  name: "close",
  altnames: ["c"],
  args: "",
  oneline: "close the current open file",
  argmin: 0,
  argmax: 0,
  needsFile: true,
  async run(s) {
    await s.drain();
    s.trace?.stop();
    s.trace = undefined;
    const n = s.node!;
    s.node = undefined;
    await n.close();
    return true;
  },
};

const help: IoCommand = {
  name: "help",
  altnames: ["?"],
  args: "[command]",
  oneline: "help for one or all commands",
  argmin: 0,
  argmax: 1,
  run(s, _flags, operands) {
    if (operands.length) {
      const c = s.commands.find((c) => c.name === operands[0] || c.altnames?.includes(operands[0]));
      if (!c) {
        s.print(`command ${operands[0]} not found\n`);
        return Promise.resolve(false);
      }
      s.print(usageLine(c));
      return Promise.resolve(true);
    }
    for (const c of [...s.commands].sort((a, b) => a.name.localeCompare(b.name))) s.print(usageLine(c));
    s.print("\nUse 'help commandname' for extended help.\n");
    return Promise.resolve(true);
  },
};

const quit: IoCommand = {
  name: "quit",
  altnames: ["q"],
  args: "",
  oneline: "exit the program",
  argmin: 0,
  argmax: 0,
  run(s) {
    s.quit = true;
    return Promise.resolve(true);
  },
};

const sleep: IoCommand = {
  name: "sleep",
  args: "",
  oneline: "waits for the given value in milliseconds",
  argmin: 1,
  argmax: 1,
  async run(s, _flags, operands) {
    const ms = Number(operands[0]);
    if (!Number.isFinite(ms) || ms < 0) {
      s.print(`Invalid value: ${operands[0]}\n`);
      return false;
    }
    await new Promise((r) => setTimeout(r, ms));
    return true;
  },
};

/** The non-data commands. */
export const MISC_COMMANDS: readonly IoCommand[] = [flush, discard, alloc, map, length, truncate, info, open, close, help, quit, sleep];
