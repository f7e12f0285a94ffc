/**
 * A stand-in for `_ours_worker.ts` in the operation fuzzer's own tests: `?mode=ok` answers every call with exit code 0, `?mode=spin`
 * never answers and never yields (a synchronous endless loop), as a drop-in stuck in a loop would.
 *
 * @module
 */

/// <reference lib="deno.worker" />

const mode = new URL(import.meta.url).searchParams.get("mode");

self.onmessage = () => {
  if (mode === "spin") { for (;;) { /* never yields */ } }
  self.postMessage({ code: 0, stdout: "", stderr: "" });
};
