/**
 * What survives when a process ends with images still open: a script that
 * ends without close(), one that calls Deno.exit() inside `await using`, and
 * the CLI stopped by SIGTERM. Each runs in its own process.
 */

import assert from "node:assert/strict";
import { createImage, open } from "../../mod.ts";
import { qemuCheck, skipUnless, tempDir } from "../_helpers/qemu.ts";

const MOD = new URL("../../mod.ts", import.meta.url).href;
const CLI = new URL("../../cli/main.ts", import.meta.url).pathname;

async function runScript(dir: string, body: string): Promise<{ code: number; stderr: string }> {
  const path = `${dir}/script.ts`;
  await Deno.writeTextFile(path, `import { open } from "${MOD}";\n${body}\n`);
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", path], stdout: "piped", stderr: "piped" }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

/** Reads 64 KiB at each offset of the image in a fresh open and says whether each holds `byte`. */
async function holds(path: string, offsets: number[], byte: number): Promise<boolean[]> {
  await using node = await open(path, { readOnly: true });
  const buf = new Uint8Array(65536);
  const out: boolean[] = [];
  for (const o of offsets) {
    await node.pread(o, buf);
    out.push(buf.every((b) => b === byte));
  }
  return out;
}

const WRITES = "for (let i = 0; i < 8; i++) await disk.pwrite(i * (1 << 20), new Uint8Array(65536).fill(0x5a));";
const OFFSETS = [...Array(8).keys()].map((i) => i << 20);

Deno.test("a script that ends without close() keeps its completed qcow2 writes", async () => {
  await using dir = await tempDir();
  const img = `${dir.path}/a.qcow2`;
  await createImage(img, "qcow2", 8 << 20);
  const r = await runScript(dir.path, `const disk = await open("${img}");\n${WRITES}\n// no close(), no flush()`);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(await holds(img, OFFSETS, 0x5a), OFFSETS.map(() => true));
});

Deno.test("Deno.exit() inside await using keeps the completed qcow2 writes (synchronous write-back at unload)", async () => {
  await using dir = await tempDir();
  const img = `${dir.path}/b.qcow2`;
  await createImage(img, "qcow2", 8 << 20);
  const r = await runScript(dir.path, `await using disk = await open("${img}");\n${WRITES}\nDeno.exit(0);`);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "", "no warning: the write-back was safe");
  assert.deepEqual(await holds(img, OFFSETS, 0x5a), OFFSETS.map(() => true));
});

Deno.test({
  name: "Deno.exit() with a filter below qcow2 warns that the writes since the last flush are lost, and the image stays consistent",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using dir = await tempDir();
    const img = `${dir.path}/c.qcow2`;
    await createImage(img, "qcow2", 8 << 20);
    const spec = JSON.stringify({ driver: "qcow2", file: { driver: "throttle", limits: {}, file: { driver: "file", filename: img } } });
    const r = await runScript(
      dir.path,
      `const disk = await open(${spec});\nawait disk.pwrite(0, new Uint8Array(65536).fill(1));\nawait disk.flush();\n${WRITES}\nDeno.exit(0);`,
    );
    assert.equal(r.code, 0);
    assert.match(r.stderr, /warning: node '.*' \(qcow2\) was still open with unwritten data at Deno\.exit\(\)/);
    const check = await qemuCheck(img);
    assert.ok(check.code === 0 || check.code === 3, `qemu-img check: ${JSON.stringify(check.json)}`);
    // The write flushed before the exit survives.
    await using node = await open(img, { readOnly: true });
    const buf = new Uint8Array(65536);
    await node.pread(0, buf);
    assert.equal(buf.every((b) => b === 1) || buf.every((b) => b === 0x5a), true);
  },
});

Deno.test("the CLI closes its images on SIGTERM: a write qemu-io style io reported is on disk", async () => {
  await using dir = await tempDir();
  const img = `${dir.path}/d.qcow2`;
  await createImage(img, "qcow2", 8 << 20);
  const child = new Deno.Command(Deno.execPath(), { args: ["run", "-A", CLI, "io", img], stdin: "piped", stdout: "piped", stderr: "piped" })
    .spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode("write -P 0x33 1M 64k\n"));
  const reader = child.stdout.getReader();
  let seen = "";
  while (!seen.includes("wrote 65536/65536")) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += new TextDecoder().decode(value);
  }
  child.kill("SIGTERM");
  const status = await child.status;
  reader.releaseLock();
  await child.stdout.cancel();
  await child.stderr.cancel();
  await w.close().catch(() => {});
  assert.equal(status.code, 143);
  assert.deepEqual(await holds(img, [1 << 20], 0x33), [true]);
});
