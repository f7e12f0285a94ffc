/**
 * Measures the ways Deno can do positional I/O on a host file, to pick the
 * one the `file` driver uses: `Deno.FsFile` seek+read/write (async and sync),
 * `node:fs` readSync/writeSync with a position, and libc `pread`/`pwrite`
 * through FFI. Random 4 KiB and 64 KiB requests on a page-cached 64 MiB file.
 *
 * Run: `deno run -A bench/file_candidates.ts` (figures in bench/README.md).
 *
 * @module
 */

import * as fs from "node:fs";

const FILE_SIZE = 64 << 20;

/** One candidate's result. */
export interface CandidateResult {
  /** Candidate name. */
  name: string;
  /** Request size in bytes. */
  size: number;
  /** "read" or "write". */
  op: string;
  /** Requests per second. */
  iops: number;
  /** Microseconds per request. */
  usPerOp: number;
}

type Op = (fd: number, file: Deno.FsFile, buf: Uint8Array, offset: number) => void | Promise<void>;

function candidates(): Record<string, { read: Op; write: Op }> {
  const out: Record<string, { read: Op; write: Op }> = {
    "Deno.FsFile seek+read (async)": {
      read: async (_fd, f, b, o) => {
        await f.seek(o, Deno.SeekMode.Start);
        await f.read(b);
      },
      write: async (_fd, f, b, o) => {
        await f.seek(o, Deno.SeekMode.Start);
        await f.write(b);
      },
    },
    "Deno.FsFile seekSync+readSync": {
      read: (_fd, f, b, o) => {
        f.seekSync(o, Deno.SeekMode.Start);
        f.readSync(b);
      },
      write: (_fd, f, b, o) => {
        f.seekSync(o, Deno.SeekMode.Start);
        f.writeSync(b);
      },
    },
    "node:fs readSync/writeSync(position)": {
      read: (fd, _f, b, o) => void fs.readSync(fd, b, 0, b.length, o),
      write: (fd, _f, b, o) => void fs.writeSync(fd, b, 0, b.length, o),
    },
  };
  if (Deno.permissions.querySync({ name: "ffi" }).state === "granted") {
    const lib = Deno.dlopen("libc.so.6", {
      pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "i32" },
      pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "i32" },
    });
    // Numbers for the 64-bit parameters (accepted at run time) avoid a BigInt per call.
    const sym = lib.symbols as unknown as Record<"pread" | "pwrite", (fd: number, b: Uint8Array, n: number, o: number) => number>;
    out["FFI libc pread/pwrite"] = {
      read: (fd, _f, b, o) => void sym.pread(fd, b, b.length, o),
      write: (fd, _f, b, o) => void sym.pwrite(fd, b, b.length, o),
    };
  }
  return out;
}

/** Runs every candidate and returns one row per candidate, size and op. */
export async function measureCandidates(opts: { iterations?: number; dir?: string } = {}): Promise<CandidateResult[]> {
  const dir = opts.dir ?? await Deno.makeTempDir({ prefix: "blkgraph-cand-" });
  const path = `${dir}/cand.img`;
  const chunk = new Uint8Array(1 << 20).fill(0x5a);
  const fd0 = fs.openSync(path, "w");
  for (let o = 0; o < FILE_SIZE; o += chunk.length) fs.writeSync(fd0, chunk, 0, chunk.length, o);
  fs.closeSync(fd0);
  const fd = fs.openSync(path, "r+");
  const file = Deno.openSync(path, { read: true, write: true });
  const results: CandidateResult[] = [];
  try {
    for (const [name, c] of Object.entries(candidates())) {
      for (const size of [4096, 65536]) {
        for (const op of ["read", "write"] as const) {
          const n = opts.iterations ?? (size === 4096 ? 20000 : 5000);
          const buf = new Uint8Array(size).fill(0xa5);
          const slots = FILE_SIZE / size;
          const offsets = Array.from({ length: n }, () => Math.floor(Math.random() * slots) * size);
          const fn = c[op];
          for (let i = 0; i < 200; i++) await fn(fd, file, buf, offsets[i % n]);
          const t0 = performance.now();
          for (let i = 0; i < n; i++) {
            const r = fn(fd, file, buf, offsets[i]);
            if (r) await r;
          }
          const secs = (performance.now() - t0) / 1000;
          results.push({ name, size, op, iops: n / secs, usPerOp: (secs * 1e6) / n });
        }
      }
    }
  } finally {
    file.close();
    fs.closeSync(fd);
    if (!opts.dir) await Deno.remove(dir, { recursive: true });
  }
  return results;
}

if (import.meta.main) {
  const rows = await measureCandidates();
  console.log("| candidate | size | op | requests/s | µs/request | MB/s |");
  console.log("|---|---|---|---|---|---|");
  for (const r of rows) {
    console.log(
      `| ${r.name} | ${r.size / 1024} KiB | ${r.op} | ${Math.round(r.iops)} | ${r.usPerOp.toFixed(2)} | ${
        (r.iops * r.size / 1e6).toFixed(0)
      } |`,
    );
  }
}
