/**
 * The LUKS volume and the cipher pool, imported when an encrypted image is
 * first opened or created. They pull in `node:crypto` (and the pool
 * `node:worker_threads`), which would cost every process that registers
 * the luks and qcow2 drivers tens of milliseconds at start-up; the drivers'
 * probes and option tables need neither.
 *
 * @module
 */

import type { LuksVolume } from "./luks.ts";
import type { CipherPool } from "./cipher_pool.ts";

/** The classes an encrypted image needs. */
export interface LuksModules {
  /** `_crypto/luks.ts`'s volume (header, key slots, unlock, create). */
  LuksVolume: typeof LuksVolume;
  /** `_crypto/cipher_pool.ts`'s pool of sector ciphers. */
  CipherPool: typeof CipherPool;
}

let loaded: Promise<LuksModules> | undefined;

/**
 * Imports the LUKS volume and cipher pool modules (once).
 *
 * @example
 * ```ts
 * import { loadLuks } from "./_lazy.ts";
 * const { LuksVolume } = await loadLuks();
 * console.log(typeof LuksVolume.open); // "function"
 * ```
 */
export function loadLuks(): Promise<LuksModules> {
  return loaded ??= Promise.all([import("./luks.ts"), import("./cipher_pool.ts")]).then(([l, p]) => ({
    LuksVolume: l.LuksVolume,
    CipherPool: p.CipherPool,
  }));
}
