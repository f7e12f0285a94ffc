// One write request over COPIED clusters that are contiguous on the host (normal and preallocated zero clusters, unallocated
// subclusters) is one host write, as QEMU's handle_copied run (iotest 066). Each case sets up two identical images with the real
// qemu-io, then runs the same write with a blkdebug rule that fails the N-th write_aio event, for N = 1..3, with the real qemu-io
// and with our drop-in: whether the write fails says how many data writes each issued. The maps (real qemu-img) must agree too.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuIo } from "../../../cli/qemu-io.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

interface Case {
  name: string;
  create: string[];
  setup: string[];
  write: string;
}

const CASES: Case[] = [
  {
    name: "normal, preallocated zero, normal (iotest 066)",
    create: ["-o", "cluster_size=64k", "192k"],
    setup: ["write -P 42 0 192k", "write -z 64k 64k"],
    write: "write -P 42 0 192k",
  },
  {
    name: "preallocated zero clusters written in part: head and tail filled with zeros, one write",
    create: ["-o", "cluster_size=64k", "1M"],
    setup: ["write -P 1 0 256k", "write -z 0 256k"],
    write: "write -P 2 10k 200k",
  },
  {
    name: "normal clusters not contiguous on the host: one write per host range",
    create: ["-o", "cluster_size=64k", "1M"],
    setup: ["write -P 1 128k 64k", "write -P 1 0 128k"],
    write: "write -P 3 0 192k",
  },
  {
    name: "a preallocated zero cluster then a new cluster right after it on the host: one write",
    create: ["-o", "cluster_size=64k", "1M"],
    setup: ["write -P 1 0 64k", "write -z 0 64k"],
    write: "write -P 4 32k 64k",
  },
  {
    name: "extended L2: allocated and unallocated subclusters of one cluster",
    create: ["-o", "cluster_size=64k,extended_l2=on", "1M"],
    setup: ["write -P 1 0 4k", "write -P 1 60k 4k", "write -P 1 64k 64k", "write -z 80k 8k"],
    write: "write -P 5 1k 100k",
  },
];

function spec(img: string, failAt: number): string {
  const states = [1, 2].map((s) => ({ event: "write_aio", state: s, new_state: s + 1 }));
  return "json:" + JSON.stringify({
    driver: "qcow2",
    file: {
      driver: "blkdebug",
      image: { driver: "file", filename: img },
      "set-state": states,
      "inject-error": [{ event: "write_aio", state: failAt, once: true }],
    },
  });
}

async function setup(path: string, c: Case): Promise<void> {
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...c.create.slice(0, -1), path, c.create.at(-1)!]);
  for (const cmd of c.setup) await runOk("qemu-io", ["-c", cmd, path]);
}

const quiet = (s: string) => s.split("\n").filter((l) => !l.includes("ops/sec")).join("\n");

for (const c of CASES) {
  Deno.test({
    name: `a write over host-contiguous clusters issues as many host writes as qemu-io: ${c.name}`,
    ignore: QEMU,
    async fn() {
      await using d = await tempDir();
      for (const n of [1, 2, 3]) {
        const q = `${d.path}/q${n}.qcow2`;
        const b = `${d.path}/b${n}.qcow2`;
        await setup(q, c);
        await setup(b, c);
        const real = await run("qemu-io", ["-c", c.write, spec(q, n)]);
        let out = "";
        const code = await qemuIo(["-c", c.write, spec(b, n)], { stdout: (s) => void (out += s), stderr: (s) => void (out += s) });
        assertEquals([code, quiet(out)], [real.code, quiet(real.stdout + real.stderr)], `${c.name}: fail write_aio #${n}`);
        const map = async (p: string) => (await runOk("qemu-img", ["map", "--output=json", p])).stdout;
        assertEquals(await map(b), await map(q), `${c.name}: map after failing write_aio #${n}`);
        const chk = await run("qemu-img", ["check", b]);
        assertEquals(chk.code, 0, chk.stdout + chk.stderr);
      }
    },
  });
}
