/**
 * QEMU's `AioTaskPool` (util/aio-task.c) as its callers use it (qcow2_co_pwritev_compressed_part, the compress filter's request
 * through it): tasks started in order with at most `maxBusy` in flight, a new task waits for a free slot, no task starts once one has
 * failed, and the whole only ends when every task it started has ended, so nothing started keeps running after the error is
 * reported.
 *
 * @module
 */

/** QCOW2_MAX_WORKERS: the tasks one qcow2 request keeps in flight. */
export const QCOW2_MAX_WORKERS = 8;

/**
 * Runs `start(0)` … `start(count - 1)` as QEMU's task pool does: before task i starts it waits while `maxBusy` are in flight; after
 * a failure no further task starts (the one already waiting for its slot still does, as in QEMU, where the status is looked at
 * only between tasks). Resolves when every started task has settled; rejects with the first failure.
 */
export async function runTaskPool(count: number, maxBusy: number, start: (i: number) => Promise<void>): Promise<void> {
  const busy = new Set<Promise<void>>();
  let failed: { error: unknown } | undefined;
  for (let i = 0; i < count && !failed; i++) {
    while (busy.size >= maxBusy) await Promise.race(busy);
    let task: Promise<void>;
    try {
      task = start(i);
    } catch (e) {
      task = Promise.reject(e);
    }
    const p: Promise<void> = task.catch((error) => void (failed ??= { error })).finally(() => busy.delete(p));
    busy.add(p);
  }
  await Promise.all(busy);
  if (failed) throw failed.error;
}
