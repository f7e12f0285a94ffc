/**
 * The trace-format checker the trace tests rely on (tests/_helpers/
 * trace_format.ts): it accepts a trace Chromium itself wrote, and it rejects
 * each rule broken on purpose — so a passing trace test means something.
 */

import assert from "node:assert/strict";
import { chromium, headlessFlags, noChromium } from "../_helpers/chromium.ts";
import { tempDir } from "../_helpers/qemu.ts";
import { validateTrace } from "../_helpers/trace_format.ts";

const meta = [
  { name: "process_name", ph: "M", pid: 1, args: { name: "p" } },
  { name: "thread_name", ph: "M", pid: 1, tid: 1, args: { name: "t" } },
];
const ok = [
  ...meta,
  { name: "outer", ph: "X", ts: 0, dur: 10, pid: 1, tid: 1 },
  { name: "inner", ph: "X", ts: 2, dur: 3, pid: 1, tid: 1 },
  { name: "ev", ph: "i", s: "t", ts: 4, pid: 1, tid: 1 },
  { name: "b", ph: "B", ts: 20, pid: 1, tid: 1 },
  { name: "b", ph: "E", ts: 25, pid: 1, tid: 1 },
];

Deno.test("validateTrace() accepts a well-formed trace", () => {
  assert.deepEqual(validateTrace({ traceEvents: ok, displayTimeUnit: "ms" }, { strict: true }), []);
});

const broken: [string, unknown[], RegExp, boolean?][] = [
  ["an unknown phase", [...meta, { name: "x", ph: "Q", ts: 0, pid: 1, tid: 1 }], /unknown phase/],
  ["a negative duration", [...meta, { name: "x", ph: "X", ts: 0, dur: -1, pid: 1, tid: 1 }], /dur >= 0/],
  ["a missing ts", [...meta, { name: "x", ph: "i", pid: 1, tid: 1 }], /numeric ts/],
  ["a missing name", [...meta, { ph: "X", ts: 0, dur: 1, pid: 1, tid: 1 }], /string name/],
  ["a missing tid", [...meta, { name: "x", ph: "X", ts: 0, dur: 1, pid: 1 }], /needs a tid/],
  ["an E without a B", [...meta, { name: "x", ph: "E", ts: 0, pid: 1, tid: 1 }], /without a matching B/],
  [
    "an E closing another name",
    [...meta, { name: "a", ph: "B", ts: 0, pid: 1, tid: 1 }, { name: "b", ph: "E", ts: 1, pid: 1, tid: 1 }],
    /closes B/,
  ],
  [
    "B/E going back in time",
    [...meta, { name: "a", ph: "B", ts: 5, pid: 1, tid: 1 }, { name: "a", ph: "E", ts: 1, pid: 1, tid: 1 }],
    /goes back/,
  ],
  ["spans that overlap without nesting", [
    ...meta,
    { name: "a", ph: "X", ts: 0, dur: 10, pid: 1, tid: 1 },
    { name: "b", ph: "X", ts: 5, dur: 10, pid: 1, tid: 1 },
  ], /without nesting/],
  ["a thread_name without a name", [{ name: "thread_name", ph: "M", pid: 1, tid: 1, args: {} }], /needs args.name/],
  ["an instant scope that does not exist", [...meta, { name: "x", ph: "i", s: "z", ts: 0, pid: 1, tid: 1 }], /scope/],
  ["an unfinished B (strict)", [...meta, { name: "a", ph: "B", ts: 0, pid: 1, tid: 1 }], /never end/, true],
  [
    "ts going back in file order (strict)",
    [...meta, { name: "a", ph: "i", ts: 5, pid: 1, tid: 1 }, { name: "b", ph: "i", ts: 1, pid: 1, tid: 1 }],
    /goes back/,
    true,
  ],
  ["a thread without a thread_name (strict)", [{ name: "a", ph: "i", ts: 5, pid: 1, tid: 7 }], /no thread_name/, true],
];

for (const [what, events, why, strict] of broken) {
  Deno.test(`validateTrace() rejects ${what}`, () => {
    const problems = validateTrace({ traceEvents: events }, { strict: strict ?? false });
    assert.ok(problems.some((p) => why.test(p)), `expected ${why}, got ${JSON.stringify(problems)}`);
  });
}

Deno.test({
  name: "validateTrace() accepts the trace Chromium writes of its own startup",
  ignore: noChromium(),
  async fn() {
    await using dir = await tempDir();
    const file = `${dir.path}/chromium-trace.json`;
    await Deno.writeTextFile(`${dir.path}/a.html`, "<p>hi</p>");
    const out = await new Deno.Command(chromium()!, {
      args: [
        ...headlessFlags(`${dir.path}/profile`),
        "--trace-startup=blink,v8,toplevel",
        `--trace-startup-file=${file}`,
        "--trace-startup-duration=1",
        "--trace-startup-format=json",
        "--dump-dom",
        `file://${dir.path}/a.html`,
      ],
      stdout: "null",
      stderr: "null",
    }).output();
    assert.equal(out.code, 0);
    const doc = JSON.parse(await Deno.readTextFile(file));
    assert.ok(doc.traceEvents.length > 100, "chromium wrote a real trace");
    assert.ok(doc.traceEvents.some((e: { ph: string }) => e.ph === "X"));
    assert.deepEqual(validateTrace(doc), []);
  },
});
