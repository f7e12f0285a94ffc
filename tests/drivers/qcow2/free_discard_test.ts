/**
 * Which freed clusters give their space back to the host, as QEMU's discard
 * types decide: a cluster replaced by a copy-on-write or a preallocating
 * resize (QCOW2_DISCARD_NEVER) and an old L1 table (QCOW2_DISCARD_OTHER,
 * off by default) keep their blocks in the file, so the next allocation
 * reuses them without the file system allocating again; a guest discard
 * (QCOW2_DISCARD_REQUEST) and a deleted snapshot's clusters
 * (QCOW2_DISCARD_SNAPSHOT) punch holes. Compared with qemu-io/qemu-img
 * through the host file's own allocation map.
 */
import assert from "node:assert/strict";
import { run, runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";
import { qemuCreate, qemuIo } from "./_util.ts";

const ignore = skipUnless("qemu-img", "qemu-io");
const OUR_IO = new URL("../../../cli/qemu-io.ts", import.meta.url).pathname;
const OUR_IMG = new URL("../../../cli/qemu-img.ts", import.meta.url).pathname;

/** The host file's extents that hold data (not holes), as `qemu-img map -f raw` reports them. */
async function hostData(path: string): Promise<string> {
  const map = JSON.parse((await runOk("qemu-img", ["map", "-f", "raw", "--output=json", path])).stdout) as {
    start: number;
    length: number;
    data: boolean;
  }[];
  return map.filter((e) => e.data).map((e) => `${e.start}+${e.length}`).join(" ");
}

/** Runs the same qemu-io commands (or qemu-img arguments, the image as `IMG`) with QEMU's tool on `a` and ours on `b`. */
async function both(tool: "io" | "img", a: string, b: string, args: string[]): Promise<void> {
  const c = tool === "io" ? args.flatMap((x) => ["-c", x]) : args;
  const [cmd, ours] = tool === "io" ? ["qemu-io", OUR_IO] : ["qemu-img", OUR_IMG];
  const last = tool === "io" ? (p: string) => ["-f", "qcow2", ...c, p] : (p: string) => c.map((x) => (x === "IMG" ? p : x));
  await runOk(cmd, last(a));
  const r = await run(Deno.execPath(), ["run", "-A", ours, ...last(b)]);
  assert.equal(r.code, 0, r.stderr);
}

const cases: [string, string, string[], ["io" | "img", string[]][]][] = [
  ["a copy-on-write over a compressed cluster", "cluster_size=65536", ["write -c -P 1 0 128k"], [["io", ["write -P 2 0 4k"]]]],
  ["a preallocating resize moving the last cluster", "cluster_size=65536", ["write -P 1 0 130560"], [[
    "img",
    ["resize", "-f", "qcow2", "--preallocation=falloc", "IMG", "131072"],
  ]]],
  ["an L1 table outgrown", "cluster_size=4096", ["write -P 1 0 64k"], [["img", ["resize", "-f", "qcow2", "IMG", "8G"]]]],
  ["a snapshot deleted (its snapshot table freed)", "cluster_size=65536", ["write -c -P 1 0 128k"], [
    ["img", ["snapshot", "-c", "s", "IMG"]],
    ["io", ["write -P 2 0 4k", "write -P 3 65536 4k"]],
    ["img", ["snapshot", "-d", "s", "IMG"]],
    ["io", ["write -P 4 4096 4k"]],
  ]],
  ["a guest discard", "cluster_size=65536", ["write -P 1 0 1M"], [["io", ["discard 128k 256k"]]]],
];

for (const [what, opts, setup, steps] of cases) {
  Deno.test({
    name: `${what} leaves the host file's blocks as qemu does`,
    ignore,
    async fn() {
      await using d = await tempDir();
      const a = `${d.path}/a.qcow2`;
      const b = `${d.path}/b.qcow2`;
      const start = `${d.path}/start.qcow2`;
      await qemuCreate(start, what.includes("resize") ? 130560 : "1M", opts);
      await qemuIo(start, ...setup);
      // Both from one sparse layout (every zero block a hole), so the blocks each tool allocates or frees show.
      for (const p of [a, b]) await runOk("cp", ["--sparse=always", start, p]);
      for (const [tool, args] of steps) await both(tool, a, b, args);
      assert.equal(await hostData(b), await hostData(a));
      assert.equal((await run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", a, b])).code, 0);
    },
  });
}
