/**
 * "Any performance numbers?" — the cost of each qcow2 metadata mode. For
 * metadata-sync, ordered and lazy refcounts: allocating 4 KiB writes on an
 * empty image (one per 64 KiB cluster), overwrites of the now allocated
 * clusters, and reads; throughput and flushes per 1000 requests reaching the
 * host file. Next to it, `qemu-img bench` on the same workload and QEMU's
 * fdatasync count (`strace -f -c -e trace=fdatasync`).
 *
 *     deno run -A bench/crash_modes.ts [--quick]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { createImage, open } from "../core/open.ts";
import { getDriver } from "../core/registry.ts";
import "../drivers/file.ts";
import "../drivers/qcow2/mod.ts";
import { hasQemuImg, qemuImgBench } from "./_qemu.ts";
import { type BenchOptions, type BenchTable, fmtRate, toMarkdown } from "./_table.ts";

const CLUSTER = 65536;
const REQ = 4096;

interface Phase {
  name: string;
  rate: number;
  flushesPer1000: number;
}

function openOptions(mode: string): Record<string, unknown> {
  return mode === "lazy" ? { "lazy-refcounts": "on" } : { "metadata-mode": mode };
}

async function create(path: string, lazy: boolean, size: number): Promise<void> {
  if (getDriver("qcow2").create) {
    await createImage(path, "qcow2", size, { options: lazy ? { lazy_refcounts: "on" } : {} });
    return;
  }
  const args = ["create", "-f", "qcow2", ...(lazy ? ["-o", "lazy_refcounts=on"] : []), path, String(size)];
  const r = await new Deno.Command("qemu-img", { args, stdout: "null", stderr: "piped" }).output();
  if (!r.success) throw new Error(`qemu-img create failed: ${new TextDecoder().decode(r.stderr)}`);
}

const FLUSH_EVERY = 16;

async function timed(count: number, file: { flushCount: number }, body: (i: number) => Promise<void>): Promise<Omit<Phase, "name">> {
  const f0 = file.flushCount;
  const t0 = performance.now();
  for (let i = 0; i < count; i++) await body(i);
  const secs = (performance.now() - t0) / 1000;
  return { rate: count / secs, flushesPer1000: ((file.flushCount - f0) * 1000) / count };
}

async function ours(path: string, mode: string, count: number): Promise<Phase[]> {
  const buf = new Uint8Array(REQ).fill(0x5a);
  const phases: Phase[] = [];
  const spec = { ...openOptions(mode), driver: "qcow2", file: { driver: "file", filename: path } };
  await create(path, mode === "lazy", count * CLUSTER);
  let img = await open(spec);
  try {
    const last = async (i: number) => {
      if (i === count - 1) await img.flush();
    };
    phases.push({ name: "allocating write", ...await timed(count, img.file!, (i) => img.pwrite(i * CLUSTER, buf).then(() => last(i))) });
    phases.push({ name: "overwrite", ...await timed(count, img.file!, (i) => img.pwrite(i * CLUSTER, buf).then(() => last(i))) });
    phases.push({ name: "read", ...await timed(count, img.file!, (i) => img.pread(i * CLUSTER, buf)) });
  } finally {
    await img.close();
  }
  await create(path, mode === "lazy", count * CLUSTER);
  img = await open(spec);
  try {
    const name = `allocating write, flush every ${FLUSH_EVERY}`;
    phases.push({
      name,
      ...await timed(count, img.file!, async (i) => {
        await img.pwrite(i * CLUSTER, buf);
        if ((i + 1) % FLUSH_EVERY === 0) await img.flush();
      }),
    });
  } finally {
    await img.close();
  }
  return phases;
}

async function qemuFlushes(path: string, count: number, write: boolean, extra: string[]): Promise<number | undefined> {
  const args = ["-f", "-c", "-e", "trace=fdatasync", "qemu-img", "bench", "-f", "qcow2", "-t", "writeback", "-i", "threads", "-d", "1"];
  args.push("-c", String(count), "-s", "4k", "-S", "64k", ...(write ? ["-w"] : []), ...extra, path);
  try {
    const out = await new Deno.Command("strace", { args, stdout: "piped", stderr: "piped" }).output();
    const text = new TextDecoder().decode(out.stderr);
    const line = text.split("\n").find((l) => /\bfdatasync\s*$/.test(l.trim()));
    if (!line) return 0;
    return Number(line.trim().split(/\s+/)[3]);
  } catch {
    return undefined;
  }
}

/** Runs the benchmark and returns its table. */
export async function run(opts: BenchOptions): Promise<BenchTable> {
  const count = opts.quick ? 200 : 10000;
  const rows: (string | number)[][] = [];
  for (const mode of ["metadata-sync", "ordered", "lazy"]) {
    const path = `${opts.dir}/${mode}.qcow2`;
    const phases = await ours(path, mode, count);
    for (const p of phases) rows.push([`blkgraph ${mode}`, p.name, fmtRate(p.rate), p.flushesPer1000.toFixed(1)]);
    await Deno.remove(path);
  }
  const notes: string[] = [`${count} requests of 4 KiB, one per 64 KiB cluster, queue depth 1, host file in ${opts.dir}.`];
  if (hasQemuImg()) {
    for (const lazy of [false, true]) {
      const path = `${opts.dir}/qemu.qcow2`;
      const label = `qemu-img bench${lazy ? " lazy" : ""}`;
      const phases: [string, boolean, string[]][] = [
        ["allocating write", true, []],
        ["overwrite", true, []],
        ["read", false, []],
        [`allocating write, flush every ${FLUSH_EVERY}`, true, [`--flush-interval=${FLUSH_EVERY}`]],
      ];
      for (const [name, write, extra] of phases) {
        if (name.startsWith("allocating write")) await create(path, lazy, count * CLUSTER);
        // The fdatasync count comes from a separate run of the same phase on a copy in the same state.
        const copy = `${opts.dir}/qemu-copy.qcow2`;
        await Deno.copyFile(path, copy);
        const r = await qemuImgBench(path, {
          format: "qcow2",
          count,
          size: REQ,
          step: CLUSTER,
          write,
          depth: 1,
          aio: "threads",
          extraArgs: extra,
        });
        const syncs = await qemuFlushes(copy, count, write, extra);
        await Deno.remove(copy);
        rows.push([label, name, fmtRate(r.iops), syncs === undefined ? "n/a" : ((syncs * 1000) / count).toFixed(1)]);
        if (name === "allocating write" && !lazy) {
          notes.push(
            `QEMU: \`${r.command}\` (and \`--flush-interval=${FLUSH_EVERY}\`); lazy rows: image created with \`-o lazy_refcounts=on\`.`,
          );
          notes.push("QEMU's flushes: fdatasync calls counted by `strace -f -c -e trace=fdatasync` on the same command.");
        }
      }
      await Deno.remove(path);
    }
  }
  return {
    title: "Metadata modes",
    columns: ["implementation / mode", "workload", "requests/s", "flushes per 1000 requests"],
    rows,
    notes,
  };
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { quick: { type: "boolean", default: false } } });
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-modes-" });
  try {
    console.log(toMarkdown(await run({ quick: values.quick, runs: 1, dir })));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
