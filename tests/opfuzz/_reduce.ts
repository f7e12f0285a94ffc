/**
 * Reduction of an operation-fuzzer finding: steps, qemu-io commands and backing-file writes are dropped one at a time, greedily, for as
 * long as the case still fails the same way, until no single one can go.
 *
 * @module
 */

import type { OpCase } from "./_gen.ts";

/** The smallest case found from `c` for which `fails` still holds (`fails(c)` is taken to hold). */
export async function reduceCase(c: OpCase, fails: (c: OpCase) => Promise<boolean>): Promise<OpCase> {
  const tries = (x: OpCase) => [
    ...x.steps.map((_, i) => (y: OpCase) => void y.steps.splice(i, 1)),
    ...x.steps.flatMap((s, i) =>
      s.kind === "io" && s.commands.length > 1
        ? s.commands.map((_, j) => (y: OpCase) => void (y.steps[i] as { commands: string[] }).commands.splice(j, 1))
        : []
    ),
    ...(x.image.backing?.writes ?? []).map((_, j) => (y: OpCase) => void y.image.backing!.writes.splice(j, 1)),
  ];
  let changed = true;
  while (changed) {
    changed = false;
    // Last first: dropping an item leaves the indexes before it as they were.
    for (const drop of tries(c).reverse()) {
      const y = structuredClone(c);
      drop(y);
      if (await fails(y)) {
        c = y;
        changed = true;
        break;
      }
    }
  }
  return c;
}
