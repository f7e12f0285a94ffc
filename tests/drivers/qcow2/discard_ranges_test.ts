// Freed clusters go back to the host as ranges, adjacent clusters in one discard, as QEMU's discard queue merges
// them: a shrink of a metadata-preallocated image is a couple of punches, not one per cluster, and each range is
// punched whole, so ext4 never splits an extent it then trims piece by piece (iotest 250's disk usage delta). Counted
// with a recorder filter between the qcow2 node and its file.
import assert from "node:assert/strict";
import { open } from "../../../mod.ts";
import { getRecorder } from "../../../filters/recorder.ts";
import { tempDir } from "../../_helpers/qemu.ts";
import { createImage } from "../../../core/open.ts";

const MiB = 1 << 20;

async function recorded(path: string) {
  const node = await open({ driver: "qcow2", file: { driver: "recorder", file: { driver: "file", filename: path } } });
  return { node, discards: () => getRecorder(node.children.get("file")!).log.filter((op) => op.op === "discard") };
}

Deno.test("qcow2 shrink discards the freed clusters as one range per run of adjacent clusters", async () => {
  await using d = await tempDir();
  const path = `${d.path}/t.qcow2`;
  await createImage(path, "qcow2", 64 * MiB, { options: { cluster_size: "64k" } });
  {
    await using n = await open(path);
    // Guest 0-8M data: host clusters in one run after the metadata.
    await n.pwrite(0, new Uint8Array(8 * MiB).fill(0x5a));
  }
  const { node, discards } = await recorded(path);
  try {
    await node.truncate(MiB);
    const ops = discards();
    // 7 MiB freed: 112 clusters, adjacent on the host, in one discard.
    assert.deepEqual(ops.map((op) => op.length), [7 * MiB], JSON.stringify(ops.map((op) => [op.offset, op.length])));
  } finally {
    await node.close();
  }
});

Deno.test("qcow2 guest discard gives the clusters it frees back to the host as one range per run", async () => {
  await using d = await tempDir();
  const path = `${d.path}/t.qcow2`;
  await createImage(path, "qcow2", 64 * MiB, { options: { cluster_size: "64k" } });
  {
    await using n = await open(path);
    await n.pwrite(0, new Uint8Array(4 * MiB).fill(0x5a));
  }
  const { node, discards } = await recorded(path);
  try {
    await node.pdiscard(0, 4 * MiB);
    await node.flush();
    const ops = discards();
    assert.deepEqual(ops.map((op) => op.length), [4 * MiB], JSON.stringify(ops.map((op) => [op.offset, op.length])));
  } finally {
    await node.close();
  }
});
