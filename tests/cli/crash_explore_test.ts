/**
 * `blkgraph crash-explore` and the crash report: the verb finds what the
 * library's exploration finds, the report shows every run with each
 * oracle's verdict and every failing state with its replay on the
 * flush-epoch timeline; recorded dm-log-writes logs explore too.
 */

import assert from "node:assert/strict";
import { readDmLogWrites, writeDmLogWrites } from "../../filters/crash/dm_log_writes.ts";
import { classify } from "../../filters/crash/explorer.ts";
import { exploreQcow2, QCOW2_WORKLOADS } from "../../filters/crash/qcow2.ts";
import { countColour, decodePng, noChromium, openPage } from "../_helpers/chromium.ts";
import { runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { cli } from "./_run.ts";

const count = (s: string, re: RegExp) => (s.match(re) ?? []).length;
const BOUNDS = ["--max-states=400", "--samples=16", "--max-exhaustive=10", "--torn-cuts=3"];

Deno.test("crash-explore --wrong-order fails (exit 1) on the state the library finds, and the report draws it", async () => {
  await using dir = await tempDir();
  const report = `${dir.path}/crash.html`;
  const r = await cli(["crash-explore", "--workload=sequential", "--mode=ordered", "--wrong-order", ...BOUNDS, `--report=${report}`]);
  assert.equal(r.code, 1, r.stderr);
  const w = QCOW2_WORKLOADS.find((w) => w.name === "sequential")!;
  const lib = await exploreQcow2(w, "ordered", {
    dir: dir.path,
    seed: 1,
    wrongOrder: true,
    explore: { seed: 1, maxStates: 400, samples: 16, maxExhaustive: 10, maxTornCuts: 3, maxFailures: 1 },
  });
  assert.equal(lib.failures.length, 1);
  const f = lib.failures[0];
  assert.match(r.stdout, new RegExp(`\\| sequential \\| ordered \\| ${lib.states} \\|.*\\| 1 \\|`));
  assert.ok(r.stdout.includes(`(state ${f.index}, ${f.kind}): ${f.oracle}: `));
  const html = await Deno.readTextFile(report);
  assert.match(html, new RegExp(`<tr class="fail"><td class="l">sequential</td><td>ordered</td><td>${lib.states}</td>`));
  assert.ok(html.includes(`<span class="verdict fail">FAIL</span> (${lib.checks[f.oracle]} checks)`), "the failing oracle's verdict");
  const section = html.slice(
    html.indexOf(`<div class="failure" data-workload="sequential" data-mode="ordered" data-oracle="${f.oracle}">`),
  );
  assert.ok(section.length < html.length, "the failing state has a section");
  const replay = section.slice(section.indexOf('<div class="replay">'), section.indexOf("</table></div>"));
  assert.equal(count(replay, /<tr><td class="l">/g), f.replay!.length);
  const log = lib.recorded.hostLog;
  assert.equal(count(section, /<rect class="op fate-/g), log.length, "one mark per logged op");
  assert.equal(count(section, /<rect class="op fate-kept"/g), f.minimal!.applied.length);
  assert.equal(count(section, /<rect class="op fate-durable"/g), f.replay!.filter((op) => op.durable).length);
  const { pending } = classify(log, f.minimal!.crashPoint);
  const dropped = pending.filter((i) => !f.minimal!.applied.includes(i) && f.minimal!.torn?.op !== i);
  assert.equal(count(section, /<rect class="op fate-dropped"/g), dropped.length);
  assert.equal(count(section, /<rect class="op fate-flush"/g), log.filter((op) => op.op === "flush").length);
  // The recorder's clock is process-wide: compare the crash point with the first op's start.
  const x0 = Number(/<rect class="op fate-[a-z]+" data-index="0" x="(\d+)"/.exec(section)![1]);
  const crash = [...section.matchAll(/<line class="crashpoint" x1="(\d+)"/g)].map((m) => Number(m[1]) - x0);
  assert.deepEqual(crash, [f.minimal!.crashPoint - log[0].submit, f.minimal!.crashPoint - log[0].submit]);
});

Deno.test("crash-explore passes every oracle without the wrong order (exit 0) and the report says pass for every run", async () => {
  await using dir = await tempDir();
  const report = `${dir.path}/crash.html`;
  const r = await cli(["crash-explore", "--workload=sequential", "--max-states=60", `--report=${report}`]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const html = await Deno.readTextFile(report);
  assert.equal(count(html, /<tr class="pass">/g), 3, "one row per mode");
  assert.equal(count(html, /class="verdict fail"/g), 0);
  assert.equal(count(html, /<span class="verdict pass">pass<\/span>/g), 9, "structure, recovery and durability in three modes");
  assert.match(html, /No state failed an oracle/);
});

Deno.test({
  name:
    "crash-explore --log explores a dm-log-writes log QEMU's blklogwrites recorded under its qcow2, and catches a device that drops flushes",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn() {
    await using dir = await tempDir();
    const img = `${dir.path}/q.qcow2`;
    const base = `${dir.path}/q.base`;
    const log = `${dir.path}/q.log`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "1M"]);
    await Deno.copyFile(img, base);
    await Deno.writeFile(log, new Uint8Array(0));
    await runOk("qemu-io", [
      "-c",
      "write -P 1 0 8k",
      "-c",
      "flush",
      "-c",
      "write -P 2 64k 4k",
      "-c",
      "write -P 3 512k 4k",
      "-c",
      "flush",
      "-c",
      "write -P 4 4k 4k",
      "--image-opts",
      `driver=qcow2,file.driver=blklogwrites,file.file.driver=file,file.file.filename=${img},file.log.driver=file,file.log.filename=${log}`,
    ]); // deno-fmt-ignore
    const report = `${dir.path}/q.html`;
    const ok = await cli(["crash-explore", `--log=${log}`, `--base=${base}`, "-f", "qcow2", "--qemu-every=4", `--report=${report}`]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /\| recorded \| \d+ \| structure \d+, qemu-img-check \d+, recovery \d+ \| 0 \|/);
    assert.match(await Deno.readTextFile(report), /<tr class="pass"><td class="l">[^<]*q\.log<\/td><td>recorded<\/td>/);
    // The same log with its flushes dropped: writes of one epoch may land in any order, and some order corrupts the image.
    const ops = readDmLogWrites(await Deno.readFile(log));
    const noFlush = `${dir.path}/noflush.log`;
    await Deno.writeFile(noFlush, writeDmLogWrites(ops.filter((o) => o.op !== "flush")));
    const bad = await cli(["crash-explore", `--log=${noFlush}`, `--base=${base}`, "-f", "qcow2", `--report=${report}`]);
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.equal(
      count(
        await Deno.readTextFile(report),
        /<div class="failure" data-workload="[^"]*noflush\.log" data-mode="recorded" data-oracle="structure">/g,
      ),
      1,
    );
  },
});

Deno.test("crash-explore refuses an unknown workload or mode, and a log without its base image", async () => {
  const a = await cli(["crash-explore", "--workload=nope"]);
  assert.equal(a.code, 1);
  assert.match(a.stderr, /Unknown workload 'nope': expected one of random-grow, sequential/);
  assert.match((await cli(["crash-explore", "--mode=fast"])).stderr, /Unknown mode 'fast'/);
  assert.match((await cli(["crash-explore", "--log=/nonexistent"])).stderr, /--log needs the image before the log/);
  assert.match((await cli(["crash-explore", "--max-states=x"])).stderr, /Invalid --max-states 'x'/);
});

Deno.test("bench/crash_explore.ts --report writes the crash report", async () => {
  await using dir = await tempDir();
  const report = `${dir.path}/bench.html`;
  const path = new URL("../../bench/crash_explore.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      path,
      "--workload",
      "sequential",
      "--max-states",
      "200",
      "--samples",
      "8",
      "--qemu-every",
      "0",
      "--wrong-order",
      "--report",
      report,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  assert.match(text, /\| sequential \| ordered \|/);
  const html = await Deno.readTextFile(report);
  assert.equal(count(html, /<tr class="(pass|fail)">/g), 3);
  assert.ok(count(html, /<div class="failure"/g) >= 1, "the wrong order fails in some mode");
});

Deno.test({
  name: "the crash report renders in headless Chromium with the failing state's timeline",
  ignore: noChromium(),
  async fn() {
    await using dir = await tempDir();
    const report = `${dir.path}/crash.html`;
    await cli(["crash-explore", "--workload=sequential", "--mode=ordered", "--wrong-order", ...BOUNDS, `--report=${report}`]);
    const page = await openPage();
    try {
      await page.load(`file://${report}`);
      assert.equal(await page.evaluate<string>("document.body.dataset.ready"), "1");
      assert.equal(await page.evaluate<number>("document.querySelectorAll('#summary tbody tr.fail').length"), 1);
      assert.equal(await page.evaluate<number>("document.querySelectorAll('.failure svg.zoomable').length"), 1);
      const box = await page.evaluate<{ x: number; y: number; width: number; height: number }>(
        "(() => { const r = document.querySelector('.failure svg.zoomable').getBoundingClientRect(); return { x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height }; })()",
      );
      const img = decodePng(await page.screenshot(box));
      for (const [what, colour] of [["kept", "#f28e2b"], ["dropped", "#c7c7c7"], ["flush", "#e15759"]]) {
        assert.ok(countColour(img, colour) > 0, `the screenshot shows ${what} ops`);
      }
    } finally {
      await page.close();
    }
  },
});
