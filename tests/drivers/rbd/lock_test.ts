import assert from "node:assert/strict";
import { open } from "../../../mod.ts";
import { cephConf, imageName, rbdCreate, rbdFilename, skipUnlessCeph } from "../../_helpers/ceph.ts";
import { pattern, tempDir } from "../../_helpers/qemu.ts";

const MOD = new URL("../../../mod.ts", import.meta.url).href;

Deno.test({
  name: "a killed writer's exclusive lock delays the next write without stalling the event loop, and the write lands",
  ignore: skipUnlessCeph(),
  async fn() {
    await using dir = await tempDir();
    const conf = await cephConf();
    const image = imageName();
    await rbdCreate(conf, image, "4M");
    const name = rbdFilename(conf, image);
    // A writer that takes the lock, says so, then hangs until it is killed.
    const script = `${dir.path}/writer.ts`;
    await Deno.writeTextFile(
      script,
      `import { open } from "${MOD}";
const n = await open(${JSON.stringify(name)}, { format: "raw" });
await n.pwrite(0, new Uint8Array(4096).fill(1));
await n.flush();
console.log("locked");
await new Promise(() => {});
`,
    );
    const child = new Deno.Command(Deno.execPath(), { args: ["run", "-A", script], stdout: "piped", stderr: "inherit" }).spawn();
    const reader = child.stdout.getReader();
    const first = await reader.read();
    assert.match(new TextDecoder().decode(first.value), /locked/);
    reader.releaseLock();
    child.kill("SIGKILL");
    await child.status;
    await child.stdout.cancel().catch(() => {});

    await using img = await open(name, { format: "raw" });
    let ticks = 0;
    const timer = setInterval(() => ticks++, 50);
    try {
      // librbd waits for the dead owner's watch to expire (10 s on the test cluster), then breaks the lock.
      await img.pwrite(4096, pattern(4096, 2));
      await img.flush();
    } finally {
      clearInterval(timer);
    }
    assert.ok(ticks > 0, "timers ran while the write waited for the lock");
    const back = new Uint8Array(8192);
    await img.pread(0, back);
    assert.deepEqual([back[0], back[4095], back[4096], back[8191]], [1, 1, 2, 2]);
  },
});
