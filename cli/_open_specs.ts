/**
 * Option specs as `openImage` combines them: options laid over a json:
 * filename's, and qemu-img info's BDRV_O_NO_BACKING as `backing: null`.
 *
 * @module
 */

import { driverNames, getDriver } from "../core/registry.ts";
import { isPlainObject } from "../core/spec.ts";

/** `spec` with `backing: null` when its top node is (or is probed as) a format and no backing is given. */
export function withoutBacking(spec: Record<string, unknown>): Record<string, unknown> {
  if (spec.backing !== undefined) return spec;
  const name = spec.driver;
  if (name !== undefined && (typeof name !== "string" || !driverNames().includes(name) || getDriver(name).kind !== "format")) return spec;
  return { ...spec, backing: null };
}

/** `over` laid over `base`, nested option objects merged key by key. */
export function mergeSpecs(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isPlainObject(b) && isPlainObject(v) ? mergeSpecs(b, v) : v;
  }
  return out;
}
