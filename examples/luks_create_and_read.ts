/**
 * Creates a LUKS image (aes-256-xts, as `qemu-img create -f luks` does),
 * writes through it, shows that the file holds ciphertext, reopens it with
 * the passphrase and reads the data back; a wrong passphrase is refused.
 *
 *   deno run -A examples/luks_create_and_read.ts
 */

import { BlockError, createImage, defineSecret, open, removeSecret } from "../mod.ts";

const dir = await Deno.makeTempDir({ prefix: "blkgraph-example-" });
defineSecret("disk-pass", { data: "correct horse battery staple" });
defineSecret("bad-pass", { data: "hunter2" });
try {
  const path = `${dir}/disk.luks`;
  // iter-time: milliseconds of PBKDF2 per passphrase (QEMU's default is 2000).
  await createImage(path, "luks", 16 << 20, { options: { "key-secret": "disk-pass", "iter-time": 100 } });
  const spec = (secret: string) => ({ driver: "luks", "key-secret": secret, file: { driver: "file", filename: path } });

  const disk = await open(spec("disk-pass"));
  const text = new TextEncoder().encode("attack at dawn".padEnd(512, "."));
  await disk.pwrite(4096, text);
  const info = await disk.info();
  const fs = info["format-specific"] as { data: Record<string, unknown> };
  console.log(`cipher ${fs.data["cipher-alg"]}-${fs.data["cipher-mode"]}, payload at byte ${fs.data["payload-offset"]}`);
  await disk.close();

  const file = await Deno.readFile(path);
  const onDisk = file.subarray(Number(fs.data["payload-offset"]) + 4096, Number(fs.data["payload-offset"]) + 4096 + 14);
  console.log(`on disk: ${[...onDisk].map((b) => b.toString(16).padStart(2, "0")).join("")}`);

  const again = await open(spec("disk-pass"), { readOnly: true });
  const back = new Uint8Array(512);
  await again.pread(4096, back);
  console.log(`read back: ${new TextDecoder().decode(back.subarray(0, 14))}`);
  await again.close();

  try {
    await open(spec("bad-pass"));
  } catch (e) {
    console.log(`wrong passphrase: ${e instanceof BlockError ? `${e.code} ${e.message}` : e}`);
  }
} finally {
  removeSecret("disk-pass");
  removeSecret("bad-pass");
  await Deno.remove(dir, { recursive: true });
}
