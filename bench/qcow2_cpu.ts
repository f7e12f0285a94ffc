/**
 * CPU time per request (user + system, all threads) of blkgraph's qcow2
 * node and of `qemu-img bench` on the same image: a figure that a loaded
 * machine disturbs far less than requests per second, because waiting for
 * a CPU costs no CPU time. Random 4 KiB / 64 KiB reads and overwrites on a
 * fully allocated 1 GiB image (64 KiB clusters), page-cached, writeback.
 * qemu-img's figure includes its start-up (a few ms over 10^5 requests).
 *
 *     deno run -A bench/qcow2_cpu.ts [--runs N]
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import { open } from "../mod.ts";
import { drive, randomOffsets, runCmd, writeFilledFile } from "./_drive.ts";
import { median } from "./_table.ts";

const CASES = [
  { op: "read", size: 4096, depth: 16, count: 200000 },
  { op: "read", size: 4096, depth: 1, count: 200000 },
  { op: "read", size: 65536, depth: 16, count: 50000 },
  { op: "write", size: 4096, depth: 16, count: 100000 },
  { op: "write", size: 65536, depth: 16, count: 30000 },
] as const;

/** Our CPU µs per request for one case, measured in this process. */
async function ours(img: string, c: (typeof CASES)[number]): Promise<number> {
  await using node = await open(img, { format: "qcow2" });
  await drive(node, c.op, c.size, c.depth, randomOffsets(2000, c.size, node.length)); // warm the L2 cache
  const offs = randomOffsets(c.count, c.size, node.length);
  const c0 = process.cpuUsage();
  await drive(node, c.op, c.size, c.depth, offs);
  const d = process.cpuUsage(c0);
  return (d.user + d.system) / c.count;
}

/** qemu-img bench's CPU µs per request, from /usr/bin/time. */
async function qemu(img: string, c: (typeof CASES)[number]): Promise<number> {
  const args = ["-f", "%U %S", "qemu-img", "bench", "-f", "qcow2", "-t", "writeback", "-i", "io_uring"];
  args.push("-d", String(c.depth), "-c", String(c.count), "-s", String(c.size), ...(c.op === "write" ? ["-w"] : []), img);
  const out = await new Deno.Command("/usr/bin/time", { args, stdout: "null", stderr: "piped" }).output();
  const [u, s] = new TextDecoder().decode(out.stderr).trim().split("\n").at(-1)!.split(" ").map(Number);
  return ((u + s) * 1e6) / c.count;
}

if (import.meta.main) {
  const runs = Number(parseArgs({ args: Deno.args, options: { runs: { type: "string", default: "5" } } }).values.runs);
  const dir = await Deno.makeTempDir({ prefix: "blkgraph-cpu-" });
  try {
    await writeFilledFile(`${dir}/full.raw`, 1 << 30);
    await runCmd("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", `${dir}/full.raw`, `${dir}/full.qcow2`]);
    await Deno.remove(`${dir}/full.raw`);
    console.log("| case | blkgraph CPU µs/req | qemu-img bench CPU µs/req | ratio (qemu/ours) |\n|---|---|---|---|");
    for (const c of CASES) {
      const o: number[] = [], q: number[] = [];
      for (let i = 0; i < runs; i++) o.push(await ours(`${dir}/full.qcow2`, c)), q.push(await qemu(`${dir}/full.qcow2`, c));
      const mo = median(o), mq = median(q);
      console.log(`| ${c.op} ${c.size / 1024} KiB depth ${c.depth} | ${mo.toFixed(2)} | ${mq.toFixed(2)} | ${(mq / mo).toFixed(2)} |`);
    }
    console.log(
      `\nMedian of ${runs} runs; qemu-img bench -f qcow2 -t writeback -i io_uring -d D -c N -s S [-w] IMG under /usr/bin/time -f "%U %S".`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
