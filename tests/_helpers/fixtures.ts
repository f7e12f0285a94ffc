/**
 * The qcow2 fixtures of tests/testdata/qcow2/: images made by qemu-img and
 * qemu-io 7.2 (tests/testdata/make.sh) and, in manifest.json, what QEMU said
 * about each one (raw content as a sha256 per MiB, `qemu-img map`, `info`,
 * `check`, `check -r`, and a few more commands). Tests unpack a fixture into
 * a temporary directory and compare blkgraph with the recorded answers, so
 * they mean something without QEMU installed; fixtures_test.ts checks that
 * the answers are still what qemu-img says where it is installed.
 *
 * Paths in recorded output are written `@DIR@` (the directory the fixture
 * was unpacked into); {@linkcode inDir} puts a test's directory back.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { gunzipSync } from "node:zlib";
import type { BlockNode } from "../../mod.ts";
import { hasTool } from "./qemu.ts";

/** Where the fixtures live. */
export const FIXTURE_DIR: URL = new URL("../testdata/qcow2/", import.meta.url);

/** One recorded run of a QEMU tool: its arguments (paths as `@DIR@/...`), exit code and output. */
export interface QemuRun {
  /** The command line, as keyed in {@linkcode FixtureRecord.runs} (`@IMG@` for the image). */
  args: string;
  /** Exit code (of the last command of an `&&` chain that ran). */
  code: number;
  /** Standard output (of every command of the chain). */
  stdout: string;
  /** Standard error. */
  stderr: string;
  /** Set when stdout was longer than 16 KiB: its sha256 (stdout keeps the first lines). */
  stdoutSha256?: string;
  /** Set when stderr was longer than 16 KiB: its sha256 (stderr keeps the first lines). */
  stderrSha256?: string;
  /** Set when stdout was longer than 16 KiB: all of it, gzipped, base64 ({@linkcode manifest} puts it back in stdout). */
  stdoutGz?: string;
  /** Set when stderr was longer than 16 KiB: all of it, gzipped, base64 ({@linkcode manifest} puts it back in stderr). */
  stderrGz?: string;
  /** sha256 of the image file after the run (each run starts from a fresh copy). */
  imageSha256: string;
}

/** Everything recorded about one fixture image. */
export interface FixtureRecord {
  /** What the image holds, from make.sh. */
  what: string;
  /** Other files it needs beside it (backing files, data files). */
  files: string[];
  /** sha256 of the image file and of each companion. */
  sha256: Record<string, string>;
  /** Virtual size (from `qemu-img info`; -1 where info fails). */
  virtualSize: number;
  /** Guest content as `qemu-img convert -O raw` gives it: sha256 per MiB, run-length encoded as [hash, count]; null where convert fails. */
  raw: [string, number][] | null;
  /**
   * `qemu-img` (or `qemu-io`) runs on a fresh copy, keyed by their command
   * line: every fixture has {@linkcode STANDARD_RUNS}, some have more (make.sh's `runs` and `repairs`).
   */
  runs: Record<string, QemuRun>;
}

/** Runs recorded for every fixture. */
export const STANDARD_RUNS: readonly string[] = [
  "info --output=json @IMG@",
  "map --output=json @IMG@",
  "check --output=json @IMG@",
  "check @IMG@",
  "convert -O raw @IMG@ @DIR@/raw",
];

/** Runs recorded for the fixtures make.sh `repairs`. */
export const REPAIR_RUNS: readonly string[] = [
  "check -r leaks --output=json @IMG@",
  "check -r leaks @IMG@",
  "check -r all --output=json @IMG@",
  "check -r all @IMG@",
];

/** QEMU's answers on an image that make.sh damaged with check_differential's seed (the image is not kept). */
export interface DamagedRecord {
  /** sha256 of the damaged image (the test rebuilds it from the base fixture and checks this). */
  sha256: string;
  /** `check --output=json @IMG@`, `check -r leaks --output=json @IMG@`, `check -r all --output=json @IMG@`. */
  runs: Record<string, QemuRun>;
}

/** The runs recorded for each damaged image. */
export const DAMAGED_RUNS: readonly string[] = [
  "check --output=json @IMG@",
  "check -r leaks --output=json @IMG@",
  "check -r all --output=json @IMG@",
];

/** manifest.json. */
export interface Manifest {
  /** `qemu-img --version`, first line. */
  qemu: string;
  /** Fixture images by file name. */
  fixtures: Record<string, FixtureRecord>;
  /** What `qemu-img create -f qcow2 [-o OPTS] x SIZE` writes, keyed `OPTS|SIZE`. */
  created: Record<string, { sha256: string; size: number }>;
  /** Damaged images, keyed `BASE|SEED`. */
  damaged: Record<string, DamagedRecord>;
}

let cached: Manifest | undefined;

/** Puts a run's gzipped long output back in place (so every run holds all it printed). */
function inflate(run: QemuRun): void {
  for (const stream of ["stdout", "stderr"] as const) {
    const gz = run[`${stream}Gz`];
    if (gz === undefined) continue;
    run[stream] = new TextDecoder().decode(gunzipSync(Uint8Array.from(atob(gz), (c) => c.charCodeAt(0))));
    delete run[`${stream}Gz`];
    delete run[`${stream}Sha256`];
  }
}

/** The parsed manifest (long recorded output inflated). */
export function manifest(): Manifest {
  if (cached) return cached;
  const m = JSON.parse(Deno.readTextFileSync(new URL("manifest.json", FIXTURE_DIR))) as Manifest;
  for (const r of [...Object.values(m.fixtures), ...Object.values(m.damaged)]) Object.values(r.runs).forEach(inflate);
  cached = m;
  return m;
}

/** The record of one fixture; throws (naming make.sh) when there is none. */
export function fixture(name: string): FixtureRecord {
  const r = manifest().fixtures[name];
  if (!r) throw new Error(`no fixture '${name}' in tests/testdata/qcow2/manifest.json: add it to tests/testdata/make.sh and run it`);
  return r;
}

/** The recorded extra run `args` of a fixture (as written in make.sh); throws when it was not recorded. */
export function recordedRun(name: string, args: string): QemuRun {
  const r = fixture(name).runs[args];
  if (!r) throw new Error(`fixture '${name}' has no recorded run '${args}': add it to tests/testdata/make.sh and run it`);
  return r;
}

/** Replaces `@DIR@` with `dir` in recorded text. */
export function inDir(text: string, dir: string): string {
  return text.replaceAll("@DIR@", dir);
}

/** Hex sha256 of bytes. */
export function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

const MiB = 1 << 20;

/** Adds one MiB's hash to a run-length encoded list. */
function push(list: [string, number][], hash: string): void {
  const last = list[list.length - 1];
  if (last && last[0] === hash) last[1]++;
  else list.push([hash, 1]);
}

/** sha256 per MiB of bytes, run-length encoded (the form of {@linkcode FixtureRecord.raw}). */
export function digestBytes(bytes: Uint8Array): [string, number][] {
  const out: [string, number][] = [];
  for (let o = 0; o < bytes.length; o += MiB) push(out, sha256(bytes.subarray(o, Math.min(o + MiB, bytes.length))));
  return out;
}

/** sha256 per MiB of a file's bytes, read a MiB at a time, run-length encoded. */
export function digestFile(path: string): [string, number][] {
  const out: [string, number][] = [];
  using f = Deno.openSync(path, { read: true });
  const buf = new Uint8Array(MiB);
  for (;;) {
    let n = 0;
    while (n < MiB) {
      const got = f.readSync(buf.subarray(n));
      if (got === null) break;
      n += got;
    }
    if (n > 0) push(out, sha256(buf.subarray(0, n)));
    if (n < MiB) return out;
  }
}

/** sha256 per MiB of everything a node reads, run-length encoded. */
export async function digestNode(node: BlockNode): Promise<[string, number][]> {
  const out: [string, number][] = [];
  const buf = new Uint8Array(MiB);
  for (let o = 0; o < node.length; o += MiB) {
    const chunk = buf.subarray(0, Math.min(MiB, node.length - o));
    await node.pread(o, chunk);
    push(out, sha256(chunk));
  }
  return out;
}

/** Index of the first MiB whose hash differs between two digests, or -1. */
export function firstDiffMiB(a: [string, number][], b: [string, number][]): number {
  const flat = (d: [string, number][]) => d.flatMap(([h, n]) => Array<string>(n).fill(h));
  const x = flat(a);
  const y = flat(b);
  for (let i = 0; i < Math.max(x.length, y.length); i++) if (x[i] !== y[i]) return i;
  return -1;
}

/** Writes bytes to a new file, leaving all-zero 64 KiB blocks as holes (as the tools leave them). */
export function writeSparse(path: string, bytes: Uint8Array): void {
  using f = Deno.openSync(path, { write: true, create: true, truncate: true });
  const block = 65536;
  for (let o = 0; o < bytes.length; o += block) {
    const part = bytes.subarray(o, Math.min(o + block, bytes.length));
    if (part.some((b) => b !== 0)) {
      f.seekSync(o, Deno.SeekMode.Start);
      let done = 0;
      while (done < part.length) done += f.writeSync(part.subarray(done));
    }
  }
  f.truncateSync(bytes.length);
}

/** The bytes of one stored file (image or companion) of the fixtures. */
export function fixtureBytes(file: string): Uint8Array {
  return gunzipSync(Deno.readFileSync(new URL(`${file}.gz`, FIXTURE_DIR)));
}

/**
 * Unpacks a fixture image and the files it needs into `dir`; returns the
 * image's path. The bytes are checked against the recorded sha256.
 */
export function unpack(dir: string, name: string): string {
  const r = fixture(name);
  for (const file of [name, ...r.files]) {
    const bytes = fixtureBytes(file);
    const want = r.sha256[file];
    if (sha256(bytes) !== want) throw new Error(`fixture file ${file} does not match its recorded sha256 ${want}`);
    writeSparse(`${dir}/${file}`, bytes);
  }
  return `${dir}/${name}`;
}

/**
 * Asserts that `actual` is what a run printed on `stream`: the text, or for
 * long recorded output its sha256 (`dir`, where the fixture was unpacked, is
 * made `@DIR@` again before hashing), with the first differing line in the
 * message.
 */
export function assertOutput(actual: string, run: QemuRun, stream: "stdout" | "stderr", what = "", dir = ""): void {
  const hash = stream === "stdout" ? run.stdoutSha256 : run.stderrSha256;
  const head = run[stream];
  const relative = dir ? actual.replaceAll(dir, "@DIR@") : actual;
  if (hash ? sha256(new TextEncoder().encode(relative)) === hash : actual === head) return;
  const a = (hash ? relative : actual).split("\n");
  const b = head.split("\n");
  let i = 0;
  while (i < a.length && i < b.length - (hash ? 1 : 0) && a[i] === b[i]) i++;
  const where = hash ? "long output, compared by sha256; " : "";
  throw new Error(
    `${what ? what + ": " : ""}${stream} differs from \`${run.args}\`'s (${where}line ${i + 1}: got ${JSON.stringify(a[i])}, QEMU ${
      JSON.stringify(b[i])
    })`,
  );
}

/** Splits a command line at spaces; a word in single quotes may hold spaces (`''` is an empty word). */
export function splitWords(cmd: string): string[] {
  const words: string[] = [];
  for (const m of cmd.matchAll(/'([^']*)'|(\S+)/g)) words.push(m[1] ?? m[2]);
  return words;
}

/**
 * Runs a command line as make.sh records it (`qemu-img ARGS`, or `qemu-io
 * ARGS`, several joined by ` && `; `@IMG@` is `img`, `@DIR@` is `dir`) and
 * returns what it printed, the exit code of the last command that ran and
 * the image's sha256 afterwards.
 */
export async function execLine(line: string, img: string, dir: string): Promise<QemuRun> {
  const run: QemuRun = { args: line, code: 0, stdout: "", stderr: "", imageSha256: "" };
  const dec = new TextDecoder();
  for (const cmd of line.split(" && ")) {
    const words = splitWords(cmd).map((w) => (w === "@IMG@" ? img : w.replaceAll("@DIR@", dir)));
    const tool = words[0] === "qemu-io" ? words.shift()! : "qemu-img";
    // In the image's directory: qemu-img 7.2 resolves a relative data-file name against the working directory.
    const r = await new Deno.Command(tool, { args: words, cwd: dir, stdout: "piped", stderr: "piped" }).output();
    run.stdout += dec.decode(r.stdout);
    run.stderr += dec.decode(r.stderr);
    run.code = r.code;
    if (r.code !== 0) break;
  }
  run.imageSha256 = sha256(await Deno.readFile(img).catch(() => new Uint8Array()));
  return run;
}

/** True where qemu-img and qemu-io are installed (prints a SKIP line for each one that is not). */
export function hasQemu(): boolean {
  return hasTool("qemu-img") && hasTool("qemu-io");
}

/**
 * What QEMU says for the recorded command line `args` on fixture `name`,
 * as if run on `img` (where a test unpacked it): live where QEMU is
 * installed (`live: true`; on a copy unpacked beside it, so a repair does
 * not touch the test's file, with the copy's directory written as `img`'s),
 * else the recording with `@DIR@` made `img`'s directory.
 */
export async function qemuSays(name: string, img: string, args: string): Promise<QemuRun & { live: boolean }> {
  const dir = img.slice(0, img.lastIndexOf("/"));
  if (hasQemu()) {
    const copy = Deno.makeTempDirSync({ prefix: "blkgraph-qemu-" });
    try {
      const r = await execLine(args, unpack(copy, name), copy);
      return { ...r, stdout: r.stdout.replaceAll(copy, dir), stderr: r.stderr.replaceAll(copy, dir), live: true };
    } finally {
      Deno.removeSync(copy, { recursive: true });
    }
  }
  const r = recordedRun(name, args);
  return { ...r, stdout: inDir(r.stdout, dir), stderr: inDir(r.stderr, dir), live: false };
}

/**
 * Drops what depends on how a file's blocks are allocated on disk (qemu-img
 * info's `disk size:` line and `"actual-size"`), for comparing with a
 * recording made on another copy of the file.
 */
export function withoutDiskSize(text: string): string {
  return text.replace(/^disk size: .*\n/gm, "").replace(/^\s*"actual-size": \d+,\n/gm, "");
}

/** A recorded run's stdout parsed as JSON. */
export function parsed<T = unknown>(run: QemuRun): T {
  return JSON.parse(run.stdout) as T;
}

let compressedNoted = false;

/**
 * blkgraph's `map --output=json` prints a `"compressed"` key that qemu-img 7.2
 * does not (code-review §4.3 item 7; the "cli" helper is removing it). Until
 * then the key is dropped from our output, with a visible note, only where
 * QEMU's output has none; every other field is compared as printed.
 */
export function withoutCompressedKey(ours: string, qemu: string): string {
  if (qemu.includes('"compressed"') || !ours.includes('"compressed"')) return ours;
  if (!compressedNoted) console.warn('NOTE: blkgraph map --output=json prints "compressed" (qemu-img 7.2 does not); compared without it');
  compressedNoted = true;
  return ours.replace(/, "compressed": (true|false)/g, "");
}
