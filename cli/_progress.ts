/**
 * qemu's progress line (util/qemu-progress.c) for `-p`: `    (25.00/100%)\r`,
 * printed when the value moved by more than the verb's step since the last
 * print, or reached 0 or 100; a newline at the end.
 *
 * @module
 */

import { cFixed, type CliIO } from "./_common.ts";

/** Sets the progress (percent); `end()` finishes the line. */
export interface ProgressPrinter {
  (percent: number): void;
  /** Ends the progress output (a newline, when enabled). */
  end(): void;
}

/** A printer that shows progress with `minSkip` percent granularity, or does nothing when not `enabled`. */
export function progressPrinter(io: CliIO, enabled: boolean, minSkip: number): ProgressPrinter {
  let last = 0;
  const f = ((percent: number) => {
    if (!enabled) return;
    // qemu keeps the value in a float.
    const current = Math.fround(Math.min(100, percent));
    if (current > last + minSkip || current < last - minSkip || current === 100 || current === 0) {
      last = current;
      io.stdout(`    (${cFixed(current, 2)}/100%)\r`);
      io.flush?.();
    }
  }) as ProgressPrinter;
  f.end = () => {
    if (enabled) io.stdout("\n");
  };
  return f;
}
