/**
 * Imports a qcow2 image into a new Ceph RBD image (what `blkgraph convert
 * -O raw disk.qcow2 rbd:pool/image` does), skipping unallocated ranges,
 * then snapshots it and reads the copy back. Needs a cluster: a throw-away
 * one starts with `tests/_helpers/ceph.sh start /tmp/ceph`.
 *
 *   BLKGRAPH_CEPH_CONF=/tmp/ceph/ceph.conf deno run -A examples/rbd_import.ts
 */

import { createImage, open } from "../mod.ts";
import { removeRbdImage } from "../drivers/rbd/rbd.ts";

const conf = Deno.env.get("BLKGRAPH_CEPH_CONF") ?? Deno.env.get("CEPH_CONF");
if (!conf) {
  console.log("No Ceph cluster: start one with `tests/_helpers/ceph.sh start /tmp/ceph`, then set BLKGRAPH_CEPH_CONF=/tmp/ceph/ceph.conf");
  Deno.exit(0);
}
const dir = await Deno.makeTempDir({ prefix: "blkgraph-example-" });
const target = `rbd:rbd/example-${crypto.randomUUID().slice(0, 8)}:conf=${conf}`;
try {
  const size = 8 << 20;
  await createImage(`${dir}/disk.qcow2`, "qcow2", size);
  await using src = await open(`${dir}/disk.qcow2`);
  await src.pwrite(1 << 20, new Uint8Array(65536).fill(0x42));
  await src.pwrite(6 << 20, new TextEncoder().encode("hello from qcow2"));

  await createImage(target, "raw", size); // a new RBD image of the right size
  await using dst = await open(target, { format: "raw" });
  let copied = 0;
  for (let off = 0; off < size;) {
    const st = await src.blockStatus(off, size - off);
    if (st.data) {
      const buf = new Uint8Array(st.length);
      await src.pread(off, buf);
      await dst.pwrite(off, buf);
      copied += st.length;
    }
    off += st.length;
  }
  await dst.flush();
  console.log(`copied ${copied} of ${size} bytes into ${target.split(":conf=")[0]}`);

  await dst.snapshots.create({ id: "", name: "imported", vmStateSize: 0, dateSec: 0, dateNsec: 0, vmClockNsec: 0 });
  console.log("snapshots:", (await dst.snapshots.list()).map((s) => s.name).join(", "));
  const back = new Uint8Array(16);
  await dst.pread(6 << 20, back);
  console.log(`read back: ${new TextDecoder().decode(back)}`);
  await dst.snapshots.delete("imported");
} finally {
  await removeRbdImage({ filename: target }).catch(() => {});
  await Deno.remove(dir, { recursive: true });
}
