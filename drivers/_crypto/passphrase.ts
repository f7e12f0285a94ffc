/**
 * Passphrases from QEMU secret objects, as QEMU's crypto code uses them.
 *
 * @module
 */

import { BlockError } from "../../core/errors.ts";
import { getSecret } from "../../core/secrets.ts";

/**
 * The secret `id`'s bytes as QEMU uses a passphrase: valid UTF-8, up to its
 * first NUL (QEMU passes it on as a C string). `option` names the option
 * that referred to the secret, for messages. Zero the result after use.
 *
 * @example
 * ```ts
 * import { defineSecret, removeSecret } from "@blkgraph/blkgraph";
 * import { passphrase } from "./passphrase.ts";
 * defineSecret("pp-doc", { data: "hunter2" });
 * const p = passphrase("pp-doc", "key-secret");
 * console.log(p.length); // 7
 * p.fill(0);
 * removeSecret("pp-doc");
 * ```
 */
export function passphrase(id: string, option: string): Uint8Array {
  const raw = getSecret(id, option);
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    raw.fill(0);
    throw new BlockError("EINVAL", `Data from secret ${id} is not valid UTF-8`);
  }
  const nul = raw.indexOf(0);
  if (nul < 0) return raw;
  const cut = raw.slice(0, nul);
  raw.fill(0);
  return cut;
}
