/**
 * `amend()` of the qcow2 driver against qemu-img amend 7.2: the same options
 * on two copies of an image must leave the same clusters in use with the
 * same bytes, and refusals must come in QEMU's order with its messages.
 */
import assert from "node:assert/strict";
import { BlockError } from "../../../mod.ts";
import { qemuCheck, run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { fileLayoutDiff } from "./_layout.ts";
import { openQcow2, qemuCreate, qemuIo } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");

function parseOpts(o: string): Record<string, string> {
  return Object.fromEntries(o.split(",").map((kv) => kv.split("=") as [string, string]));
}

/** qemu-img amend -o `o` on `a`, our amend on `b`: both succeed or both fail with the same message. */
async function amendBoth(a: string, b: string, o: string): Promise<string | undefined> {
  const q = await run("qemu-img", ["amend", "-o", o, a]);
  let ours: string | undefined;
  {
    await using n = await openQcow2(b, { backing: null });
    try {
      await n.amend(parseOpts(o));
    } catch (e) {
      ours = (e as Error).message;
    }
  }
  const qemu = q.code === 0 ? undefined : q.stderr.replace(/^qemu-img: /, "").trimEnd();
  assert.equal(ours, qemu, `amend -o ${o}`);
  assert.deepEqual(await fileLayoutDiff(b, a), [], `layout after amend -o ${o}`);
  return ours;
}

async function pair(dir: string, opts: string, size: string, writes: string[], backing?: string): Promise<{ a: string; b: string }> {
  const a = `${dir}/a.qcow2`;
  const b = `${dir}/b.qcow2`;
  await qemuCreate(a, size, opts, backing);
  if (writes.length) await qemuIo(a, ...writes);
  await Deno.copyFile(a, b);
  return { a, b };
}

for (const opts of ["", "cluster_size=512", "cluster_size=4k,refcount_bits=1"]) {
  Deno.test({
    name: `amend() changes refcount_bits as qemu-img amend does (${opts || "defaults"})`,
    ignore,
    async fn() {
      await using d = await tempDir();
      const { a, b } = await pair(d.path, opts, "8M", ["write -P 1 0 3M", "write -z 3M 64k", "write -c -P 2 4M 64k"]);
      for (const bits of [8, 64, 2, 16, 1, 4]) await amendBoth(a, b, `refcount_bits=${bits}`);
      assert.equal((await qemuCheck(b)).code, 0);
      assert.equal((await run("qemu-img", ["compare", a, b])).code, 0);
    },
  });
}

Deno.test({
  name: "amend() refuses a refcount width too narrow for a refcount, naming the cluster, as QEMU",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "", "1M", ["write 0 64k"]);
    await runOk("qemu-img", ["snapshot", "-c", "s", a]);
    await runOk("qemu-img", ["snapshot", "-c", "s", b]);
    const msg = await amendBoth(a, b, "refcount_bits=1");
    assert.match(msg!, /Cannot decrease refcount entry width to 1 bits: Cluster at offset 0x\w+ has a refcount of 2/);
  },
});

Deno.test({
  name: "amend() downgrades to compat=0.10 and back as qemu-img amend does (zero clusters expanded, snapshots kept)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "", "4M", ["write -P 1 0 1M", "write -z 2M 128k"]);
    await runOk("qemu-img", ["snapshot", "-c", "s", a]);
    await runOk("qemu-img", ["snapshot", "-c", "s", b]);
    await qemuIo(a, "write -z 1M 64k");
    await qemuIo(b, "write -z 1M 64k");
    await amendBoth(a, b, "compat=0.10");
    assert.equal(JSON.parse((await runOk("qemu-img", ["info", "--output=json", b])).stdout)["format-specific"].data.compat, "0.10");
    await amendBoth(a, b, "compat=1.1");
    await amendBoth(a, b, "lazy_refcounts=on");
    await amendBoth(a, b, "compat=0.10"); // lazy refcounts go with it
    assert.equal((await qemuCheck(b)).code, 0);
  },
});

Deno.test({
  name: "amend() compat=0.10 keeps a snapshot's data where a zero cluster shares its host cluster (qemu-img 7.2 zeroes it)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "", "4M", ["write -P 1 0 1M"]);
    for (const p of [a, b]) {
      await runOk("qemu-img", ["snapshot", "-c", "s", p]);
      // qemu-io keeps the (shared) cluster allocated under the zero flag.
      await qemuIo(p, "write -z 64k 64k");
    }
    await runOk("qemu-img", ["amend", "-o", "compat=0.10", a]);
    {
      await using n = await openQcow2(b);
      await n.amend({ compat: "0.10" });
    }
    const snap = async (p: string) => {
      await runOk("qemu-img", ["convert", "-l", "s", "-O", "raw", p, `${p}.raw`]);
      return (await run("qemu-io", ["-f", "raw", "-c", "read -P 1 0 1M", `${p}.raw`])).stdout;
    };
    assert.match(await snap(a), /verification failed/, "qemu-img corrupts the snapshot (if this changes, QEMU was fixed)");
    assert.doesNotMatch(await snap(b), /verification failed/);
    assert.equal((await qemuCheck(b)).code, 0);
    assert.doesNotMatch(await qemuIo(b, "read -P 1 0 64k", "read -P 0 64k 64k", "read -P 1 128k 896k"), /failed/);
  },
});

Deno.test({
  name: "amend() compat=0.10 on an overlay turns zero clusters into zeroed data clusters, so the backing file stays hidden",
  ignore,
  async fn() {
    await using d = await tempDir();
    const base = `${d.path}/base.qcow2`;
    await qemuCreate(base, "4M");
    await qemuIo(base, "write -P 9 0 4M");
    const { a, b } = await pair(d.path, "", "4M", ["write -z 0 64k", "write -z 1M 128k", "write -P 3 2M 64k", "write -z 2M 64k"], base);
    await runOk("qemu-img", ["snapshot", "-c", "s", a]);
    await runOk("qemu-img", ["snapshot", "-c", "s", b]);
    await amendBoth(a, b, "compat=0.10");
    assert.doesNotMatch(await qemuIo(b, "read -P 0 0 64k", "read -P 0 1M 128k", "read -P 0 2M 64k", "read -P 9 3M 64k"), /failed/);
  },
});

Deno.test({
  name: "amend() refuses what compat=0.10 cannot hold, with qemu-img's messages",
  ignore,
  async fn() {
    await using d = await tempDir();
    for (
      const [opts, msg] of [
        ["refcount_bits=8", /requires refcount_bits=16/],
        ["extended_l2=on", /incompatible features 0x10 set/],
      ] as const
    ) {
      const { a, b } = await pair(d.path, opts, "1M", []);
      assert.match((await amendBoth(a, b, "compat=0.10"))!, msg);
    }
    const data = `${d.path}/t.data`;
    const { a, b } = await pair(d.path, `data_file=${data}`, "1M", []);
    assert.match((await amendBoth(a, b, "compat=0.10"))!, /Cannot downgrade an image with a data file/);
  },
});

Deno.test({
  name: "amend() size grows and shrinks the image as qemu-img amend does (no --shrink needed)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "", "4M", ["write -P 1 0 3M"]);
    await amendBoth(a, b, "size=8M");
    await amendBoth(a, b, "size=1M");
    await amendBoth(a, b, "size=0"); // 0 changes nothing
    await using n = await openQcow2(b, {}, true);
    assert.equal(n.length, 1 << 20);
  },
});

Deno.test({
  name: "amend() refuses options as qemu-img amend does, in its order and words",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "", "1M", []);
    const cases: [string, RegExp][] = [
      ["cluster_size=4k", /^Invalid parameter 'cluster_size'\nThis option is only supported for image creation$/],
      ["foo=bar", /^Invalid parameter 'foo'$/],
      ["compat=2.0", /^Unknown compatibility level 2.0$/],
      ["refcount_bits=3", /power of two/],
      ["refcount_bits=abc", /expects a number/],
      ["lazy_refcounts=maybe", /expects 'on' or 'off'/],
      ["backing_file=x", /^Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.$/],
      ["data_file=x", /data-file can only be set/],
      ["data_file_raw=on", /data-file-raw cannot be set on existing images/],
      ["encrypt.new-secret=x", /encryption not present/],
      ["compat=0.10,refcount_bits=8", /Refcount widths other than 16 bits require compatibility level 1.1/],
      ["lazy_refcounts=on,compat=0.10", /Lazy refcounts only supported with compatibility level 1.1/],
    ];
    for (const [o, re] of cases) assert.match((await amendBoth(a, b, o)) ?? "", re, o);
  },
});

Deno.test({
  name: "amend() renames the data file and clears data_file_raw as qemu-img amend does",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, `data_file=${d.path}/t.data,data_file_raw=on`, "1M", []);
    await amendBoth(a, b, `data_file=${d.path}/u.data`);
    await Deno.copyFile(`${d.path}/t.data`, `${d.path}/u.data`);
    await amendBoth(a, b, "data_file_raw=off");
    await using n = await openQcow2(b, { "data-file": { driver: "file", filename: `${d.path}/t.data` } }, true);
    const info = await n.info();
    assert.deepEqual(
      (info["format-specific"] as { data: Record<string, unknown> }).data["data-file"],
      `${d.path}/u.data`,
    );
  },
});

Deno.test({
  name: "amend() with --force changes nothing else (QEMU only uses it for encryption)",
  ignore,
  async fn() {
    await using d = await tempDir();
    const { a, b } = await pair(d.path, "", "1M", []);
    await runOk("qemu-img", ["amend", "--force", "-o", "lazy_refcounts=on", a]);
    {
      await using n = await openQcow2(b);
      await n.amend({ lazy_refcounts: "on" }, { force: true });
    }
    assert.deepEqual(await fileLayoutDiff(b, a), []);
    await using n = await openQcow2(b, {}, true);
    await assert.rejects(() => n.amend({ lazy_refcounts: "off" }), (e) => e instanceof BlockError && e.code === "EROFS");
  },
});

Deno.test({
  name: "an image with data_file_raw keeps the bit and its raw data file reads as the image after zero writes, as qemu-io leaves it",
  ignore,
  async fn() {
    await using d = await tempDir();
    const data = `${d.path}/t.data`;
    const path = `${d.path}/t.qcow2`;
    await qemuCreate(path, "1M", `data_file=${data},data_file_raw=on`);
    {
      await using n = await openQcow2(path);
      await n.pwrite(0, new Uint8Array(1 << 20).fill(7));
      await n.pwriteZeroes(65536, 131072);
      await n.pwriteZeroes(300000, 1000);
    }
    const info = JSON.parse((await runOk("qemu-img", ["info", "--output=json", path])).stdout);
    assert.equal(info["format-specific"].data["data-file-raw"], true);
    assert.equal((await run("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", path, data])).code, 0);
  },
});
