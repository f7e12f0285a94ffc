/**
 * A compression worker for tests that answers out of order: it compresses
 * as `_compress_worker.ts` does, but holds its answers until it has four
 * (or 20 ms passed) and sends them newest first.
 */

/// <reference lib="deno.worker" />

import { systemDeflate } from "../../../../drivers/qcow2/_zlib_ffi.ts";
import { systemZstd } from "../../../../drivers/qcow2/_zstd_ffi.ts";

let held: { id: number; out: Uint8Array | null }[] = [];
let timer: ReturnType<typeof setTimeout> | undefined;

function release(): void {
  clearTimeout(timer);
  timer = undefined;
  for (const { id, out } of held.reverse()) self.postMessage({ id, out });
  held = [];
}

self.onmessage = (e: MessageEvent<{ id: number; type: number; data: Uint8Array }>) => {
  const { id, type, data } = e.data;
  const out = (type === 1 ? systemZstd(data) : systemDeflate(data)) ?? null;
  held.push({ id, out });
  if (held.length >= 4) release();
  else timer ??= setTimeout(release, 20);
};
