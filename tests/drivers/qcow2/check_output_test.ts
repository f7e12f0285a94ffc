// What `blkgraph check` prints and exits with: formatCheckHuman() prints
// what `qemu-img check` prints, and checkExitCode() maps results to
// qemu-img's exit codes.
import assert from "node:assert/strict";
import { checkExitCode } from "../../../drivers/qcow2/check.ts";
import { formatCheckHuman } from "../../../cli/check.ts";
import { tempDir } from "../../_helpers/qemu.ts";
import { qemuRun } from "./_qemu_image.ts";
import { busy, copy, ourCheck, setRefcount16 } from "./_check_util.ts";

Deno.test({
  name: "formatCheckHuman() prints what qemu-img check prints",
  async fn() {
    await using dir = await tempDir();
    const leak = (path: string) => setRefcount16(path, 3, 2);
    const images = [
      await busy(dir.path),
      await busy(dir.path, "bad-human.qcow2", leak),
      await busy(dir.path, "bad-human2.qcow2", async (path) => {
        await leak(path);
        await setRefcount16(path, 5, 1);
      }),
    ];
    for (const img of images) {
      assert.equal(formatCheckHuman(await ourCheck(img.path), img.path), (await qemuRun(img, "check @IMG@")).stdout, img.fixture);
    }
    const last = images[2];
    const ours = await copy(last, "ours.qcow2");
    const fixed = formatCheckHuman(await ourCheck(ours, "all"), last.path);
    assert.equal(fixed, (await qemuRun(last, "check -r all @IMG@")).stdout);
  },
});

Deno.test("checkExitCode() maps results to qemu-img's exit codes", () => {
  assert.equal(checkExitCode({ checkErrors: 0, corruptions: 0, leaks: 0 }), 0);
  assert.equal(checkExitCode({ checkErrors: 1, corruptions: 3, leaks: 2 }), 1);
  assert.equal(checkExitCode({ checkErrors: 0, corruptions: 3, leaks: 2 }), 2);
  assert.equal(checkExitCode({ checkErrors: 0, corruptions: 0, leaks: 2 }), 3);
});
