/**
 * The `null-co` and `null-aio` protocol drivers (QEMU's block/null.c): a
 * disk of `size` bytes (default 1 GiB) that stores nothing. Writes succeed
 * and are dropped; reads return zeros (QEMU leaves the buffer untouched
 * unless `read-zeroes=on`; zeros are one valid answer, and never leak
 * memory). Block status says "data" unless `read-zeroes` is on, as QEMU's
 * does. `latency-ns` is accepted and ignored. Filenames: `null-co://`,
 * `null-aio://`.
 *
 * @example
 * ```ts
 * import { open } from "../mod.ts";
 * await using n = await open("json:{'driver': 'null-co', 'size': 65536, 'read-zeroes': true}");
 * console.log(n.length, (await n.blockStatus(0, 65536)).zero); // 65536 true
 * ```
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import { checkKnownOptions, optBool, optInt, optSize } from "../core/options.ts";
import { registerDriver } from "../core/registry.ts";
import type { BlockDriver, DriverInstance, OpenContext } from "../core/node.ts";

const NULL_OPTIONS = ["size", "latency-ns", "read-zeroes", "filename"];

function nullDriver(name: "null-co" | "null-aio"): BlockDriver {
  return {
    name,
    kind: "protocol",
    protocolPrefix: name,
    options: NULL_OPTIONS,
    strongOptions: ["size", "read-zeroes"],
    // QEMU's null_refresh_filename: "null-co://" unless an option beyond these says more.
    exactFilename: ({ full }) =>
      Object.keys(full).every((k) => k === "driver" || k === "filename" || k === "latency-ns") ? `${name}://` : undefined,
    parseFilename(filename: string): Record<string, unknown> {
      // QEMU accepts exactly "null-co://" (no path).
      if (filename !== `${name}://`) {
        throw new BlockError("EINVAL", `The only allowed filename for this driver is '${name}://' (got '${filename}')`);
      }
      return {};
    },
    open(ctx: OpenContext): Promise<DriverInstance> {
      checkKnownOptions(ctx.options, NULL_OPTIONS, name);
      const size = optSize(ctx.options, "size", name) ?? 1 << 30;
      optInt(ctx.options, "latency-ns", name);
      const readZeroes = optBool(ctx.options, "read-zeroes", name) ?? false;
      const node = ctx.node;
      return Promise.resolve({
        getLength: () => size,
        pread(_offset, buf) {
          buf.fill(0);
        },
        pwrite() {},
        pwriteZeroes() {},
        pdiscard() {},
        flush() {},
        blockStatus(offset, length) {
          return { offset, length, data: !readZeroes, zero: readZeroes, allocated: true, depth: 0, hostOffset: offset, file: node };
        },
      });
    },
  };
}

/** The `null-co` driver. */
export const nullCoDriver: BlockDriver = nullDriver("null-co");
/** The `null-aio` driver (the same, as far as blkgraph is concerned). */
export const nullAioDriver: BlockDriver = nullDriver("null-aio");

registerDriver(nullCoDriver);
registerDriver(nullAioDriver);
