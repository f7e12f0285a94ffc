/**
 * The `rbd` node on a one-node memstore Ceph cluster, next to QEMU's rbd
 * driver and Ceph's own client on the same cluster in the same run:
 *
 * - I/O: 4 KiB / 64 KiB / 4 MiB reads and writes at depth 1 and 16 on a
 *   filled 256 MiB image — `blkgraph bench`'s request loop (the same offset
 *   walk as `qemu-img bench -S`), `qemu-img bench -f raw rbd:…` and
 *   `rbd bench --io-pattern rand`;
 * - completion paths: `x-completion=auto|callback|eventfd|socket` side by side;
 * - import: a fully allocated 1 GiB qcow2 converted into a new RBD image,
 *   `blkgraph convert -W -m 16 -O raw … rbd:…` against
 *   `qemu-img convert -W -m 16 -O raw … rbd:…` (both as processes).
 *
 * The cluster is `BLKGRAPH_CEPH_CONF` when set, else started here with
 * tests/_helpers/ceph.sh (and restarted before each import: memstore
 * never gives memory back, so 10 GiB of imports would pile up). Each figure
 * is the median of `runs` runs; the machine is shared, so read the ratios.
 *
 * Run: `deno run -A bench/rbd_bench.ts [--quick]` or `deno task bench -- --only rbd`.
 *
 * @module
 */

import { open } from "../mod.ts";
import { runBench } from "../cli/bench.ts";
import { type BenchOptions, type BenchTable, fmtRate, median, toMarkdown } from "./_table.ts";
import { hasQemuImg, parseBenchOutput } from "./_qemu.ts";
import type { Completion } from "../drivers/rbd/_aio.ts";

const SCRIPT = new URL("../tests/_helpers/ceph.sh", import.meta.url).pathname;
const CLI = new URL("../cli/main.ts", import.meta.url).pathname;
const IMAGE_SIZE = 256 << 20;
/** Requests between two offsets of the walk (a prime, as in bench/file_bench.ts): scattered, every slot visited. */
const STRIDE = 40503;
const MiB = 1 << 20;

interface Cluster {
  conf: string;
  restart?(): Promise<string>;
  stop(): Promise<void>;
}

async function sh(cmd: string, args: string[], env?: Record<string, string>): Promise<string> {
  const out = await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed:\n${text}${new TextDecoder().decode(out.stderr)}`);
  return text;
}

async function startCluster(dir: string): Promise<Cluster | undefined> {
  const external = Deno.env.get("BLKGRAPH_CEPH_CONF");
  if (external) return { conf: external, stop: () => Promise.resolve() };
  if (!(await new Deno.Command("sh", { args: ["-c", "command -v ceph-mon && command -v rbd"], stdout: "null" }).output()).success) {
    return undefined;
  }
  const cdir = `${dir}/ceph`;
  const start = async () => (await sh("bash", [SCRIPT, "start", cdir, "--owner", String(Deno.pid)])).trim();
  const conf = await start();
  return {
    conf,
    restart: async () => {
      await sh("bash", [SCRIPT, "stop", cdir, "--purge"]);
      return await start();
    },
    stop: () => sh("bash", [SCRIPT, "stop", cdir, "--purge"]).then(() => {}),
  };
}

const name = (conf: string, image: string) => `rbd:rbd/${image}:conf=${conf}`;

/** The walk's step: `STRIDE` requests on, reduced modulo the image (qemu-img takes steps below 2 GiB). */
const step = (size: number) => size * (STRIDE % (IMAGE_SIZE / size));

interface Case {
  op: "read" | "write";
  size: number;
  depth: number;
  count: number;
}

async function ours(conf: string, image: string, c: Case, completion: Completion = "auto"): Promise<number> {
  const spec = { driver: "raw", file: { driver: "rbd", filename: name(conf, image), "x-completion": completion } };
  await using node = await open(spec, { readOnly: c.op === "read" });
  const params = { count: c.count, depth: c.depth, size: c.size, step: step(c.size), offset: 0, write: c.op === "write" };
  const p = { ...params, pattern: 0xa5, flushInterval: 0, drain: true };
  // Warm up the JIT and the connection.
  await runBench(node, { ...p, count: Math.min(200, c.count) });
  const t0 = performance.now();
  await runBench(node, p);
  // A write run ends with its data on the OSD, as qemu-img's close flushes.
  if (c.op === "write") await node.flush();
  return c.count / ((performance.now() - t0) / 1000);
}

async function qemu(conf: string, image: string, c: Case): Promise<{ rate: number; cmd: string }> {
  const args = ["bench", "-f", "raw", "-t", "writeback", "-d", String(c.depth), "-c", String(c.count), "-s", String(c.size)];
  args.push("-S", String(step(c.size)));
  if (c.op === "write") args.push("-w");
  args.push(name(conf, image));
  const t = parseBenchOutput(await sh("qemu-img", args));
  return { rate: c.count / t, cmd: `qemu-img ${args.join(" ")}` };
}

async function rbdBench(conf: string, image: string, c: Case): Promise<{ rate: number; cmd: string }> {
  const args = ["-c", conf, "bench", "--io-type", c.op, "--io-size", String(c.size), "--io-threads", String(c.depth)];
  args.push("--io-total", String(c.count * c.size), "--io-pattern", "rand", `rbd/${image}`);
  const out = await sh("rbd", args);
  const m = /elapsed:\s*([0-9.]+)\s+ops:\s*(\d+)\s+ops\/sec:\s*([0-9.]+)/.exec(out);
  if (!m) throw new Error(`rbd bench: no summary line in\n${out}`);
  return { rate: Number(m[3]), cmd: `rbd ${args.join(" ")}` };
}

async function ioTable(cl: Cluster, o: BenchOptions): Promise<BenchTable> {
  const image = `bench-${Deno.pid}`;
  await sh("rbd", ["-c", cl.conf, "create", `rbd/${image}`, "--size", `${IMAGE_SIZE / MiB}M`]);
  {
    // Fill it, so reads read data and writes overwrite (memstore does not grow on overwrites).
    await using fill = await open(name(cl.conf, image), { format: "raw" });
    const chunk = new Uint8Array(4 * MiB).fill(0x5a);
    const jobs: Promise<void>[] = [];
    for (let off = 0; off < IMAGE_SIZE; off += chunk.length) jobs.push(fill.pwrite(off, chunk));
    await Promise.all(jobs);
  }
  const scale = o.quick ? 0.1 : 1;
  const counts: Record<number, [number, number]> = { 4096: [4000, 16000], 65536: [2000, 6000], [4 * MiB]: [96, 384] };
  const rows: (string | number)[][] = [];
  const cmds = new Set<string>();
  const qemuOk = hasQemuImg();
  for (const size of [4096, 65536, 4 * MiB]) {
    for (const op of ["write", "read"] as const) {
      for (const depth of [1, 16]) {
        const count = Math.max(16, Math.round(counts[size][depth === 1 ? 0 : 1] * scale));
        const c: Case = { op, size, depth, count };
        const mine: number[] = [];
        const theirs: number[] = [];
        const cephs: number[] = [];
        for (let r = 0; r < o.runs; r++) {
          mine.push(await ours(cl.conf, image, c));
          if (qemuOk) {
            const q = await qemu(cl.conf, image, c);
            theirs.push(q.rate);
            if (r === 0 && cmds.size < 2) cmds.add(q.cmd.replace(cl.conf, "CONF").replace(image, "IMG"));
          }
          const b = await rbdBench(cl.conf, image, c);
          cephs.push(b.rate);
          if (r === 0 && cmds.size < 2) cmds.add(b.cmd.replace(cl.conf, "CONF").replace(image, "IMG"));
        }
        const m = median(mine);
        const q = theirs.length ? median(theirs) : undefined;
        const b = median(cephs);
        const sizeText = size >= MiB ? `${size / MiB} MiB` : `${size / 1024} KiB`;
        rows.push([
          op,
          sizeText,
          depth,
          fmtRate(m),
          fmtRate((m * size) / MiB),
          q ? fmtRate(q) : "n/a",
          q ? (m / q).toFixed(2) : "n/a",
          fmtRate(b),
          (m / b).toFixed(2),
        ]);
      }
    }
  }
  await sh("rbd", ["-c", cl.conf, "rm", "--no-progress", `rbd/${image}`]);
  return {
    title: "rbd node on a memstore cluster (rbd_cache on, writeback)",
    columns: ["op", "size", "depth", "blkgraph req/s", "MiB/s", "qemu-img bench req/s", "ratio", "rbd bench req/s", "ratio"],
    rows,
    notes: [
      `Median of ${o.runs} runs per tool, the tools alternating within each run; ${IMAGE_SIZE / MiB} MiB image, filled first.`,
      "blkgraph and qemu-img walk the same scattered offsets (step = size × (40503 mod slots), wrapping); rbd bench uses random offsets.",
      "For example (every case the same with its size, depth, count and op):",
      ...[...cmds].map((c) => `\`${c}\``),
    ],
  };
}

/** The rbd node's completion paths (`x-completion`, see drivers/rbd/_aio.ts) on 4 KiB requests. */
async function notifierTable(cl: Cluster, o: BenchOptions): Promise<BenchTable> {
  const image = `bench-n-${Deno.pid}`;
  await sh("rbd", ["-c", cl.conf, "create", `rbd/${image}`, "--size", `${IMAGE_SIZE / MiB}M`]);
  {
    await using fill = await open(name(cl.conf, image), { format: "raw" });
    const chunk = new Uint8Array(4 * MiB).fill(0x5a);
    await Promise.all(Array.from({ length: IMAGE_SIZE / chunk.length }, (_, i) => fill.pwrite(i * chunk.length, chunk)));
  }
  const modes: Completion[] = ["auto", "callback", "eventfd", "socket"];
  const rows: (string | number)[][] = [];
  for (const op of ["read", "write"] as const) {
    for (const depth of [1, 16]) {
      const c: Case = { op, size: 4096, depth, count: Math.round((depth === 1 ? 3000 : 12000) * (o.quick ? 0.1 : 1)) };
      const rates = new Map<Completion, number[]>(modes.map((m) => [m, []]));
      for (let r = 0; r < o.runs; r++) {
        for (const m of modes) rates.get(m)?.push(await ours(cl.conf, image, c, m));
      }
      const med = modes.map((m) => median(rates.get(m) ?? []));
      rows.push([op, depth, ...med.map(fmtRate), (med[0] / med[2]).toFixed(2)]);
    }
  }
  await sh("rbd", ["-c", cl.conf, "rm", "--no-progress", `rbd/${image}`]);
  return {
    title:
      "rbd node completion paths, 4 KiB: auto (callback when alone), callback, eventfd (worker-thread read), socket (event-loop poller)",
    columns: ["op", "depth", "auto req/s", "callback req/s", "eventfd req/s", "socket req/s", "auto / eventfd"],
    rows,
    notes: [`Median of ${o.runs} runs, the four \`x-completion\` modes alternating on the same image.`],
  };
}

/** A fully allocated qcow2 of `size` bytes (every cluster holds non-zero data). */
async function allocatedQcow2(dir: string, size: number): Promise<string> {
  const raw = `${dir}/import.raw`;
  const f = await Deno.open(raw, { create: true, write: true, truncate: true });
  const chunk = new Uint8Array(4 * MiB);
  for (let off = 0; off < size; off += chunk.length) {
    crypto.getRandomValues(chunk.subarray(0, 65536));
    for (let i = 65536; i < chunk.length; i += 65536) chunk.copyWithin(i, 0, 65536);
    chunk[0] = (off / chunk.length) & 0xff | 1;
    await f.write(chunk);
  }
  f.close();
  const qcow2 = `${dir}/import.qcow2`;
  await sh("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
  await Deno.remove(raw);
  return qcow2;
}

async function timed(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  await sh(cmd, args);
  return (performance.now() - t0) / 1000;
}

async function importTable(cl: Cluster, o: BenchOptions): Promise<BenchTable> {
  const size = o.quick ? 128 * MiB : 1024 * MiB;
  const src = await allocatedQcow2(o.dir, size);
  const mine: number[] = [];
  const theirs: number[] = [];
  let conf = cl.conf;
  let fresh = true;
  // Each import runs on a freshly started cluster (a memstore OSD that already holds an import is slower: 2.6-3.0 s against
  // 2.4-2.7 s here for the same command), and the tools take turns going first.
  const one = async (tool: "blkgraph" | "qemu-img", image: string) => {
    if (!fresh && cl.restart) conf = await cl.restart();
    fresh = false;
    const args = ["convert", "-W", "-m", "16", "-f", "qcow2", "-O", "raw", src, name(conf, image)];
    const t = tool === "blkgraph" ? await timed(Deno.execPath(), ["run", "-A", CLI, ...args]) : await timed("qemu-img", args);
    if (!cl.restart) await sh("rbd", ["-c", conf, "rm", "--no-progress", `rbd/${image}`]);
    return t;
  };
  for (let r = 0; r < o.runs; r++) {
    const a = `import-b-${Deno.pid}-${r}`;
    const b = `import-q-${Deno.pid}-${r}`;
    if (r % 2 === 0) {
      mine.push(await one("blkgraph", a));
      theirs.push(await one("qemu-img", b));
    } else {
      theirs.push(await one("qemu-img", b));
      mine.push(await one("blkgraph", a));
    }
  }
  const m = median(mine);
  const q = median(theirs);
  const mibs = (s: number) => (size / MiB / s).toFixed(0);
  return {
    title: `Import of a fully allocated ${size / MiB} MiB qcow2 into a new RBD image`,
    columns: ["tool", "seconds", "MiB/s", "blkgraph speed / qemu-img speed"],
    rows: [
      ["blkgraph convert -W -m 16 -O raw", m.toFixed(2), mibs(m), (q / m).toFixed(2)],
      ["qemu-img convert -W -m 16 -O raw", q.toFixed(2), mibs(q), "1.00"],
    ],
    notes: [
      `Median of ${o.runs} runs, each import on a freshly started cluster, the tools taking turns going first; wall time of the whole command (blkgraph: \`deno run -A cli/main.ts\`, Deno's start-up included).`,
    ],
  };
}

/** Runs the rbd benchmarks (none without Ceph). */
export async function run(o: BenchOptions): Promise<BenchTable[]> {
  const cl = await startCluster(o.dir);
  if (!cl || !hasQemuImg()) {
    return [{
      title: "rbd node",
      columns: ["note"],
      rows: [["skipped: needs ceph-mon, ceph-osd, rbd and qemu-img (apt-get install ceph-mon ceph-osd ceph-common qemu-block-extra)"]],
    }];
  }
  try {
    return [await ioTable(cl, o), await notifierTable(cl, o), await importTable(cl, o)];
  } finally {
    await cl.stop();
  }
}

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-bench-" });
  try {
    const runs = Number(Deno.args.find((a) => a.startsWith("--runs="))?.slice(7) ?? 5);
    for (const t of await run({ quick: Deno.args.includes("--quick"), runs, dir })) console.log(toMarkdown(t));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
