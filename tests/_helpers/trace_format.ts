/**
 * A checker for the Trace Event Format (the JSON that chrome://tracing and
 * Perfetto import), written from the format document's rules, independent
 * of the writer in cli/_trace_events.ts: required fields per phase, known
 * phases, metadata event shapes, `B`/`E` balance and weakly ascending
 * timestamps per thread, `X` durations >= 0 and strict nesting of the spans
 * of a thread (Perfetto drops slices that overlap without nesting).
 *
 * `strict` adds what a trace blkgraph writes promises beyond the format: no
 * unfinished `B`, timestamps ascending per thread in file order for every
 * phase, and a `thread_name` for every thread that has events.
 *
 * @module
 */

const PHASES = new Set(["B", "E", "X", "i", "I", "C", "b", "n", "e", "s", "t", "f", "P", "N", "O", "D", "M", "V", "v", "R", "c", "(", ")"]);
const PROCESS_META = new Set(["process_name", "process_labels", "process_sort_index", "process_uptime_seconds"]);
const THREAD_META = new Set(["thread_name", "thread_sort_index"]);

/** Options for {@linkcode validateTrace}. */
export interface ValidateOptions {
  /** Also enforce blkgraph's own promises (see the module documentation). */
  strict?: boolean;
}

type Ev = Record<string, unknown>;

const isId = (v: unknown) => typeof v === "number" || typeof v === "string";
const isNum = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

/** Checks a parsed trace; returns the problems found (empty when it is valid). */
export function validateTrace(doc: unknown, opts: ValidateOptions = {}): string[] {
  const problems: string[] = [];
  const say = (i: number, what: string) => {
    if (problems.length < 50) problems.push(i < 0 ? what : `event ${i}: ${what}`);
  };
  let events: unknown[];
  if (Array.isArray(doc)) events = doc;
  else if (doc && typeof doc === "object" && Array.isArray((doc as Ev).traceEvents)) {
    events = (doc as Ev).traceEvents as unknown[];
    const unit = (doc as Ev).displayTimeUnit;
    if (unit !== undefined && unit !== "ms" && unit !== "ns") say(-1, `displayTimeUnit '${String(unit)}' is neither ms nor ns`);
  } else {
    return ["the document is neither an array of events nor an object with a traceEvents array"];
  }
  const durStacks = new Map<string, { name: unknown; ts: number }[]>();
  const lastDurTs = new Map<string, number>();
  const lastTs = new Map<string, number>();
  const spans = new Map<string, { ts: number; dur: number; i: number }[]>();
  const named = new Set<string>();
  const used = new Set<string>();
  events.forEach((raw, i) => {
    if (!raw || typeof raw !== "object" || Array.isArray(raw)) return say(i, "is not an object");
    const e = raw as Ev;
    const ph = e.ph;
    if (typeof ph !== "string" || !PHASES.has(ph)) return say(i, `unknown phase ${JSON.stringify(ph)}`);
    if (ph !== "E" && typeof e.name !== "string") say(i, `phase ${ph} needs a string name`);
    if (e.cat !== undefined && typeof e.cat !== "string") say(i, "cat must be a string");
    if (e.args !== undefined && (typeof e.args !== "object" || e.args === null || Array.isArray(e.args))) say(i, "args must be an object");
    if (!isId(e.pid)) say(i, "needs a pid");
    const processLevel = (ph === "M" && PROCESS_META.has(e.name as string)) || ((ph === "i" || ph === "I") && (e.s === "g" || e.s === "p"));
    if (!processLevel && !isId(e.tid)) say(i, "needs a tid");
    const thread = `${String(e.pid)}/${String(e.tid)}`;
    if (ph === "M") {
      const args = (e.args ?? {}) as Ev;
      if (e.name === "thread_name" || e.name === "process_name") {
        if (typeof args.name !== "string") say(i, `${e.name} needs args.name`);
        if (e.name === "thread_name") named.add(thread);
      } else if (e.name === "thread_sort_index" || e.name === "process_sort_index") {
        if (!Number.isInteger(args.sort_index)) say(i, `${e.name} needs an integer args.sort_index`);
      } else if (!THREAD_META.has(e.name as string) && !PROCESS_META.has(e.name as string)) {
        say(i, `unknown metadata event '${String(e.name)}'`);
      }
      return;
    }
    if (!isNum(e.ts)) return say(i, `phase ${ph} needs a numeric ts`);
    const ts = e.ts;
    if (!processLevel) used.add(thread);
    if (opts.strict && !processLevel) {
      const last = lastTs.get(thread);
      if (last !== undefined && ts < last) say(i, `ts ${ts} goes back on thread ${thread} (after ${last})`);
      lastTs.set(thread, ts);
    }
    switch (ph) {
      case "X": {
        if (!isNum(e.dur) || e.dur < 0) say(i, `complete event needs dur >= 0, got ${JSON.stringify(e.dur)}`);
        else {
          const list = spans.get(thread);
          if (list) list.push({ ts, dur: e.dur, i });
          else spans.set(thread, [{ ts, dur: e.dur, i }]);
        }
        break;
      }
      case "B":
      case "E": {
        const last = lastDurTs.get(thread);
        if (last !== undefined && ts < last) say(i, `duration event ts ${ts} goes back on thread ${thread} (after ${last})`);
        lastDurTs.set(thread, ts);
        let stack = durStacks.get(thread);
        if (!stack) durStacks.set(thread, stack = []);
        if (ph === "B") stack.push({ name: e.name, ts });
        else {
          const top = stack.pop();
          if (!top) say(i, `E without a matching B on thread ${thread}`);
          else if (e.name !== undefined && e.name !== top.name) say(i, `E '${String(e.name)}' closes B '${String(top.name)}'`);
        }
        break;
      }
      case "i":
      case "I":
        if (e.s !== undefined && e.s !== "g" && e.s !== "p" && e.s !== "t") say(i, `instant scope '${String(e.s)}' is not g, p or t`);
        break;
      case "C":
        if (!e.args || Object.values(e.args as Ev).some((v) => !isNum(v))) say(i, "counter needs numeric args");
        break;
      case "b":
      case "n":
      case "e":
      case "s":
      case "t":
      case "f":
        if (!isId(e.id) && !(e.id2 && typeof e.id2 === "object")) say(i, `phase ${ph} needs an id`);
        break;
    }
  });
  if (opts.strict) {
    for (const [thread, stack] of durStacks) if (stack.length) say(-1, `${stack.length} B events never end on thread ${thread}`);
    for (const thread of used) if (!named.has(thread)) say(-1, `thread ${thread} has events but no thread_name`);
  }
  for (const [thread, list] of spans) {
    list.sort((a, b) => a.ts - b.ts || b.dur - a.dur);
    const open: { end: number; i: number }[] = [];
    for (const s of list) {
      while (open.length && open[open.length - 1].end <= s.ts) open.pop();
      const parent = open[open.length - 1];
      if (parent && s.ts + s.dur > parent.end + 1e-6) {
        say(s.i, `span [${s.ts}, ${s.ts + s.dur}] on thread ${thread} overlaps event ${parent.i} (ends ${parent.end}) without nesting`);
      }
      open.push({ end: s.ts + s.dur, i: s.i });
    }
  }
  return problems;
}
