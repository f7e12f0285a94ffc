/**
 * What a benchmark module returns, and how the runner prints it. Every
 * `bench/*_bench.ts` exports `run(opts: BenchOptions): Promise<BenchTable[]>`
 * (or a single table); `bench/run.ts` finds and runs them.
 *
 * @module
 */

/** Options the runner passes to every benchmark module. */
export interface BenchOptions {
  /** Fewer requests and runs, for a smoke test (`--quick`). */
  quick: boolean;
  /** Runs per measurement; the median is reported (default 5). */
  runs: number;
  /** A scratch directory the module may use (removed by the runner). */
  dir: string;
}

/** One table of results. */
export interface BenchTable {
  /** Heading printed above the table. */
  title: string;
  /** Column headings. */
  columns: string[];
  /** Rows of cells (numbers are printed as they are). */
  rows: (string | number)[][];
  /** Lines printed under the table (commands, caveats). */
  notes?: string[];
}

/** A benchmark module as the runner loads it. */
export interface BenchModule {
  /** Runs the benchmarks and returns their tables. */
  run(opts: BenchOptions): Promise<BenchTable | BenchTable[]>;
}

/**
 * Renders a table as GitHub markdown.
 *
 * @example
 * ```ts
 * import { toMarkdown } from "./_table.ts";
 * console.log(toMarkdown({ title: "t", columns: ["a"], rows: [[1]] }));
 * ```
 */
export function toMarkdown(t: BenchTable): string {
  const lines = [`### ${t.title}`, "", `| ${t.columns.join(" | ")} |`, `|${t.columns.map(() => "---").join("|")}|`];
  for (const r of t.rows) lines.push(`| ${r.join(" | ")} |`);
  if (t.notes?.length) lines.push("", ...t.notes);
  return lines.join("\n") + "\n";
}

/** The median of a non-empty list. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Formats a rate with thousands separators and no decimals. */
export function fmtRate(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}
