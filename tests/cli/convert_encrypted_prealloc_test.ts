// convert into an encrypted qcow2 with preallocation=metadata: the preallocated clusters decrypt to noise, so the image does not read
// as zeros when new (QEMU's qcow2_has_zero_init is false for it) and convert must write the source's zeros. Iotest 188.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { qemuImg } from "../../cli/qemu-img.ts";
import { run, runOk, skipUnless, tempDir } from "../_helpers/qemu.ts";

const QEMU = skipUnless("qemu-img", "qemu-io");
const SECRET = "secret,id=sec0,data=astrochicken";

Deno.test({
  name: "convert -o encrypt.format=luks,preallocation=metadata of a zero image gives an image that reads as the source",
  ignore: QEMU,
  async fn() {
    await using d = await tempDir();
    const src = `${d.path}/orig.qcow2`;
    const dst = `${d.path}/t.qcow2`;
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", src, "4M"]);
    await runOk("qemu-io", ["-c", "write -P 0x5a 1M 64k", src]);
    let err = "";
    const code = await qemuImg(
      [
        "convert",
        "-O",
        "qcow2",
        "--object",
        SECRET,
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,preallocation=metadata",
        src,
        dst,
      ],
      { stdout: () => {}, stderr: (s) => void (err += s) },
    );
    assertEquals([code, err], [0, ""]);
    const cmp = await run("qemu-img", [
      "compare",
      "--object",
      SECRET,
      "--image-opts",
      `driver=qcow2,file.filename=${src}`,
      `driver=qcow2,encrypt.key-secret=sec0,file.filename=${dst}`,
    ]);
    assertEquals([cmp.code, cmp.stdout], [0, "Images are identical.\n"]);
  },
});
