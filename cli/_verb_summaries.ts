/**
 * Each verb's one-line summary for `--help`, by name. The verb modules and
 * the dispatcher's table of lazily loaded verbs (`_verbs.ts`) both read it,
 * so `--help` lists a verb without importing its module.
 *
 * @module
 */

/** The summary `--help` prints beside each verb's name. */
export const VERB_SUMMARIES = {
  amend: "change format options (qcow2 compat/refcount_bits/size/..., luks key slots)",
  bench: "run a simple I/O benchmark",
  bitmap: "add, remove, clear, enable, disable or merge persistent dirty bitmaps",
  check: "check an image for consistency",
  commit: "commit an overlay into its backing file",
  compare: "compare the content of two images",
  convert: "convert (copy) images",
  "crash-explore": "explore crash states of qcow2 workloads or a dm-log-writes log",
  create: "create a new image",
  dd: "copy an image block by block, as dd(1)",
  demo: "a short tour of blkgraph (qcow2, blkdebug, events, check)",
  info: "show information about an image",
  io: "qemu-io's command language (-c cmd, or a prompt)",
  map: "show the image's allocation map",
  measure: "compute the size an image needs",
  nbd: "serve an image over NBD (qemu-nbd)",
  rebase: "change the backing file of an image (safe, or -u)",
  report: "HTML report of a --trace-format=chrome trace",
  resize: "change the virtual size of an image",
  snapshot: "list, create, apply or delete internal snapshots",
} as const;

/** A verb's name on the command line. */
export type VerbName = keyof typeof VERB_SUMMARIES;
