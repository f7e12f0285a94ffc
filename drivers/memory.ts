/**
 * The `memory` protocol driver: an in-memory disk for tests and examples.
 * Options: `size` (bytes or a size with suffix, default 0; the node grows on
 * writes past the end like a file).
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import { checkKnownOptions, optSize } from "../core/options.ts";
import { registerDriver } from "../core/registry.ts";
import type { BlockDriver, DriverInstance } from "../core/node.ts";

/** Largest memory node (1 GiB per node keeps tests honest about memory). */
const MAX_MEMORY = 2 ** 32;

/** The in-memory protocol driver. */
export const memoryDriver: BlockDriver = {
  name: "memory",
  kind: "protocol",
  options: ["size", "filename"],
  open(ctx): Promise<DriverInstance> {
    // A memory node is scratch space that grows as it is written (up to its limit).
    ctx.node.allowBeyondEof = true;
    checkKnownOptions(ctx.options, memoryDriver.options!, "memory");
    const size = optSize(ctx.options, "size", "memory") ?? 0;
    let data = new Uint8Array(0);
    let length = 0;
    const grow = (need: number) => {
      if (need > MAX_MEMORY) {
        throw new BlockError("ENOSPC", `Cannot grow memory node '${ctx.node.name}' to ${need} bytes: limit is ${MAX_MEMORY}`, {
          node: ctx.node.name,
        });
      }
      if (need > data.length) {
        const next = new Uint8Array(Math.min(MAX_MEMORY, Math.max(need, data.length * 2, 65536)));
        next.set(data.subarray(0, length));
        data = next;
      }
    };
    grow(size);
    length = size;
    return Promise.resolve({
      getLength: () => length,
      pread(offset, buf) {
        buf.set(data.subarray(offset, offset + buf.length));
      },
      pwrite(offset, src) {
        const end = offset + src.length;
        if (end > data.length) grow(end);
        data.set(src, offset);
        if (end > length) length = end;
      },
      pwriteZeroes(offset, len) {
        const end = Math.min(offset + len, length);
        if (end > offset) data.fill(0, offset, end);
        if (offset + len > length) {
          grow(offset + len);
          length = offset + len;
        }
      },
      pdiscard(offset, len) {
        const end = Math.min(offset + len, length);
        if (end > offset) data.fill(0, offset, end);
      },
      flush() {},
      truncate(newLength) {
        if (newLength > length) grow(newLength);
        data.fill(0, Math.min(newLength, length), Math.max(newLength, length));
        length = newLength;
      },
      close() {
        data = new Uint8Array(0);
      },
    });
  },
};

registerDriver(memoryDriver);
