/**
 * What a read buffer's alignment costs: FFI `pread` of a page-cached file
 * into buffers whose first byte sits at a page, a cache line, or 16 and 28
 * bytes past one (where `new Uint8Array(n)` and an NBD reply's payload land),
 * and `pwrite` from the same buffers. The kernel copies a read into the
 * buffer; on AMD EPYC that copy runs at a third of its speed into a buffer
 * that is not cache-line aligned. `ioBuffer()` (core/_io_buffer.ts) is the
 * answer.
 *
 * Run: `deno run -A bench/run.ts --only alignment`.
 *
 * @module
 */

import { type BenchOptions, type BenchTable, median } from "./_table.ts";
import { ioBuffer } from "../core/_io_buffer.ts";

const OFFSETS = [0, 64, 16, 28];

/** Bytes per second of `dst.set(src)` for a page-aligned `src` and `dst` `skew` bytes past a page. */
function setRate(size: number, skew: number, runs: number, quick: boolean): number {
  const src = ioBuffer(size).fill(5);
  const dst = ioBuffer(size + 4096);
  const reps = Math.max(100, ((quick ? 64 : 1024) << 20) / size);
  const rates: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) dst.set(src, skew);
    rates.push((size * reps) / ((performance.now() - t0) / 1000) / 1e9);
  }
  return median(rates);
}

/** The memory-copy table: `TypedArray.set` (glibc's memmove) by how far the destination sits past the source modulo a page. */
function copyTable(opts: BenchOptions): BenchTable {
  const skews = [0, 16, 28, 48, 64, 2048];
  const rows: (string | number)[][] = [];
  for (const size of [4096, 65536, 1 << 20]) {
    const rates = skews.map((k) => setRate(size, k, opts.runs, opts.quick));
    rows.push([size >= 1 << 20 ? `${size >> 20} MiB` : `${size >> 10} KiB`, ...rates.map((r) => r.toFixed(1))]);
  }
  return {
    title: "Memory copies: TypedArray.set GB/s by destination offset past a page-aligned source",
    columns: ["size", ...skews.map((k) => `+${k} B`)],
    rows,
    notes: [
      `Median of ${opts.runs}; the same buffers copied over and over (in cache). glibc copies these sizes with \`rep movsb\`, which on`,
      "AMD EPYC runs at ~2 GB/s instead of ~35 when the destination sits 1-31 bytes past the source modulo 4096.",
    ],
  };
}

/** Runs the alignment tables. */
export async function run(opts: BenchOptions): Promise<BenchTable[]> {
  return [await readTable(opts), copyTable(opts)];
}

/** The read table: FFI pread/pwrite into buffers at several offsets from a page. */
async function readTable(opts: BenchOptions): Promise<BenchTable> {
  const file = `${opts.dir}/align.raw`;
  const fileSize = opts.quick ? 16 << 20 : 256 << 20;
  const fill = new Uint8Array(1 << 20);
  crypto.getRandomValues(fill.subarray(0, 65536));
  await using f = await Deno.open(file, { create: true, write: true, read: true });
  for (let at = 0; at < fileSize; at += fill.length) await f.write(fill);
  const libc = Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
    pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
    pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  });
  const fd = libc.symbols.open(new TextEncoder().encode(file + "\0"), 2);
  const rows: (string | number)[][] = [];
  try {
    for (const size of [4096, 65536, 2 << 20]) {
      const base = ioBuffer(size + 4096);
      const bytes = opts.quick ? fileSize : size === 4096 ? 128 << 20 : fileSize;
      const rate = (op: "pread" | "pwrite", buf: Uint8Array, total: number) => {
        const t0 = performance.now();
        for (let off = 0; off < total; off += size) libc.symbols[op](fd, buf, BigInt(size), BigInt(off % fileSize));
        return total / ((performance.now() - t0) / 1000) / 1e9;
      };
      const aligned: number[] = [];
      for (const o of OFFSETS) {
        const buf = base.subarray(o, o + size);
        const reads: number[] = [];
        const writes: number[] = [];
        for (let r = 0; r < opts.runs; r++) {
          reads.push(rate("pread", buf, bytes));
          writes.push(rate("pwrite", buf, Math.min(bytes, 64 << 20)));
        }
        const rd = median(reads);
        if (o === 0) aligned.push(rd);
        rows.push([
          size >= 1 << 20 ? `${size >> 20} MiB` : `${size >> 10} KiB`,
          o === 0 ? "page" : o === 64 ? "cache line (64 B)" : `${o} B past a page`,
          rd.toFixed(2),
          median(writes).toFixed(2),
          (rd / aligned[0]).toFixed(2),
        ]);
      }
    }
  } finally {
    libc.symbols.close(fd);
    libc.close();
  }
  return {
    title: "Read buffer alignment: FFI pread/pwrite on a page-cached file",
    columns: ["size", "buffer start", "pread GB/s", "pwrite GB/s (overwrite)", "pread / page-aligned"],
    rows,
    notes: [
      `Median of ${opts.runs} passes over a ${fileSize >> 20} MiB file (4 KiB reads: 128 MiB per pass), one request at a time.`,
      "A plain `new Uint8Array(n)` starts 16 bytes past a page (n >= 128 KiB, glibc's mmap threshold) or at any 16-byte boundary.",
    ],
  };
}
