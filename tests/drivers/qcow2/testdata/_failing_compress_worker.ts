/**
 * A compression worker for tests that fails on its third job: with
 * compression type 0 (zlib) it answers with an error message, with type 1
 * (zstd) it throws, and the worker dies. Jobs before that stay uncompressed.
 */

/// <reference lib="deno.worker" />

let jobs = 0;

self.onmessage = (e: MessageEvent<{ id: number; type: number }>) => {
  if (++jobs !== 3) self.postMessage({ id: e.data.id, out: null });
  else if (e.data.type === 0) self.postMessage({ id: e.data.id, error: "out of memory in deflate" });
  else throw new Error("the worker crashed");
};
