/**
 * Every fixture of tests/testdata/qcow2 (images made by qemu-img and
 * qemu-io 7.2, tests/testdata/make.sh) read, mapped, described, checked
 * and repaired by blkgraph, compared with what QEMU said about the same
 * bytes: live where QEMU is installed, else the answers recorded in
 * manifest.json. Where QEMU is installed, the last test checks that every
 * recorded answer is still what it says.
 */

import assert from "node:assert/strict";
import { BlockError, open } from "../../../mod.ts";
import { damage } from "./_damage.ts";
import { cli } from "../../cli/_run.ts";
import { skipUnless, tempDir } from "../../_helpers/qemu.ts";
import {
  assertOutput,
  DAMAGED_RUNS,
  digestFile,
  digestNode,
  execLine,
  firstDiffMiB,
  fixtureBytes,
  inDir,
  manifest,
  type QemuRun,
  qemuSays,
  REPAIR_RUNS,
  sha256,
  splitWords,
  unpack,
  withoutCompressedKey,
  withoutDiskSize,
} from "../../_helpers/fixtures.ts";

const FIXTURES = Object.entries(manifest().fixtures);

/**
 * Where main's blkgraph is known to differ from qemu-img 7.2 on a fixture, and
 * who is fixing it: these tests are skipped with a visible `SKIP:` line naming
 * the difference (remove the entry when the fix lands; the test then runs).
 */
const KNOWN: { test: RegExp; why: string }[] = [
  {
    test: /^map --output=json on (cs512|cs4096)\.qcow2 /,
    why: 'map gives no "offset" for a zero cluster that keeps its host cluster (qemu-img prints it)',
  },
  {
    test: /^map --output=json on (opt-extended-l2-on|datafile|busy-extl2|diff3)\.qcow2 /,
    why: "map of an extended-L2 image: unallocated subclusters of an allocated cluster are merged with the unallocated clusters after " +
      'them, without the "offset" qemu-img prints',
  },
  {
    test: /^map --output=json on (cs2M|busy-2M)\.qcow2 /,
    why: "map does not ask the image file where its holes are: qemu-img splits a 2 MiB data cluster at the file's holes " +
      '(reported "zero": true); blkgraph reports the whole cluster as data',
  },
  { test: /^map --output=json on short-top\.qcow2 /, why: "map past the end of a shorter backing file says depth 1; qemu-img says 0" },
  {
    test: /^info --output=json on (bitmaps|w-bitmap)\.qcow2 /,
    why: 'info lists no "bitmaps" in format-specific (the "bitmap" helper\'s branch adds them)',
  },
  {
    test: / on bitmaps-cleared\.qcow2 /,
    why: "no warning that a program lacking bitmap support modified the file, and check counts the bitmap clusters as leaks " +
      '(the "bitmap" helper\'s branch)',
  },
  {
    test: /^check -r leaks (--output=json )?on (bad-lowref|bad-rebuild|bad-zero-refcount|v-zeroref|bad-refblock)\.qcow2 /,
    why: "check -r leaks on an image whose refcounts need a rebuild: qemu-img prints no report and fails " +
      "('Check failed: Input/output error'); blkgraph prints the report",
  },
  {
    test: / on bad-refblock\.qcow2 /,
    why: "a misaligned refcount block: qemu-img marks the image corrupt, cannot read any refcount " +
      "(internal errors, 'Check failed') and map warns; blkgraph reports one corruption and repairs it",
  },
  {
    test: /^map --output=json on bad-l2\.qcow2 /,
    why: "map meets a misaligned L2 entry: qemu-img has printed '[' (and the corruption event) before failing; blkgraph prints nothing",
  },
  {
    test: / on v-missing-backing\.qcow2 /,
    why: "the missing backing file's message: qemu-img says 'Could not open backing file: Could not open ...: No such file or " +
      "directory'; blkgraph names the file and says 'Cannot open ... read-only'",
  },
];

/** The known difference a test name matches, if any (printed as a SKIP line). */
function known(name: string): string | undefined {
  const k = KNOWN.find((k) => k.test.test(name));
  if (k) console.warn(`SKIP: ${name}: known difference from qemu-img 7.2: ${k.why}`);
  return k?.why;
}

const registered: string[] = [];

/** Deno.test, skipped with a SKIP line where the name matches a known difference. */
function test(name: string, fn: () => Promise<void>): void {
  registered.push(name);
  Deno.test({ name, ignore: known(name) !== undefined, fn });
}

/** Our CLI on `args` (the recorded command line, `@IMG@` the unpacked image) against QEMU's answer. */
async function assertCliSays(name: string, img: string, line: string, opts: { sha?: boolean } = {}): Promise<void> {
  const q = await qemuSays(name, img, line);
  const dir = img.slice(0, img.lastIndexOf("/"));
  const ours = await cli(splitWords(line).map((w) => (w === "@IMG@" ? img : w.replaceAll("@DIR@", dir))));
  if (line.startsWith("map --output=json")) ours.stdout = withoutCompressedKey(ours.stdout, q.stdout);
  // QEMU answers on its own unpacked copy: how the file system allocated two copies' blocks differs, so disk sizes never compare.
  const norm = withoutDiskSize;
  assert.equal(ours.code, q.code, `${line}: exit code (stderr: ${ours.stderr})`);
  assertOutput(norm(ours.stdout), { ...q, stdout: norm(q.stdout) }, "stdout", line, dir);
  assertOutput(ours.stderr.replaceAll("blkgraph: ", "qemu-img: "), q, "stderr", line, dir);
  if (opts.sha) assert.equal(sha256(await Deno.readFile(img)), q.imageSha256, `${line}: the image differs from qemu-img's result`);
}

for (const [name, rec] of FIXTURES) {
  const qcow2 = name.endsWith(".qcow2");
  test(`pread() reads ${name} as qemu-img convert -O raw does (${rec.what})`, async () => {
    await using dir = await tempDir();
    const img = unpack(dir.path, name);
    if (rec.raw === null) {
      // qemu-img cannot read it either: we must fail with a BlockError, not read something.
      const err = await (async () => {
        await using node = await open(img, { readOnly: true });
        await digestNode(node);
      })().then(() => undefined, (e) => e);
      assert.ok(
        err instanceof BlockError,
        `expected a BlockError as qemu-img convert failed (${rec.runs["convert -O raw @IMG@ @DIR@/raw"].stderr.trim()}), got ${err}`,
      );
      return;
    }
    await using node = await open(img, { readOnly: true });
    assert.equal(node.driver.name, qcow2 ? "qcow2" : "raw");
    assert.equal(node.length, rec.virtualSize);
    assert.equal(firstDiffMiB(await digestNode(node), rec.raw), -1, "first MiB that differs from qemu-img's");
  });

  test(`map --output=json on ${name} prints what qemu-img map prints`, async () => {
    await using dir = await tempDir();
    await assertCliSays(name, unpack(dir.path, name), "map --output=json @IMG@");
  });

  test(`info --output=json on ${name} prints what qemu-img info prints`, async () => {
    await using dir = await tempDir();
    await assertCliSays(name, unpack(dir.path, name), "info --output=json @IMG@");
  });

  if (!qcow2) continue;
  test(`check on ${name} prints what qemu-img check prints (human and JSON, messages, exit code)`, async () => {
    await using dir = await tempDir();
    const img = unpack(dir.path, name);
    await assertCliSays(name, img, "check @IMG@");
    await assertCliSays(name, img, "check --output=json @IMG@");
  });

  if (!rec.runs[REPAIR_RUNS[0]]) continue;
  for (const line of REPAIR_RUNS) {
    test(`${line.replace(" @IMG@", "")} on ${name} repairs it as qemu-img does (output, exit code, the same bytes)`, async () => {
      await using dir = await tempDir();
      await assertCliSays(name, unpack(dir.path, name), line, { sha: true });
    });
  }
}

Deno.test("every known difference from qemu-img names at least one fixture test (none is left over after a rename)", () => {
  for (const k of KNOWN) assert.ok(registered.some((n) => k.test.test(n)), `no test matches ${k.test}`);
});

Deno.test("unpack() refuses a fixture file whose bytes do not match the recorded sha256", async () => {
  await using dir = await tempDir();
  const name = "w-1M.qcow2";
  const rec = manifest().fixtures[name];
  const saved = rec.sha256[name];
  rec.sha256[name] = "0".repeat(64);
  try {
    assert.throws(() => unpack(dir.path, name), /does not match its recorded sha256/);
  } finally {
    rec.sha256[name] = saved;
  }
  assert.equal(sha256(fixtureBytes(name)), saved);
});

/** A recorded run made comparable with a live one: no disk sizes, no timings. */
function comparable(r: QemuRun, dir: string): string[] {
  const norm = (s: string) =>
    withoutDiskSize(inDir(s, dir)).replace(/ \d+ ops; .*$/gm, " N ops; TIME").replace(/Run completed in \d+\.\d+ seconds\./, "T");
  return [String(r.code), norm(r.stdout), norm(r.stderr), r.stdoutSha256 ?? "", r.stderrSha256 ?? "", r.imageSha256];
}

Deno.test({
  name: "the recorded answers in tests/testdata/qcow2/manifest.json are what this machine's qemu-img says",
  ignore: skipUnless("qemu-img", "qemu-io"),
  async fn(t) {
    const m = manifest();
    const version = (await new Deno.Command("qemu-img", { args: ["--version"], stdout: "piped" }).output()).stdout;
    const now = new TextDecoder().decode(version).split("\n")[0];
    if (now !== m.qemu) console.warn(`fixtures were recorded with ${m.qemu}; this is ${now}`);
    for (const [name, rec] of FIXTURES) {
      await t.step(name, async () => {
        for (const [line, r] of Object.entries(rec.runs)) {
          await using dir = await tempDir();
          const img = unpack(dir.path, name);
          const live = await execLine(line, img, dir.path);
          const long = (s: string, h?: string) => (h ? sha256(new TextEncoder().encode(s.replaceAll(dir.path, "@DIR@"))) : "");
          const got = { ...live, stdoutSha256: long(live.stdout, r.stdoutSha256), stderrSha256: long(live.stderr, r.stderrSha256) };
          if (r.stdoutSha256) got.stdout = r.stdout;
          if (r.stderrSha256) got.stderr = r.stderr;
          assert.deepEqual(comparable(got, dir.path), comparable(r, dir.path), `${name}: ${line}`);
          if (line.startsWith("convert -O raw")) assert.deepEqual(live.code === 0 ? digestFile(`${dir.path}/raw`) : null, rec.raw, name);
        }
      });
    }
    await t.step("created", async () => {
      await using dir = await tempDir();
      for (const [key, want] of Object.entries(m.created)) {
        const [o, size] = key.split("|");
        const line = `create -q -f qcow2 ${o ? `-o ${o} ` : ""}@IMG@ ${size}`;
        await execLine(line, `${dir.path}/c.qcow2`, dir.path);
        const bytes = await Deno.readFile(`${dir.path}/c.qcow2`);
        assert.deepEqual([sha256(bytes), bytes.length], [want.sha256, want.size], key);
        await Deno.remove(`${dir.path}/c.qcow2`);
      }
    });
    await t.step("damaged", async () => {
      for (const [key, want] of Object.entries(m.damaged)) {
        const [base, seed] = key.split("|");
        for (const line of DAMAGED_RUNS) {
          await using dir = await tempDir();
          const bytes = fixtureBytes(base);
          damage(bytes, Number(seed));
          assert.equal(sha256(bytes), want.sha256, `${key}: damage() no longer makes the recorded image`);
          const img = `${dir.path}/d-${seed}.qcow2`;
          await Deno.writeFile(img, bytes);
          const live = await execLine(line, img, dir.path);
          const r = want.runs[line];
          const long = (s: string, h?: string) => (h ? sha256(new TextEncoder().encode(s.replaceAll(dir.path, "@DIR@"))) : "");
          const got = { ...live, stdoutSha256: long(live.stdout, r.stdoutSha256), stderrSha256: long(live.stderr, r.stderrSha256) };
          if (r.stdoutSha256) got.stdout = r.stdout;
          if (r.stderrSha256) got.stderr = r.stderr;
          assert.deepEqual(comparable(got, dir.path), comparable(r, dir.path), `${key}: ${line}`);
        }
      }
    });
  },
});
