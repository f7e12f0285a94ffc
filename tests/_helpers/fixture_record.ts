/**
 * Second half of tests/testdata/make.sh: runs qemu-img on every image the
 * script made (listed in its plan.tsv) and writes what it said to
 * manifest.json, with the images gzipped beside it.
 *
 * ```sh
 * deno run -A tests/_helpers/fixture_record.ts WORKDIR OUTDIR
 * ```
 *
 * Each fixture is copied with its companions into a scratch directory and
 * every command line runs on a fresh copy there; the scratch path is written
 * `@DIR@` in the recorded output.
 *
 * @module
 */

import { gzipSync } from "node:zlib";
import {
  DAMAGED_RUNS,
  type DamagedRecord,
  digestFile,
  execLine,
  type FixtureRecord,
  type Manifest,
  type QemuRun,
  REPAIR_RUNS,
  sha256,
  STANDARD_RUNS,
  writeSparse,
} from "./fixtures.ts";

const [work, out] = Deno.args;
const scratch = `${work}/scratch`;
const LONG = 16384;

/** Base64 of bytes (a byte at a time: no argument-count limit). */
function base64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

/** Copies a fixture and its companions into a fresh scratch directory; returns the image's path there. */
async function fresh(name: string, files: string[]): Promise<string> {
  await Deno.remove(scratch, { recursive: true }).catch(() => {});
  await Deno.mkdir(scratch);
  // Sparse as unpack() writes them, so what qemu-img says about holes (map of a raw file) is what a test sees.
  for (const f of [name, ...files]) writeSparse(`${scratch}/${f}`, await Deno.readFile(`${work}/${f}`));
  return `${scratch}/${name}`;
}

/** Runs one command line on a fresh copy and makes its output placeholder-relative (long output: a head, a hash and the whole text gzipped). */
async function recordRun(name: string, files: string[], line: string): Promise<QemuRun> {
  const run = await execLine(line, await fresh(name, files), scratch);
  for (const stream of ["stdout", "stderr"] as const) {
    const text = run[stream].replaceAll(scratch, "@DIR@");
    run[stream] = text;
    if (text.length <= LONG) continue;
    run[`${stream}Sha256`] = sha256(new TextEncoder().encode(text));
    run[`${stream}Gz`] = base64(gzipSync(new TextEncoder().encode(text), { level: 9 }));
    run[stream] = text.slice(0, text.lastIndexOf("\n", 4096) + 1);
  }
  return run;
}

async function record(name: string, what: string, files: string[], lines: string[]): Promise<FixtureRecord> {
  const hashes: Record<string, string> = {};
  for (const f of [name, ...files]) hashes[f] = sha256(await Deno.readFile(`${work}/${f}`));
  const runs: Record<string, QemuRun> = {};
  let raw: [string, number][] | null = null;
  for (const line of lines) {
    runs[line] = await recordRun(name, files, line);
    if (line === STANDARD_RUNS[4] && runs[line].code === 0) raw = digestFile(`${scratch}/raw`);
  }
  const info = runs[STANDARD_RUNS[0]];
  const virtualSize = info.code === 0 ? JSON.parse(info.stdout)["virtual-size"] as number : -1;
  return { what, files, sha256: hashes, virtualSize, raw, runs };
}

const plan = (await Deno.readTextFile(`${work}/plan.tsv`)).split("\n").filter((l) => l).map((l) => l.split("\t"));
const version = new TextDecoder().decode((await new Deno.Command("qemu-img", { args: ["--version"], stdout: "piped" }).output()).stdout);
const manifest: Manifest = { qemu: version.split("\n")[0], fixtures: {}, created: {}, damaged: {} };
const keep = new Set<string>();
for (const [, name, what, files] of plan.filter((p) => p[0] === "fixture")) {
  const deps = files ? files.split(" ").filter((f) => f) : [];
  const lines = [...STANDARD_RUNS];
  if (plan.some((p) => p[0] === "repair" && p[1] === name)) lines.push(...REPAIR_RUNS);
  lines.push(...plan.filter((p) => p[0] === "run" && p[1] === name).map((p) => p[2]));
  manifest.fixtures[name] = await record(name, what, deps, lines);
  for (const f of [name, ...deps]) keep.add(f);
}
for (const [, opts, size, hash, bytes] of plan.filter((p) => p[0] === "create")) {
  manifest.created[`${opts}|${size}`] = { sha256: hash, size: Number(bytes) };
}
for (const [, base, seed, file] of plan.filter((p) => p[0] === "damaged")) {
  const runs: Record<string, QemuRun> = {};
  for (const line of DAMAGED_RUNS) runs[line] = await recordRun(file, [], line);
  const rec: DamagedRecord = { sha256: sha256(await Deno.readFile(`${work}/${file}`)), runs };
  manifest.damaged[`${base}|${seed}`] = rec;
}

for await (const e of Deno.readDir(out)) if (e.name.endsWith(".gz") || e.name === "manifest.json") await Deno.remove(`${out}/${e.name}`);
for (const f of [...keep].sort()) await Deno.writeFile(`${out}/${f}.gz`, gzipSync(await Deno.readFile(`${work}/${f}`), { level: 9 }));
await Deno.writeTextFile(`${out}/manifest.json`, JSON.stringify(manifest, null, 1) + "\n");
console.log(`fixture_record: ${Object.keys(manifest.fixtures).length} fixtures, ${keep.size} files in ${out}`);
