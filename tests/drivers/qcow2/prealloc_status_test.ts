/**
 * Block status of an image made with `preallocation=metadata` (QEMU's
 * qcow2_detect_metadata_preallocation and BDRV_BLOCK_RECURSE): clusters
 * whose host range is still a hole in the file report zero (with their
 * data flag and offset), as `qemu-img map` shows them; an image whose
 * refcounts match what the file holds is not asked about its file.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type BlockNode, createImage, open } from "../../../mod.ts";
import { runOk, skipUnless, tempDir } from "../../_helpers/qemu.ts";

const MIB = 1 << 20;

/** The JSON map entries of `node`, as qemu-img map --output=json lists them (without merging). */
async function statuses(node: BlockNode): Promise<[number, number, boolean, boolean, number | undefined][]> {
  const out: [number, number, boolean, boolean, number | undefined][] = [];
  for (let off = 0; off < node.length;) {
    const st = await node.blockStatus(off, node.length - off);
    const last = out.at(-1);
    const host = st.hostOffset;
    // qemu-img map's entry_mergeable: same flags, and contiguous host offsets.
    if (
      last && last[2] === st.data && last[3] === st.zero &&
      (last[4] === undefined ? host === undefined : host === last[4] + last[1])
    ) last[1] += st.length;
    else out.push([off, st.length, st.data, st.zero, host]);
    off += st.length;
  }
  return out;
}

Deno.test({
  name: "preallocation=metadata: clusters still holes in the file report zero (data at an offset), as qemu-img map shows them",
  ignore: skipUnless("qemu-img"),
  async fn() {
    await using d = await tempDir();
    const path = `${d.path}/p.qcow2`;
    await createImage(path, "qcow2", 64 * MIB, { options: { cluster_size: 65536, preallocation: "metadata" } });
    {
      await using n = await open(path);
      await n.pwrite(2 * MIB, new Uint8Array(MIB).fill(5));
    }
    await using n = await open(path, { readOnly: true });
    const ours = await statuses(n);
    const q = JSON.parse((await runOk("qemu-img", ["map", "--output=json", path])).stdout) as Record<string, unknown>[];
    assert.deepEqual(ours, q.map((e) => [e.start, e.length, e.data, e.zero, e.offset]));
    // The written MiB is data; the rest is preallocated (data at an offset) and reads as zeros.
    assert.deepEqual(ours.map((e) => [e[0], e[1], e[2], e[3]]), [
      [0, 2 * MIB, true, true],
      [2 * MIB, MIB, true, false],
      [3 * MIB, 61 * MIB, true, true],
    ]);
  },
});

Deno.test("an image without preallocated metadata reports its data clusters as data, even where the file holds a hole", async () => {
  await using d = await tempDir();
  const path = `${d.path}/a.qcow2`;
  await createImage(path, "qcow2", 4 * MIB, { options: { cluster_size: 65536 } });
  let host: number;
  {
    await using n = await open(path);
    await n.pwrite(0, new Uint8Array(2 * MIB).fill(1));
    host = (await n.blockStatus(MIB, 65536)).hostOffset!;
  }
  // A hole punched in the file under one data cluster: the refcounts still match what the file holds, roughly.
  {
    await using f = await open({ driver: "file", filename: path });
    await f.pdiscard(host, 65536);
  }
  await using n = await open(path, { readOnly: true });
  const st = await n.blockStatus(MIB, 65536);
  assert.deepEqual([st.data, st.zero, st.hostOffset], [true, false, host]);
});

Deno.test("allocatedSize(): a host file's blocks, a qcow2 node's with its data file's, unknown for memory", async () => {
  await using d = await tempDir();
  const path = `${d.path}/x.qcow2`;
  await createImage(path, "qcow2", 4 * MIB, { options: { data_file: `${d.path}/x.data`, data_file_raw: true } });
  await using n = await open(path);
  await n.pwrite(0, new Uint8Array(MIB).fill(1));
  await n.flush();
  const blocks = async (f: string) => (await Deno.stat(f)).blocks! * 512;
  assert.equal(await n.file!.allocatedSize(), await blocks(path));
  assert.equal(await n.allocatedSize(), (await blocks(path)) + (await blocks(`${d.path}/x.data`)));
  await using m = await open({ driver: "memory", size: MIB });
  assert.equal(await m.allocatedSize(), undefined);
});
