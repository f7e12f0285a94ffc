/**
 * Reads an image written by QEMU: qemu-img creates a qcow2 image with a
 * backing file, qemu-io writes patterns, and blkgraph reads them back and
 * lists which layer of the chain each extent comes from.
 *
 *   deno run -A examples/read_qemu_image.ts
 */

import { open } from "../mod.ts";

async function sh(cmd: string, ...args: string[]): Promise<boolean> {
  try {
    return (await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output()).success;
  } catch {
    return false;
  }
}

if (!(await sh("qemu-img", "--version"))) {
  console.log("qemu-img is not installed; skipping this example");
  Deno.exit(0);
}
const dir = await Deno.makeTempDir({ prefix: "blkgraph-example-" });
try {
  await sh("qemu-img", "create", "-f", "qcow2", `${dir}/base.qcow2`, "16M");
  await sh("qemu-io", "-c", "write -P 0x11 0 128k", `${dir}/base.qcow2`);
  await sh("qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${dir}/top.qcow2`);
  await sh("qemu-io", "-c", "write -P 0x22 64k 64k", `${dir}/top.qcow2`);

  const img = await open(`${dir}/top.qcow2`, { readOnly: true });
  const buf = new Uint8Array(2);
  for (const off of [0, 65536, 131072]) {
    await img.pread(off, buf);
    console.log(`offset ${off}: 0x${buf[0].toString(16).padStart(2, "0")}`);
  }
  for (let off = 0; off < img.length;) {
    const st = await img.blockStatus(off, img.length - off);
    console.log(`${off}+${st.length}: data=${st.data} zero=${st.zero} depth=${st.depth ?? 0}`);
    off += st.length;
  }
  await img.close();
} finally {
  await Deno.remove(dir, { recursive: true });
}
