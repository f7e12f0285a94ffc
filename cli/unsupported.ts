/**
 * qemu-img verbs blkgraph does not implement yet: they are listed in `--help`
 * and refuse with a clear error instead of pretending.
 *
 * @module
 */

import { CliError, type CliIO, type Verb } from "./_common.ts";

function refuse(name: string, summary: string): Verb {
  return {
    name,
    summary: `${summary} (not supported yet)`,
    run(args: string[], io: CliIO): Promise<number> {
      if (args.includes("--help") || args.includes("-h")) {
        io.stdout(`Usage: blkgraph ${name} ...\n\n'${name}' (${summary}) is not supported yet.\n`);
        return Promise.resolve(0);
      }
      return Promise.reject(new CliError(`'${name}' is not supported yet`));
    },
  };
}

/** `commit`: not supported yet. */
export const commitVerb: Verb = refuse("commit", "commit an overlay into its backing file");
/** `amend`: not supported yet. */
export const amendVerb: Verb = refuse("amend", "change format options of an image");
