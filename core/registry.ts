/**
 * The driver registry and format probing. Built-in drivers register
 * themselves when imported; user code plugs in its own driver with
 * {@linkcode registerDriver}.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { BlockDriver } from "./node.ts";

const drivers = new Map<string, BlockDriver>();
/** Formats QEMU probes that have no driver here: name to probe (see drivers/foreign.ts). */
const unsupported = new Map<string, (head: Uint8Array, filename?: string) => number>();

/**
 * Adds a driver to the registry (replacing one of the same name). The
 * returned handle takes it out again when disposed, putting back the driver
 * it replaced, so a test or a plugin host can scope a registration with
 * `using`. A built-in that never disposes the handle stays registered.
 *
 * @example
 * ```ts
 * import { driverNames, registerDriver } from "@blkgraph/blkgraph";
 * {
 *   using _ = registerDriver({
 *     name: "zeros-demo",
 *     kind: "protocol",
 *     open: () => Promise.resolve({ getLength: () => 1 << 30, pread: (_o, buf) => void buf.fill(0) }),
 *   });
 *   console.log(driverNames().includes("zeros-demo")); // true
 * }
 * console.log(driverNames().includes("zeros-demo")); // false
 * ```
 */
export function registerDriver(driver: BlockDriver): Disposable {
  const replaced = drivers.get(driver.name);
  drivers.set(driver.name, driver);
  return {
    [Symbol.dispose]() {
      if (drivers.get(driver.name) !== driver) return; // replaced since, or already disposed
      if (replaced) drivers.set(driver.name, replaced);
      else drivers.delete(driver.name);
    },
  };
}

/**
 * Records a format that is recognised but not implemented: probing an image
 * of it (or asking for it by name) fails with ENOTSUP "Image format 'NAME'
 * is not supported" instead of reading it as raw. A driver registered under
 * the same name takes precedence.
 *
 * @example
 * ```ts
 * import { registerUnsupportedFormat } from "./registry.ts";
 * registerUnsupportedFormat("acme", (head) => (new TextDecoder().decode(head.subarray(0, 4)) === "ACME" ? 100 : 0));
 * ```
 */
export function registerUnsupportedFormat(name: string, probe: (head: Uint8Array, filename?: string) => number): void {
  unsupported.set(name, probe);
}

function notSupported(name: string): BlockError {
  return new BlockError("ENOTSUP", `Image format '${name}' is not supported`);
}

/**
 * Looks up a driver by name; unknown names are a clear EINVAL.
 *
 * @example
 * ```ts
 * import { getDriver } from "@blkgraph/blkgraph";
 * console.log(getDriver("qcow2").kind); // format
 * ```
 */
export function getDriver(name: string): BlockDriver {
  const d = drivers.get(name);
  if (!d && unsupported.has(name)) throw notSupported(name);
  // QEMU's words, which scripts match; driverNames() lists the known ones.
  if (!d) throw new BlockError("EINVAL", `Unknown driver '${name}'`);
  return d;
}

/**
 * Names of all registered drivers.
 *
 * @example
 * ```ts
 * import { driverNames } from "@blkgraph/blkgraph";
 * console.log(driverNames().includes("file")); // true
 * ```
 */
export function driverNames(): string[] {
  return [...drivers.keys()].sort();
}

/** The driver whose filename prefix (`blkdebug:`, `nbd://`) `filename` starts with. */
export function driverForPrefix(filename: string): BlockDriver | undefined {
  const m = /^([a-z][a-z0-9+-]*):/.exec(filename);
  if (!m) return undefined;
  for (const d of drivers.values()) {
    if (d.protocolPrefix === m[1] || (d.protocolPrefix && m[1].startsWith(d.protocolPrefix + "+"))) return d;
  }
  return undefined;
}

/**
 * The protocol driver for a plain filename (QEMU's find_hdev_driver): the
 * registered driver whose `probeDevice` scores it highest, else `file`.
 *
 * @example
 * ```ts
 * import { protocolForFilename } from "@blkgraph/blkgraph";
 * console.log(protocolForFilename("/dev/null"), protocolForFilename("disk.img")); // host_device file
 * ```
 */
export function protocolForFilename(filename: string): string {
  let best = "file";
  let score = 0;
  for (const d of drivers.values()) {
    const s = d.probeDevice?.(filename) ?? 0;
    if (s > score) [best, score] = [d.name, s];
  }
  return best;
}

/** Bytes a prober looks at. */
export const PROBE_BYTES = 2048;

/**
 * Guesses the format of an image from its first bytes; `raw` when no format
 * claims it or the image is empty (QEMU's `bdrv_probe_all`). A format that
 * is recognised but not implemented (vmdk, vhdx, ...) is an ENOTSUP error:
 * such an image is never read as raw.
 *
 * @example
 * ```ts
 * import { createImage, probeFormat } from "@blkgraph/blkgraph";
 * const path = await Deno.makeTempFile({ suffix: ".qcow2" });
 * await createImage(path, "qcow2", 1 << 20);
 * const head = (await Deno.readFile(path)).subarray(0, 2048);
 * console.log(probeFormat(head).name, probeFormat(new Uint8Array(512)).name); // qcow2 raw
 * await Deno.remove(path);
 * ```
 */
export function probeFormat(head: Uint8Array, filename?: string): BlockDriver {
  if (head.length === 0) return getDriver("raw");
  let best: BlockDriver | undefined;
  let bestScore = 0;
  for (const d of drivers.values()) {
    if (d.kind !== "format" || !d.probe) continue;
    const score = d.probe(head, filename);
    if (score > bestScore) {
      bestScore = score;
      best = d;
    }
  }
  let foreign: string | undefined;
  for (const [name, probe] of unsupported) {
    if (drivers.has(name)) continue;
    const score = probe(head, filename);
    if (score > bestScore) {
      bestScore = score;
      foreign = name;
    }
  }
  if (foreign !== undefined) throw notSupported(foreign);
  return best ?? getDriver("raw");
}
