/**
 * qemu-io's other commands: flush, discard, alloc, map, length, truncate,
 * info, open, close, help, quit and sleep.
 *
 * @module
 */

import { isAioMode } from "../../core/options.ts";
import type { BlockNode } from "../../core/node.ts";
import { isPlainObject, parseDotted } from "../../core/spec.ts";
import { errorMessage, errorText, formatNode } from "../_common.ts";
import { dumpHuman } from "../info.ts";
import { cvtstr } from "../_common.ts";
import { cvtnum, failed, type IoCommand, REQUEST_MAX_BYTES, strerror, usage, usageLine } from "./_session.ts";
import { timedRequest } from "./_timed.ts";

const flush: IoCommand = {
  name: "flush",
  altnames: ["f"],
  args: "",
  oneline: "flush all in-core file state to disk",
  argmin: 0,
  argmax: 0,
  needsFile: true,
  async run(s) {
    // qemu-io's flush_f returns blk_flush()'s result and prints nothing: a failure shows only in the exit code.
    return await s.node!.flush().then(() => true, () => false);
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
  write: true,
  async run(s, flags, operands) {
    if (operands.length !== 2) return usage(s, discard);
    const offset = cvtnum(s, operands[0]);
    const count = offset === undefined ? undefined : cvtnum(s, operands[1]);
    if (offset === undefined || count === undefined) return false;
    if (count > REQUEST_MAX_BYTES) {
      s.print(`length cannot exceed ${REQUEST_MAX_BYTES}, given ${operands[1]}\n`);
      return false;
    }
    const node = s.node!;
    return await timedRequest(s, flags, { what: "discard", op: "discard", offset, count, call: () => node.pdiscard(offset, count) });
  },
};

/** `b` laid over `a`, nested option objects merged. */
function mergeOptions(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const prev = out[k];
    out[k] = isPlainObject(prev) && isPlainObject(v) ? mergeOptions(prev, v) : v;
  }
  return out;
}

/**
 * Whether `[offset, offset+bytes)` is allocated in the open image's own top
 * layer (QEMU's bdrv_is_allocated: data from a backing file is not), and for
 * how many bytes; 0 bytes at the end of the image.
 */
async function isAllocated(node: BlockNode, offset: number, bytes: number): Promise<{ allocated: boolean; n: number }> {
  if (offset >= node.length || bytes === 0) return { allocated: false, n: 0 };
  const st = await node.blockStatus(offset, Math.min(bytes, node.length - offset));
  return { allocated: st.allocated, n: st.length };
}

const alloc: IoCommand = {
  name: "alloc",
  altnames: ["a"],
  args: "offset [count]",
  oneline: "checks if offset is allocated in the file",
  argmin: 1,
  argmax: 2,
  needsFile: true,
  async run(s, _flags, operands) {
    const start = cvtnum(s, operands[0]);
    if (start === undefined) return false;
    let count = 512;
    if (operands.length === 2) {
      const c = cvtnum(s, operands[1]);
      if (c === undefined) return false;
      count = c;
    }
    let allocated = 0;
    try {
      for (let off = start, remaining = count; remaining > 0;) {
        const { allocated: a, n } = await isAllocated(s.node!, off, remaining);
        if (n === 0) {
          // The image ends here: count only what it has.
          count -= remaining;
          break;
        }
        if (a) allocated += n;
        off += n;
        remaining -= n;
      }
    } catch (e) {
      failed(s, "is_allocated", e);
      return false;
    }
    s.print(`${allocated}/${count} bytes allocated at offset ${cvtstr(start)}\n`);
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
    const node = s.node!;
    let bytes = node.length;
    let offset = 0;
    while (bytes > 0) {
      let first;
      try {
        first = await isAllocated(node, offset, bytes);
        let num = first.n;
        while (num > 0 && num < bytes) {
          const next = await isAllocated(node, offset + num, bytes - num);
          if (next.allocated !== first.allocated || next.n === 0) break;
          num += next.n;
        }
        if (num === 0) {
          s.report("Unexpected end of image");
          return false;
        }
        s.print(
          `${cvtstr(num)} (0x${num.toString(16)}) bytes ${first.allocated ? "    allocated" : "not allocated"} at offset ${
            cvtstr(offset)
          } (0x${offset.toString(16)})\n`,
        );
        offset += num;
        bytes -= num;
      } catch (e) {
        s.report(`Failed to get allocation status: ${strerror(e)}`);
        return false;
      }
    }
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
  write: true,
  async run(s, flags, operands) {
    const m = flags.get("m");
    const prealloc = typeof m === "string" ? m : "off";
    if (!["off", "metadata", "falloc", "full"].includes(prealloc)) {
      s.report(`Invalid preallocation mode '${prealloc}'`);
      return false;
    }
    const size = cvtnum(s, operands[0] ?? "");
    if (size === undefined) return false;
    try {
      // qemu-io's truncate is not exact (an NBD export may stay longer).
      await s.node!.truncate(size, { prealloc: prealloc as "off" | "metadata" | "falloc" | "full", exact: false });
    } catch (e) {
      s.report(errorText(e, s.io));
      return false;
    }
    return true;
  },
};

/** Drivers with QEMU's bdrv_get_info (those blkgraph has). */
const GET_INFO_DRIVERS = new Set(["file", "host_device", "host_cdrom", "qcow2", "rbd", "luks"]);

/**
 * Whether QEMU's bdrv_get_info answers for `top`: filters ask their child,
 * raw asks its file, and a driver without it (null-co, nbd, ...) fails, so
 * qemu-io's `info` stops after the format name (and the command fails).
 */
function hasGetInfo(top: BlockNode): boolean {
  let n: BlockNode | undefined = top;
  while (n && (n.driver.kind === "filter" || n.driver.name === "raw")) n = n.primaryChild;
  return !!n && GET_INFO_DRIVERS.has(n.driver.name);
}

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
    // qemu-io names the open node's driver (a filter or protocol too; a
    // protocol driver's name twice, as format and protocol name) and takes
    // the cluster size through filters, but format-specific data only from
    // the open node itself.
    const top = s.node!;
    s.print(`format name: ${top.driver.name}\n`);
    if (top.driver.protocolPrefix) s.print(`format name: ${top.driver.name}\n`);
    if (!hasGetInfo(top)) return false;
    s.print(`cluster size: ${cvtstr(cs)}\nvm state offset: ${cvtstr(vmState)}\n`);
    const fs = extra["format-specific"] as { data?: Record<string, unknown> } | undefined;
    if (fs?.data && top === node) {
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
  // -f (format) is blkgraph's addition; qemu-io's open probes or takes driver= from -o.
  flags: "snCro:ki:t:d:Uf:",
  argmin: 1,
  argmax: -1,
  async run(s, flags, operands) {
    const t = flags.get("t");
    const cache = typeof t === "string" ? t : flags.has("n") ? "none" : undefined;
    // Every -o is merged, later keys winning (qemu-io's QemuOpts list).
    let options: Record<string, unknown> | undefined;
    for (const [c, v] of flags.list) {
      if (c !== "o") continue;
      if (s.imageOpts) {
        s.print("--image-opts and 'open -o' are mutually exclusive\n");
        return false;
      }
      try {
        options = mergeOptions(options ?? {}, parseDotted(v as string));
      } catch (e) {
        s.report(errorMessage(e));
        return false;
      }
    }
    let name = operands[0];
    if (s.imageOpts && operands.length === 1) {
      try {
        options = parseDotted(operands[0]);
      } catch (e) {
        s.report(errorMessage(e));
        return false;
      }
      name = undefined as unknown as string;
      operands = [];
    }
    if (operands.length > 1) return usage(s, open);
    // Like qemu-io, the format given with -f applies to the image named on
    // the command line only; 'open' probes (or takes driver= from -o).
    const f = flags.get("f");
    // -k is Linux native AIO, -i names the mode (qemu-io's bdrv_parse_aio).
    const i = flags.get("i");
    if (typeof i === "string" && !isAioMode(i)) {
      s.report(`Invalid aio option: ${i}`);
      return false;
    }
    return await s.open(name, {
      format: typeof f === "string" ? f : undefined,
      readOnly: flags.has("r"),
      cache,
      aio: typeof i === "string" ? i : flags.has("k") ? "native" : undefined,
      snapshot: flags.has("s"),
      copyOnRead: flags.has("C"),
      forceShare: flags.has("U"),
      options,
    });
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
    await s.closeImage();
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
    for (const c of [...s.commands].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) s.print(usageLine(c));
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
    const t = operands[0];
    const m = /^[ \t\n]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(t);
    const ms = m
      ? (m[1] === "-" ? -1 : 1) * (/^0[xX]/.test(m[2]) ? parseInt(m[2], 16) : m[2].startsWith("0") ? parseInt(m[2], 8) : Number(m[2]))
      : NaN;
    if (!(ms >= 0) && t !== "") {
      s.print(`${t} is not a valid number\n`);
      return false;
    }
    await new Promise((r) => setTimeout(r, t === "" ? 0 : ms));
    return true;
  },
};

/** The non-data commands. */
export const MISC_COMMANDS: readonly IoCommand[] = [flush, discard, alloc, map, length, truncate, info, open, close, help, quit, sleep];
