/**
 * qemu-img amend's luks options (`state`, `keyslot`, `new-secret`,
 * `old-secret`, `iter-time`) applied to a {@linkcode LuksVolume}: the
 * options are checked, the secrets they name resolved to passphrases (and
 * zeroed afterwards), and the key slots changed. Standalone luks images
 * take the options as they are; qcow2 takes them with an `encrypt.` prefix.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { optInt, optString } from "../../core/options.ts";
import type { LuksVolume } from "./luks.ts";
import { passphrase } from "./passphrase.ts";

/** Amend options of luks key slots. */
export const LUKS_AMEND_OPTIONS: readonly string[] = ["state", "keyslot", "new-secret", "old-secret", "iter-time"];

/**
 * Applies amend `options` (without prefix) to `volume`; `unlockSecret` is
 * the secret id the image was opened with (adding a slot needs the master
 * key), `force` is qemu-img's `--force`.
 *
 * @example
 * ```ts ignore
 * await amendLuks(volume, { state: "active", "new-secret": "sec1" }, { unlockSecret: "sec0" });
 * ```
 */
export async function amendLuks(
  volume: LuksVolume,
  options: Record<string, unknown>,
  opts: { unlockSecret?: string; force?: boolean; prefix?: string },
): Promise<void> {
  const p = opts.prefix ?? "";
  for (const k of Object.keys(options)) {
    if (!LUKS_AMEND_OPTIONS.includes(k)) {
      throw new BlockError(
        "EINVAL",
        `Invalid parameter '${p}${k}' (luks amend options: ${LUKS_AMEND_OPTIONS.map((o) => p + o).join(", ")})`,
      );
    }
  }
  const state = optString(options, "state", "luks");
  if (state !== "active" && state !== "inactive") {
    throw new BlockError(
      "EINVAL",
      state === undefined ? `Parameter '${p}state' is missing` : `Parameter '${p}state' does not accept value '${state}'`,
    );
  }
  const keyslot = optInt(options, "keyslot", "luks");
  const iterTime = optInt(options, "iter-time", "luks");
  if (iterTime === 0) throw new BlockError("EINVAL", `Invalid value '0' for option '${p}iter-time': expected a positive integer`);
  const secrets: Uint8Array[] = [];
  const pass = (key: string) => {
    const id = optString(options, key, "luks");
    if (id === undefined) return undefined;
    const s = passphrase(id, p + key);
    secrets.push(s);
    return s;
  };
  try {
    const newPassword = pass("new-secret");
    const oldPassword = pass("old-secret");
    const unlockPassword = state === "active" && opts.unlockSecret ? passphrase(opts.unlockSecret, `${p}key-secret`) : undefined;
    if (unlockPassword) secrets.push(unlockPassword);
    await volume.amend({ state, keyslot, newPassword, oldPassword, unlockPassword, iterTime, force: opts.force });
  } finally {
    for (const s of secrets) s.fill(0);
  }
}
