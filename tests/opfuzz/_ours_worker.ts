/**
 * The worker that runs blkgraph's drop-ins for the operation fuzzer (`_ours.ts`): one `{ tool, args }` message in, one `RunResult`
 * message out. In a worker, a drop-in that never ends (even in a synchronous loop) can be stopped by `terminate()`; in the fuzzer's own
 * thread it would stop the fuzzer too.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { qemuImg } from "../../cli/qemu-img.ts";
import { qemuIo } from "../../cli/qemu-io.ts";

self.onmessage = async (e: MessageEvent<{ tool: "img" | "io"; args: string[] }>) => {
  let stdout = "";
  let stderr = "";
  const io = { stdout: (s: string) => void (stdout += s), stderr: (s: string) => void (stderr += s) };
  try {
    const code = await (e.data.tool === "img" ? qemuImg(e.data.args, io) : qemuIo(e.data.args, io));
    self.postMessage({ code, stdout, stderr });
  } catch (err) {
    self.postMessage({ code: -1, stdout, stderr: `${stderr}\nthrown: ${err instanceof Error ? err.stack : String(err)}` });
  }
};
