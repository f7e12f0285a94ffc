/**
 * The worker side of {@linkcode CipherPool}: one {@linkcode SectorCipher}
 * per worker, encrypting or decrypting jobs in a shared buffer in place.
 * The key arrives once in the init message and is zeroed after the cipher
 * copied it.
 *
 * @module
 */

import { parentPort } from "node:worker_threads";
import type { CipherSpec } from "./algorithms.ts";
import { SectorCipher } from "./sector_cipher.ts";

/** Messages the pool sends. */
export type CipherWorkerRequest =
  | { type: "init"; spec: CipherSpec; key: Uint8Array; buffer: SharedArrayBuffer }
  | { type: "job"; id: number; length: number; sector: number; encrypt: boolean }
  | { type: "stop" };

/** Messages the worker sends back. */
export type CipherWorkerReply = { id: number; error?: string };

if (parentPort) {
  const port = parentPort;
  let cipher: SectorCipher | undefined;
  let shared: Uint8Array | undefined;
  let local = new Uint8Array(0);
  port.on("message", (m: CipherWorkerRequest) => {
    if (m.type === "init") {
      cipher = new SectorCipher(m.spec, m.key);
      m.key.fill(0);
      shared = new Uint8Array(m.buffer);
      return;
    }
    if (m.type === "stop") {
      cipher?.destroy();
      local.fill(0);
      return;
    }
    try {
      if (local.length < m.length) local = new Uint8Array(m.length);
      const d = local.subarray(0, m.length);
      d.set(shared!.subarray(0, m.length));
      if (m.encrypt) cipher!.encrypt(d, m.sector);
      else cipher!.decrypt(d, m.sector);
      shared!.set(d);
      d.fill(0);
      port.postMessage({ id: m.id } satisfies CipherWorkerReply);
    } catch (e) {
      port.postMessage({ id: m.id, error: e instanceof Error ? e.message : String(e) } satisfies CipherWorkerReply);
    }
  });
}
