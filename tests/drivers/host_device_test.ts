/**
 * The host_device and host_cdrom drivers and the `file` driver's refusal of
 * anything but a regular file, each case run with qemu-io beside ours (iotest
 * 226's cases, and a plain device name opening with host_device).
 */
import assert from "node:assert/strict";
import { type BlockError, open, protocolForFilename } from "../../mod.ts";
import { qemuIo } from "../../cli/qemu-io.ts";
import { run, skipUnless, tempDir } from "../_helpers/qemu.ts";

const ignore = skipUnless("qemu-io");

async function ours(args: string[]) {
  let stdout = "";
  let stderr = "";
  const code = await qemuIo(args, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s) });
  return { code, stdout, stderr };
}

Deno.test({
  name: "file refuses directories and devices, host_device and host_cdrom refuse anything but a device, in qemu-io's words (iotest 226)",
  ignore,
  async fn() {
    await using d = await tempDir();
    for (const driver of ["file", "host_device", "host_cdrom"]) {
      for (const [ro, target] of [["-r", d.path], ["-r", "/dev/null"], ["", d.path], ["", "/dev/null"]]) {
        const args = ["-c", `open ${ro} -o driver=${driver},filename=${target},locking=off`.replace("  ", " "), "-c", "read 0 512"];
        const q = await run("qemu-io", args);
        const r = await ours(args);
        assert.deepEqual([r.code, r.stdout, r.stderr], [q.code, q.stdout, q.stderr], `${driver} ${ro} ${target}`);
      }
    }
  },
});

Deno.test("a plain filename naming a device opens with host_device (QEMU's find_hdev_driver), a regular file with file", async () => {
  await using d = await tempDir();
  await Deno.writeFile(`${d.path}/a.img`, new Uint8Array(4096));
  assert.deepEqual([protocolForFilename("/dev/zero"), protocolForFilename(`${d.path}/a.img`)], ["host_device", "file"]);
  await using dev = await open({ driver: "raw", file: { filename: "/dev/zero", locking: "off" } }, { readOnly: true });
  assert.equal(dev.file?.driver.name, "host_device");
  await using img = await open({ driver: "raw", file: { filename: `${d.path}/a.img` } });
  assert.equal(img.file?.driver.name, "file");
});

Deno.test("host_device writes to a character device as the file driver does: /dev/full answers ENOSPC", async () => {
  await using n = await open({ driver: "host_device", filename: "/dev/full", locking: "off" });
  n.allowBeyondEof = true; // a character device has no length
  await assert.rejects(n.pwrite(0, new Uint8Array(512)), (e: BlockError) => e.code === "ENOSPC");
});
