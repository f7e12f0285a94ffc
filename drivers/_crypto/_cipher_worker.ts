/**
 * The worker side of {@linkcode CipherPool}: one {@linkcode SectorCipher}
 * per worker and a loop that sleeps on the pool's claim word
 * (`Atomics.wait`), claims pieces of the current job from its back end and
 * encrypts or decrypts them in place in the shared buffer. The key arrives
 * once in the init message and is zeroed after the cipher copied it.
 *
 * Control block (Int32 words of the shared buffer's head):
 * - `CLAIM`: generation << 16 | back << 8 | front; pieces [front, back) are unclaimed;
 * - `DONE`: pieces workers finished in this generation;
 * - `SECTOR_LO`, `SECTOR_HI`, `LENGTH`, `SPLIT`, `PIECE_BYTES`, `ENCRYPT`: the job,
 *   written before its generation is published; only pieces from `SPLIT` on are in the buffer;
 * - `STOP`: set to make the workers exit.
 *
 * @module
 */

import { parentPort } from "node:worker_threads";
import type { CipherSpec } from "./algorithms.ts";
import { SectorCipher } from "./sector_cipher.ts";

/** Int32 word indexes of the control block. */
export const CTL = { CLAIM: 0, DONE: 1, SECTOR_LO: 2, SECTOR_HI: 3, LENGTH: 4, SPLIT: 5, PIECE_BYTES: 6, ENCRYPT: 7, STOP: 8 } as const;
/** Bytes of the control block before the data region. */
export const CTL_BYTES = 64;

/** The message that starts a worker. */
export interface CipherWorkerInit {
  /** What to run. */
  spec: CipherSpec;
  /** The key (zeroed by the worker once its cipher has it). */
  key: Uint8Array;
  /** Control block and data region. */
  buffer: SharedArrayBuffer;
}

/** Claims pieces from the back of the current job and runs them until told to stop. */
function serve(init: CipherWorkerInit): void {
  const cipher = new SectorCipher(init.spec, init.key);
  init.key.fill(0);
  const ctl = new Int32Array(init.buffer, 0, CTL_BYTES / 4);
  const data = new Uint8Array(init.buffer, CTL_BYTES);
  let local = new Uint8Array(0);
  for (;;) {
    if (Atomics.load(ctl, CTL.STOP)) break;
    const v = Atomics.load(ctl, CTL.CLAIM);
    const front = v & 0xff;
    const back = (v >>> 8) & 0xff;
    const split = ctl[CTL.SPLIT];
    if (back - 1 < Math.max(front, split)) {
      Atomics.wait(ctl, CTL.CLAIM, v);
      continue;
    }
    const sector = ctl[CTL.SECTOR_LO] + ctl[CTL.SECTOR_HI] * 0x1_0000_0000;
    const pieceBytes = ctl[CTL.PIECE_BYTES];
    const encrypt = ctl[CTL.ENCRYPT] === 1;
    const piece = back - 1;
    if (Atomics.compareExchange(ctl, CTL.CLAIM, v, (v & ~0xff00) | (piece << 8)) !== v) continue;
    const at = (piece - split) * pieceBytes;
    const n = Math.min(pieceBytes, ctl[CTL.LENGTH] - piece * pieceBytes);
    if (local.length < n) local = new Uint8Array(pieceBytes);
    const d = local.subarray(0, n);
    d.set(data.subarray(at, at + n));
    if (encrypt) cipher.encrypt(d, sector + (piece * pieceBytes) / cipher.sectorSize);
    else cipher.decrypt(d, sector + (piece * pieceBytes) / cipher.sectorSize);
    data.set(d, at);
    d.fill(0);
    Atomics.add(ctl, CTL.DONE, 1);
    Atomics.notify(ctl, CTL.DONE);
  }
  cipher.destroy();
  local.fill(0);
}

if (parentPort) {
  const port = parentPort;
  port.once("message", (m: CipherWorkerInit) => serve(m));
}
