// Write-zeroes of part of a qcow2 cluster (or subcluster): where the rest of it already reads as zeros, QEMU zeroes the whole
// (sub)cluster through the L2 entry and writes no data (qcow2_co_pwrite_zeroes); where it does not, zero buffers are written.
// Each case runs the same qemu-io commands with the real qemu-io and with our drop-in on two identical images, then compares
// the layout (`qemu-img map --output=json`, real qemu-img) and the content (`qemu-img compare`).
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuImg } from "../../../cli/qemu-img.ts";
import { qemuIo } from "../../../cli/qemu-io.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

interface Case {
  name: string;
  create: string[];
  base?: { create: string[]; cmds: string[] };
  cmds: string[];
  /** Compare host offsets too (else only which ranges are data, zero or unallocated). */
  keepOffsets?: boolean;
}

const CASES: Case[] = [
  {
    name: "empty image, no backing file: the touched clusters become zero clusters",
    create: ["-o", "cluster_size=4k", "1M"],
    cmds: ["write -z 0 2k", "write -z 10k 2k", "write -z 17k 2k", "write -z 27k 2k"],
  },
  {
    name: "over an empty backing file (of 512-byte clusters)",
    base: { create: ["-o", "cluster_size=512", "1M"], cmds: [] },
    create: ["-o", "cluster_size=4k", "1M"],
    cmds: ["write -z 0 2k", "write -z 10k 2k", "write -z 17k 2k", "write -z 27k 2k"],
  },
  {
    name: "the backing file has data elsewhere in the cluster: zero buffers, the data stays visible",
    base: { create: ["-o", "cluster_size=512", "1M"], cmds: ["write -P 0x11 32k 1k", "write -P 0x11 43k 1k"] },
    create: ["-o", "cluster_size=4k", "1M"],
    cmds: ["write -z 34k 1k", "write -z 41k 1k", "write -z 35k 2k"],
  },
  {
    name: "the image itself has data in the cluster (allocated or not)",
    create: ["-o", "cluster_size=4k", "1M"],
    cmds: ["write -P 0x22 8k 4k", "write -z 9k 1k", "write -P 0x22 16k 4k", "write -z 16k 4k", "write -z 17k 1k"],
  },
  {
    name: "a request spanning clusters, and the partial last cluster of the image",
    create: ["-o", "cluster_size=4k", "1047552"],
    cmds: ["write -z 3k 6k", "write -z 1021k 2k", "write -P 0x33 1016k 1k", "write -z 1017k 2k"],
  },
  {
    name: "extended L2 entries: subclusters of 2 KiB are zeroed one by one",
    create: ["-o", "cluster_size=64k,extended_l2=on", "1M"],
    cmds: ["write -z 1k 2k", "write -P 0x44 70k 1k", "write -z 72k 2k", "write -z 67k 2k", "write -z 200k 3k"],
  },
  {
    name: "extended L2 entries: part of a compressed cluster is written as zero buffers",
    create: ["-o", "cluster_size=64k,extended_l2=on", "1M"],
    cmds: ["write -c -P 0x55 0 64k", "write -z 4k 124k", "write -c -P 0 128k 64k", "write -z 130k 2k"],
  },
  {
    name: "compat=0.10 without a backing file: the clusters are discarded",
    create: ["-o", "compat=0.10,cluster_size=4k", "1M"],
    cmds: ["write -P 0x66 0 64k", "write -z 0 16k", "write -z 20k 1k", "write -z 100k 1k", "write -z 200k 3k"],
  },
  {
    name: "compat=0.10 over a backing file: zero buffers",
    base: { create: ["-o", "cluster_size=512", "1M"], cmds: ["write -P 0x77 0 8k"] },
    create: ["-o", "compat=0.10,cluster_size=4k", "1M"],
    cmds: ["write -z 0 4k", "write -z 16k 1k", "write -z 32k 8k"],
  },
  {
    name: "preallocated zero clusters (write -z without -u) keep their host offset in the map, as qemu-img shows it",
    create: ["-o", "cluster_size=64k", "4M"],
    cmds: [
      "write -P 0x11 0 1M",
      "write -z 64k 128k",
      "write -z -u 256k 64k",
      "write -z 512k 64k",
      "write -z 1536k 256k",
      "write -z 896k 256k",
    ],
    keepOffsets: true,
  },
];

async function oneImage(dir: string, tag: string, c: Case, ours: boolean): Promise<string> {
  const img = `${dir}/${tag}.qcow2`;
  const extra: string[] = [];
  if (c.base) {
    const base = `${dir}/${tag}.base.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...c.base.create.slice(0, -1), base, c.base.create.at(-1)!]);
    for (const cmd of c.base.cmds) await runOk("qemu-io", ["-c", cmd, base]);
    extra.push("-b", base, "-F", "qcow2");
  }
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...extra, ...c.create.slice(0, -1), img, c.create.at(-1)!]);
  for (const cmd of c.cmds) {
    if (ours) {
      let err = "";
      const code = await qemuIo(["-c", cmd, img], { stdout: () => {}, stderr: (s) => void (err += s) });
      assertEquals([code, err], [0, ""], `${c.name}: ${cmd}`);
    } else {
      await runOk("qemu-io", ["-c", cmd, img]);
    }
  }
  return img;
}

for (const c of CASES) {
  Deno.test({
    name: `partial write-zeroes lays out clusters as qemu-io does: ${c.name}`,
    ignore: QEMU,
    async fn() {
      await using d = await tempDir();
      const q = await oneImage(d.path, "q", c, false);
      const b = await oneImage(d.path, "b", c, true);
      const map = async (p: string) => {
        const out = (await runOk("qemu-img", ["map", "--output=json", p])).stdout;
        return c.keepOffsets ? out : out.replace(/, "offset": \d+/g, "");
      };
      assertEquals(await map(b), await map(q), c.name);
      if (c.keepOffsets) {
        // Our own map of the image says what qemu-img's says.
        for (const fmt of ["json", "human"]) {
          let out = "";
          await qemuImg(["map", `--output=${fmt}`, b], { stdout: (s) => void (out += s), stderr: (s) => void (out += s) });
          assertEquals(out, (await runOk("qemu-img", ["map", `--output=${fmt}`, b])).stdout, `${c.name} (${fmt})`);
        }
      }
      const cmp = await run("qemu-img", ["compare", q, b]);
      assertEquals([cmp.code, cmp.stdout], [0, "Images are identical.\n"], c.name);
      const chk = await run("qemu-img", ["check", b]);
      assertEquals(chk.code, 0, chk.stdout + chk.stderr);
    },
  });
}

Deno.test({
  name: "write-zeroes over clusters that already read as zeros changes no L2 entry, so an l2_update rule does not fire (iotest 179)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const img = `${d.path}/t.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "64M"]);
    await runOk("qemu-io", [
      "-c",
      "write -z -u 20M 2M",
      "-c",
      "write -z 28M 2M",
      "-c",
      "write -P 1 40M 64k",
      "-c",
      "write -z 40M 64k",
      img,
    ]);
    const spec = `driver=qcow2,file.driver=blkdebug,file.image.filename=${img},file.inject-error.0.event=l2_update,` +
      "file.inject-error.0.immediately=on,file.inject-error.0.once=off";
    for (const cmd of ["write -z -u 20M 2M", "write -z 20M 2M", "write -z 28M 2M", "write -z 40M 64k"]) {
      const q = await run("qemu-io", ["--image-opts", spec, "-c", cmd]);
      let out = "";
      const code = await qemuIo(["--image-opts", spec, "-c", cmd], { stdout: (s) => void (out += s), stderr: (s) => void (out += s) });
      const lines = (s: string) => s.split("\n").filter((l) => !l.includes("ops/sec"));
      assertEquals([code, lines(out)], [q.code, lines(q.stdout + q.stderr)], cmd);
    }
  },
});
