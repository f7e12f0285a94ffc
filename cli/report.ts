/**
 * `blkgraph report`: turns a trace written with `--trace-format=chrome`
 * into one self-contained HTML page (no network, no external scripts):
 * the graph of nodes, the zoomable timeline, per-node counts and latency
 * percentiles and the flush epochs; with `--image`, the image's allocation
 * map too.
 *
 * @module
 */

import { BlockError } from "../core/errors.ts";
import {
  CliError,
  type CliIO,
  flagString,
  IMAGE_FLAGS,
  imageArgs,
  needPositionals,
  openImage,
  parseVerbArgs,
  type Verb,
} from "./_common.ts";
import { renderMapSvg } from "./_map_svg.ts";
import { renderTraceReport } from "./_report_html.ts";
import { parseTraceReport } from "./_report_model.ts";
import { VERB_SUMMARIES } from "./_verb_summaries.ts";

const USAGE = `Usage: blkgraph report [-o report.html] [--title=TEXT] [--image=FILE [-f fmt]] trace.json

Writes an HTML report of a trace recorded with --trace-format=chrome
--trace=trace.json (io, convert, bench): the graph of nodes, a zoomable
timeline of every request on every node, per-node counts and latency
percentiles, and the flush epochs (which writes each flush made durable).
--image adds the allocation map of an image (as map --output=svg draws it).
Without -o the page goes to standard output.
`;

async function run(args: string[], io: CliIO): Promise<number> {
  const p = parseVerbArgs(
    args,
    { ...IMAGE_FLAGS, output: { type: "string", short: "o" }, title: { type: "string" }, image: { type: "string" } },
    USAGE,
    io,
  );
  if (!p) return 0;
  needPositionals(p.positionals, 1, 1, "a trace file");
  const tracePath = p.positionals[0];
  let text: string;
  try {
    text = await Deno.readTextFile(tracePath);
  } catch (e) {
    throw new CliError(`Cannot read trace '${tracePath}': ${(e as Error).message}`);
  }
  let report;
  try {
    report = parseTraceReport(text);
  } catch (e) {
    if (e instanceof BlockError) throw new CliError(`${tracePath}: ${e.message}`);
    throw e;
  }
  let mapSvg: string | undefined;
  const image = flagString(p.values, "image");
  if (image !== undefined) {
    const node = await openImage(image, imageArgs(p.values, true));
    try {
      mapSvg = await renderMapSvg(node, { title: image });
    } finally {
      await node.close();
    }
  }
  const html = renderTraceReport(report, { title: flagString(p.values, "title") ?? `blkgraph trace report: ${tracePath}`, mapSvg });
  const out = flagString(p.values, "output");
  if (out === undefined) io.stdout(html);
  else {
    try {
      await Deno.writeTextFile(out, html);
    } catch (e) {
      throw new CliError(`Cannot write report '${out}': ${(e as Error).message}`);
    }
  }
  return 0;
}

/** The `report` verb. */
export const reportVerb: Verb = { name: "report", summary: VERB_SUMMARIES.report, run };
