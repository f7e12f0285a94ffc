// Differential test of checkQcow2() against qemu-img check: images made by
// qemu-img/qemu-io (snapshot, compressed cluster) are damaged at seeded
// random spots (refcounts, refcount table entries, L1 and L2 entries), then
// check, repair=leaks and repair=all must give the same messages, counters
// and exit codes as qemu-img, a repair we call clean must pass
// `qemu-img check`, and the repaired file must be byte-identical to
// qemu-img's (same leak fixes, same rebuilt refcount structure).
import assert from "node:assert/strict";
import { open } from "../../../mod.ts";
import { checkExitCode, checkQcow2, type CheckResult } from "../../../drivers/qcow2/check.ts";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const VARIANTS = [
  { cs: 65536, opts: "cluster_size=64k" },
  { cs: 4096, opts: "cluster_size=4k,refcount_bits=4" },
  { cs: 512, opts: "cluster_size=512,compat=0.10" },
  { cs: 65536, opts: "cluster_size=64k,refcount_bits=64,extended_l2=on" },
];

/** A small deterministic PRNG (LCG), so failures reproduce. */
function prng(seed: number): (n: number) => number {
  let x = seed;
  return (n) => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x % n;
  };
}

function damage(bytes: Uint8Array, seed: number): void {
  const rnd = prng(seed);
  const v = new DataView(bytes.buffer);
  const cs = 2 ** v.getUint32(20);
  const order = v.getUint32(4) === 3 ? v.getUint32(96) : 4;
  const reftable = Number(v.getBigUint64(48));
  const block = Number(v.getBigUint64(reftable));
  const l1 = Number(v.getBigUint64(40));
  const clusters = Math.ceil(bytes.length / cs);
  for (let n = 1 + rnd(3); n > 0; n--) {
    const kind = rnd(5);
    if (kind <= 1) {
      // A refcount off by one or zeroed.
      const c = rnd(clusters + 2);
      const bits = 2 ** order;
      const value = rnd(3);
      if (bits >= 8) {
        const at = block + (c * bits) / 8;
        bytes.fill(0, at, at + bits / 8);
        bytes[at + bits / 8 - 1] = value;
      } else {
        const per = 8 / bits;
        const at = block + Math.floor(c / per);
        const shift = (c % per) * bits;
        const mask = (1 << bits) - 1;
        bytes[at] = (bytes[at] & ~(mask << shift)) | ((value & mask) << shift);
      }
    } else if (kind === 2) {
      const choices = [0n, BigInt(block + 512), BigInt(clusters * cs * 4), BigInt(block) | 1n];
      v.setBigUint64(reftable + rnd(2) * 8, choices[rnd(choices.length)]);
    } else if (kind === 3) {
      const l2 = Number(v.getBigUint64(l1) & 0x00fffffffffffe00n);
      if (!l2) continue;
      const off = BigInt(rnd(clusters + 3) * cs);
      const choices = [(1n << 63n) | off, off, off | 1n, (1n << 63n) | (off + 512n), (1n << 62n) | off, 0n, (1n << 63n) | off | 2n];
      v.setBigUint64(l2 + rnd(32) * (v.getUint32(4) === 3 && bytes[72 + 7] & 16 ? 16 : 8), choices[rnd(choices.length)]);
    } else {
      const off = BigInt(rnd(clusters + 3) * cs);
      const choices = [off | (1n << 63n), off, off + 512n, off | 1n];
      v.setBigUint64(l1, choices[rnd(choices.length)]);
    }
  }
}

async function ours(path: string, repair?: "leaks" | "all"): Promise<CheckResult> {
  await using file = await open({ driver: "file", filename: path }, { readOnly: !repair });
  return await checkQcow2(file, { repair });
}

function lines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l !== "" && !l.startsWith("qemu-img:"));
}

function counters(j: Record<string, number>): number[] {
  return [j["check-errors"] ?? 0, j.corruptions ?? 0, j.leaks ?? 0, j["image-end-offset"] ?? 0, j["allocated-clusters"] ?? 0];
}

for (let seed = 1; seed <= 16; seed++) {
  Deno.test({
    name: `checkQcow2() matches qemu-img check on randomly damaged image #${seed}`,
    ignore: skipUnless("qemu-img", "qemu-io", "cmp"),
    async fn() {
      await using dir = await tempDir();
      const variant = VARIANTS[seed % VARIANTS.length];
      const base = `${dir.path}/base.qcow2`;
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", variant.opts, base, "32M"]);
      await runOk("qemu-io", ["-c", "write -P 1 0 1M", "-c", "write -P 2 8M 200k", base]);
      await runOk("qemu-img", ["snapshot", "-c", "s1", base]);
      await runOk("qemu-io", ["-c", "write -P 3 256k 512k", "-c", `write -c -P 4 16M ${variant.cs}`, base]);
      const img = `${dir.path}/damaged.qcow2`;
      const bytes = await Deno.readFile(base);
      damage(bytes, seed * 7919);
      await Deno.writeFile(img, bytes);

      const q = await run("qemu-img", ["check", "--output=json", img]);
      const r = await ours(img);
      assert.deepEqual(r.messages, lines(q.stderr));
      const qj = JSON.parse(q.stdout);
      assert.deepEqual([r.checkErrors, r.corruptions, r.leaks, r.imageEndOffset, r.allocatedClusters], counters(qj));
      assert.equal(checkExitCode(r), q.code);

      for (const mode of ["leaks", "all"] as const) {
        const a = `${dir.path}/ours-${mode}.qcow2`;
        const b = `${dir.path}/theirs-${mode}.qcow2`;
        await Deno.copyFile(img, a);
        await Deno.copyFile(img, b);
        const qr = await run("qemu-img", ["check", "-r", mode, "--output=json", b]);
        const rr = await ours(a, mode);
        const code = checkExitCode(rr);
        if (code === 0) assert.equal((await run("qemu-img", ["check", a])).code, 0, `repair ${mode} left errors`);
        // qemu-img gives up on some damage (writes refused once it marks the image corrupt).
        if (qr.stderr.includes("Check failed")) continue;
        const qrj = JSON.parse(qr.stdout);
        assert.deepEqual(rr.messages, lines(qr.stderr), `repair ${mode}`);
        assert.deepEqual([rr.leaksFixed, rr.corruptionsFixed], [qrj["leaks-fixed"] ?? 0, qrj["corruptions-fixed"] ?? 0]);
        assert.equal(code, qr.code, `repair ${mode}`);
        // Same repairs in the same places: the files are byte-identical.
        assert.equal((await run("cmp", [a, b])).code, 0, `repair ${mode}: files differ`);
      }
    },
  });
}
