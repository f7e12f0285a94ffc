/**
 * Runs blkgraph's drop-ins (`cli/qemu-img.ts`, `cli/qemu-io.ts`) for the operation fuzzer in a worker with a time limit, so that a
 * drop-in which never ends is reported (code `HANG`) instead of stopping the campaign. The worker is kept from call to call (loading
 * the modules once) and replaced after a hang.
 *
 * @module
 */

import type { RunResult } from "../_helpers/qemu.ts";

/** The exit code `OursRunner.run` gives when the drop-in threw. */
export const THREW = -1;
/** The exit code `OursRunner.run` gives when the drop-in did not end within the limit (the worker is then terminated). */
export const HANG = -2;

/** One worker running the drop-ins, one call at a time. */
export class OursRunner {
  #url: URL;
  #worker?: Worker;

  /** `url` is the worker module (`_ours_worker.ts` unless a test gives another). */
  constructor(url: URL = new URL("./_ours_worker.ts", import.meta.url)) {
    this.#url = url;
  }

  /** Runs `qemu-img args` or `qemu-io args`; code `THREW` when it threw, `HANG` when it took longer than `limitMs`. */
  run(tool: "img" | "io", args: string[], limitMs: number): Promise<RunResult> {
    const w = this.#worker ??= new Worker(this.#url, { type: "module" });
    return new Promise((resolve) => {
      const done = (r: RunResult) => {
        clearTimeout(timer);
        w.onmessage = w.onerror = null;
        resolve(r);
      };
      const timer = setTimeout(() => {
        this.close();
        done({ code: HANG, stdout: "", stderr: `no end within ${limitMs} ms` });
      }, limitMs);
      w.onmessage = (e: MessageEvent<RunResult>) => done(e.data);
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        this.close();
        done({ code: THREW, stdout: "", stderr: `worker error: ${e.message}` });
      };
      w.postMessage({ tool, args });
    });
  }

  /** Terminates the worker (the next `run` starts a new one). */
  close(): void {
    this.#worker?.terminate();
    this.#worker = undefined;
  }
}
