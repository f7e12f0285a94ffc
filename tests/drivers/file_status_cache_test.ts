// The file node remembers the last data extent lseek found (QEMU's block-status cache): queries inside it cost no syscall, and
// everything that can make a hole forgets it.
import assert from "node:assert/strict";
import { pattern, run, skipUnless, tempDir } from "../_helpers/qemu.ts";
import { MiB, openFile, withFile } from "./_file_helpers.ts";

const MOD = new URL("../../mod.ts", import.meta.url).href;

Deno.test({
  name: "file node answers block status inside the last data extent it found without calling lseek again",
  ignore: skipUnless("strace"),
  async fn() {
    await using dir = await tempDir();
    const path = `${dir.path}/disk.img`;
    const script = `${dir.path}/status.ts`;
    await Deno.writeTextFile(
      script,
      `import { open } from ${JSON.stringify(MOD)};
await using n = await open({ driver: "file", filename: ${JSON.stringify(path)}, create: true });
await n.truncate(8 << 20);
await n.pwrite(1 << 20, new Uint8Array(2 << 20).fill(1));
for (let i = 0; i < 100; i++) {
  const st = await n.blockStatus((1 << 20) + i * 4096, 4096);
  if (!st.data || st.length !== 4096) throw new Error("not data at " + i);
}
`,
    );
    const r = await run("strace", ["-f", "-e", "trace=lseek", Deno.execPath(), "run", "-A", script]);
    assert.equal(r.code, 0, r.stderr);
    const seeks = [...r.stderr.matchAll(/lseek\(\d+, \d+, SEEK_(?:DATA|HOLE)\)/g)].length;
    // The first query finds the extent (SEEK_DATA, SEEK_HOLE); the 99 others are answered from it.
    assert.equal(seeks, 2, r.stderr.slice(-3000));
  },
});

/** Writes data over [1, 3) MiB, asks block status there (so the extent is remembered), runs `hole`, and asks again. */
async function afterHole(hole: (n: Awaited<ReturnType<typeof openFile>>) => Promise<void>): Promise<boolean> {
  let data = true;
  await withFile(4 * MiB, async (path) => {
    await using n = await openFile(path);
    await n.pwrite(MiB, pattern(2 * MiB, 7));
    assert.equal((await n.blockStatus(MiB, MiB)).data, true);
    await hole(n);
    data = (await n.blockStatus(MiB, MiB)).data;
  });
  return data;
}

Deno.test("file node block status sees a hole punched by discard inside the extent it remembered", async () => {
  assert.equal(await afterHole((n) => n.pdiscard(MiB, MiB)), false);
});

Deno.test("file node block status sees a hole made by write-zeroes with unmap inside the extent it remembered", async () => {
  assert.equal(await afterHole((n) => n.pwriteZeroes(MiB, MiB, { mayUnmap: true })), false);
});

Deno.test("file node block status sees the hole left by shrinking and growing the file again", async () => {
  assert.equal(
    await afterHole(async (n) => {
      await n.truncate(MiB);
      await n.truncate(4 * MiB);
    }),
    false,
  );
});

Deno.test("file node block status still reports data written after the extent was remembered", async () => {
  await withFile(4 * MiB, async (path) => {
    await using n = await openFile(path);
    await n.pwrite(MiB, pattern(MiB, 7));
    assert.equal((await n.blockStatus(MiB, MiB)).length, MiB);
    assert.equal((await n.blockStatus(2 * MiB, MiB)).data, false);
    await n.pwrite(2 * MiB, pattern(MiB, 8));
    const st = await n.blockStatus(2 * MiB, MiB);
    assert.deepEqual([st.data, st.length], [true, MiB]);
  });
});
