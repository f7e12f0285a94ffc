/**
 * Crash-state exploration: generate the images a crash could leave behind
 * from a recorded log ({@link ../recorder.ts}), judge them with pluggable
 * oracles (structure, recovery, durability), shrink failures to a minimal
 * replayable op list, and read and write logs in the dm-log-writes format.
 *
 * @example
 * ```ts
 * import { open } from "@blkgraph/blkgraph";
 * import { getRecorder } from "@blkgraph/blkgraph/filters/recorder";
 * import { runCrashExploration } from "@blkgraph/blkgraph";
 * await using disk = await open({ driver: "recorder", file: { driver: "memory", size: 4096 } });
 * await disk.pwrite(0, new Uint8Array(512).fill(1));
 * await disk.flush();
 * const r = await runCrashExploration(new Uint8Array(4096), getRecorder(disk).log, []);
 * console.log(r.states); // 2: before and after the write
 * ```
 *
 * @module
 */

export * from "./dm_log_writes.ts";
export * from "./explorer.ts";
export * from "./oracles.ts";
export * from "./run.ts";
