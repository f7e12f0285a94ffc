/**
 * The dispatcher's verb table. Each entry holds a verb's name and summary
 * and imports the verb's module only when the verb runs, so a process pays
 * at start-up for the one verb it runs and not for all twenty (and the
 * modules they pull in). `tests/cli/startup_imports_test.ts` keeps the verb
 * modules out of the entry points' static import graph.
 *
 * @module
 */

import type { CliIO, Verb } from "./_common.ts";
import { VERB_SUMMARIES, type VerbName } from "./_verb_summaries.ts";

/**
 * A verb whose module is imported on its first run; `--help` lists it from
 * its name and summary alone.
 *
 * @example
 * ```ts
 * import { lazyVerb } from "./_verbs.ts";
 * const info = lazyVerb("info", async () => (await import("./info.ts")).infoVerb);
 * console.log(info.summary); // "show information about an image"
 * ```
 */
export function lazyVerb(name: VerbName, load: () => Promise<Verb>): Verb {
  let loaded: Promise<Verb> | undefined;
  return {
    name,
    summary: VERB_SUMMARIES[name],
    async run(args: string[], io: CliIO): Promise<number> {
      return await (await (loaded ??= load())).run(args, io);
    },
  };
}

/** Every verb, in the order `--help` lists them. */
export const VERBS: readonly Verb[] = [
  lazyVerb("amend", async () => (await import("./amend.ts")).amendVerb),
  lazyVerb("bench", async () => (await import("./bench.ts")).benchVerb),
  lazyVerb("bitmap", async () => (await import("./bitmap.ts")).bitmapVerb),
  lazyVerb("check", async () => (await import("./check.ts")).checkVerb),
  lazyVerb("commit", async () => (await import("./commit.ts")).commitVerb),
  lazyVerb("compare", async () => (await import("./compare.ts")).compareVerb),
  lazyVerb("convert", async () => (await import("./convert.ts")).convertVerb),
  lazyVerb("crash-explore", async () => (await import("./crash_explore.ts")).crashExploreVerb),
  lazyVerb("create", async () => (await import("./create.ts")).createVerb),
  lazyVerb("dd", async () => (await import("./dd.ts")).ddVerb),
  lazyVerb("info", async () => (await import("./info.ts")).infoVerb),
  lazyVerb("map", async () => (await import("./map.ts")).mapVerb),
  lazyVerb("measure", async () => (await import("./measure.ts")).measureVerb),
  lazyVerb("nbd", async () => (await import("./nbd.ts")).nbdVerb),
  lazyVerb("rebase", async () => (await import("./rebase.ts")).rebaseVerb),
  lazyVerb("report", async () => (await import("./report.ts")).reportVerb),
  lazyVerb("resize", async () => (await import("./resize.ts")).resizeVerb),
  lazyVerb("snapshot", async () => (await import("./snapshot.ts")).snapshotVerb),
  lazyVerb("io", async () => (await import("./io.ts")).ioVerb),
  lazyVerb("demo", async () => (await import("./demo.ts")).demoVerb),
];
