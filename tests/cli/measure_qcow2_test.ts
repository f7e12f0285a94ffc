// `measure -O qcow2` counts what qemu-img counts over a matrix of options (a backing file: all the source's data counts;
// preallocation=full or falloc: the full size; a backing file with preallocation is no error), with and without a source image,
// and words an oversized or out-of-range --size as qemu-img does (iotest 178). Each case runs the real qemu-img and our drop-in
// with the same arguments and compares stdout, stderr and the exit code.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuImg } from "../../cli/qemu-img.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");

const OPTIONS = [
  "",
  "backing_file=x",
  "backing_file=x,backing_fmt=qcow2",
  "preallocation=metadata",
  "preallocation=falloc",
  "preallocation=full",
  "backing_file=x,preallocation=full",
  "backing_file=x,preallocation=metadata",
  "cluster_size=4k,backing_file=x",
  "cluster_size=2M,preallocation=falloc",
  "extended_l2=on,backing_file=x,preallocation=full",
];

async function same(args: string[]): Promise<void> {
  // qemu-img's LUKS measure times a PBKDF run; on a loaded machine it can fail to ("Unable to get accurate CPU usage"): retry.
  let real = await run("qemu-img", ["measure", ...args]);
  for (let i = 0; i < 5 && real.stderr.includes("Unable to get accurate CPU usage"); i++) {
    real = await run("qemu-img", ["measure", ...args]);
  }
  let out = "";
  let err = "";
  const code = await qemuImg(["measure", ...args], { stdout: (s) => void (out += s), stderr: (s) => void (err += s) });
  assertEquals([code, out, err], [real.code, real.stdout, real.stderr], args.join(" "));
}

Deno.test({
  name: "measure -O qcow2 of a source image counts what qemu-img counts, for each -o option set",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const src = `${d.path}/in.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", src, "4M"]);
    await runOk("qemu-io", ["-c", "write 0 1M", "-c", "write 3M 64k", src]);
    for (const o of OPTIONS) {
      for (const output of ["json", "human"]) await same(["-O", "qcow2", ...(o ? ["-o", o] : []), `--output=${output}`, src]);
    }
  },
});

Deno.test({
  name: "measure -O qcow2 --size counts what qemu-img counts, for each -o option set",
  ignore: QEMU,
  async fn() {
    for (const o of OPTIONS) await same(["-O", "qcow2", ...(o ? ["-o", o] : []), "--output=json", "--size", "1G"]);
  },
});

Deno.test({
  name: "measure --size too large for the L1 table, or past 2^63 - 1, fails with qemu-img's words",
  ignore: QEMU,
  async fn() {
    for (const size of ["2P", "7E", "9223372036854775807", "8E", "16E", "9223372036854775808", "-1"]) {
      await same(["-O", "qcow2", "--size", size]);
    }
    await same(["-O", "qcow2", "-o", "cluster_size=2M", "--size", "7E"]);
  },
});

Deno.test({
  name: "measure -O qcow2 with LUKS encryption adds its header and key material, as qemu-img (iotest 178)",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const src = `${d.path}/in.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", src, "4M"]);
    await runOk("qemu-io", ["-c", "write 0 1M", src]);
    const secret = ["--object", "secret,id=sec0,data=MTIzNDU2,format=base64"];
    for (
      const o of [
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,encrypt.cipher-alg=aes-128",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,cluster_size=4k",
        "encrypt.format=aes,encrypt.key-secret=sec0",
      ]
    ) {
      await same([...secret, "-O", "qcow2", "-o", o, "--output=json", src]);
      await same([...secret, "-O", "qcow2", "-o", o, "--size", "1G"]);
    }
  },
});
